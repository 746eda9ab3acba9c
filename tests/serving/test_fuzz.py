"""OpenAPI fuzzing with schemathesis against a live server: never a server error, 4xx carry a
message. A 503 is allowed only as the designed refusal (with ``Retry-After``): a fuzzed
``deadline_ms`` of a few milliseconds is one no server can meet, and shedding it is correct."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (dev extra)")
from hypothesis import HealthCheck, settings  # noqa: E402

from warmstart.serving.app import Server, create_app  # noqa: E402
from warmstart.serving.config import ServeConfig  # noqa: E402
from warmstart.serving.runner import running  # noqa: E402

# the schema does not depend on the models: build it from an app that is never started
schema = schemathesis.openapi.from_dict(create_app(Server(ServeConfig())).openapi())


@pytest.fixture(scope="module")
def live_url(tiny_artifacts, tmp_path_factory):
    config = ServeConfig.from_dict(
        {
            "models": {"coldnas": str(tiny_artifacts.coldnas), "mf": str(tiny_artifacts.mf)},
            "store": {"memory_mb": 1, "lmdb_path": str(tmp_path_factory.mktemp("fuzz-lmdb"))},
            "admission": {"deadline_ms": 5000},
        }
    )
    with running(create_app(Server(config, admin_token="t0ken"))) as url:
        yield url


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, live_url):
    response = case.call(base_url=live_url)
    if response.status_code == 503:  # an explicit refusal (a deadline no server could meet)
        assert response.headers.get("retry-after"), response.text
        return
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    if 400 <= response.status_code < 500:
        assert response.json().get("detail"), response.text
