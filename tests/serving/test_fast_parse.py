"""The hot route's parser (``fast_recommend_request``) against pydantic's path: the same request
for every body it takes, and ``None`` (the full path decides) for every body it does not."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from warmstart.serving.app import (
    MAX_CANDIDATES,
    MAX_EXCLUDE,
    MAX_INTERACTIONS,
    MAX_K,
    MAX_USER_ID_CHARS,
    ApiError,
    RecommendBody,
    fast_recommend_request,
    recommend_request,
)
from warmstart.serving.engine import ComputePool
from warmstart.serving.models import load_recommend_models
from warmstart.serving.pipelines import RecommendPipeline
from warmstart.serving.store import MemoryTier, TieredStore

from .test_app import support


@pytest.fixture(scope="module")
def pipeline(tiny_artifacts):
    models = load_recommend_models(tiny_artifacts.coldnas, tiny_artifacts.mf)
    pools = ComputePool(1, None), ComputePool(1, None)
    return RecommendPipeline(models, TieredStore([MemoryTier(1 << 20)]), *pools)


def slow(raw: bytes, pipeline):
    """pydantic's path: the request, or ``None`` where it answers 422."""
    try:
        return recommend_request(RecommendBody.model_validate_json(raw), pipeline)
    except (ValueError, ApiError):
        return None


def same(a, b) -> bool:
    return (a.user_id, a.k, a.n_candidates, a.deadline_ms) == (
        b.user_id,
        b.k,
        b.n_candidates,
        b.deadline_ms,
    ) and all(
        x.dtype == y.dtype and np.array_equal(x, y)
        for x, y in ((a.items, b.items), (a.ratings, b.ratings), (a.exclude, b.exclude))
    )


def plain_bodies(tiny_artifacts, pipeline):
    inter = support(tiny_artifacts)
    low, high = pipeline.models.ranker.rec.rating_range
    known = [it["item"] for it in inter]
    return [
        {},
        {"interactions": inter},
        {"interactions": inter, "k": 3, "n_candidates": 7, "exclude": known[:2]},
        {"interactions": inter, "deadline_ms": 250},
        {"interactions": inter, "deadline_ms": 250.5, "user_id": "u-1"},
        {"user_id": "x" * MAX_USER_ID_CHARS, "k": MAX_K, "n_candidates": MAX_CANDIDATES},
        {"interactions": [{"rating": low, "item": known[0]}, {"item": known[1], "rating": high}]},
        {"interactions": [{"item": known[0], "rating": 3}], "exclude": [], "n_candidates": None},
        {"interactions": inter, "deadline_ms": None, "user_id": None},
        {"k": 1, "deadline_ms": 1, "exclude": known},
    ]


def test_plain_bodies_give_the_request_pydantic_gives(tiny_artifacts, pipeline):
    for body in plain_bodies(tiny_artifacts, pipeline):
        raw = json.dumps(body).encode()
        fast, full = fast_recommend_request(raw, pipeline), slow(raw, pipeline)
        assert fast is not None and full is not None, body
        assert same(fast, full), body


def test_anything_else_is_left_to_pydantic(tiny_artifacts, pipeline):
    """Coercions pydantic makes and bodies it refuses: ``None``, and pydantic decides."""
    inter = support(tiny_artifacts)
    item = inter[0]["item"]
    low, high = pipeline.models.ranker.rec.rating_range
    coerced = [  # pydantic takes these (lax mode); the fast path leaves them to it
        {"k": 10.0},
        {"k": True},
        {"interactions": [{"item": item, "rating": "4"}]},
        {"interactions": [{"item": item, "rating": True}]},
        {"deadline_ms": "300"},
    ]
    refused = [
        [],
        "text",
        {"k": 0},
        {"k": MAX_K + 1},
        {"k": None},
        {"k": "ten"},
        {"user_id": ""},
        {"user_id": "x" * (MAX_USER_ID_CHARS + 1)},
        {"user_id": 7},
        {"n_candidates": 0},
        {"n_candidates": MAX_CANDIDATES + 1},
        {"deadline_ms": 0.5},
        {"deadline_ms": 10_001},
        {"deadline_ms": False},
        {"interactions": None},
        {"interactions": {"item": item, "rating": 4}},
        {"interactions": [{"item": item}]},
        {"interactions": [{"item": item, "rating": 4, "extra": 1}]},
        {"interactions": [{"item": item, "score": 4}]},
        {"interactions": [[item, 4]]},
        {"interactions": [{"item": True, "rating": 4}]},
        {"interactions": [{"item": 1.5, "rating": 4}]},
        {"interactions": [{"item": item, "rating": None}]},
        {"interactions": [{"item": item, "rating": low - 1}]},
        {"interactions": [{"item": item, "rating": high + 0.5}]},
        {"interactions": [{"item": str(item), "rating": 4}]},  # a str id in an int map
        {"interactions": [{"item": 10**9, "rating": 4}]},  # unknown id
        {"interactions": [{"item": 2**70, "rating": 4}]},  # beyond 64 bits
        {"interactions": [{"item": item, "rating": 4}] * (MAX_INTERACTIONS + 1)},
        {"exclude": [item] * (MAX_EXCLUDE + 1)},
        {"exclude": [True]},
        {"exclude": item},
        {"exclude": [10**9]},
        {"unknown_field": 1},
    ]
    for body in coerced:
        raw = orjson.dumps(body)
        assert fast_recommend_request(raw, pipeline) is None, body
        assert slow(raw, pipeline) is not None, body  # still served, on pydantic's path
    for body in refused:
        raw = json.dumps(body).encode()
        assert fast_recommend_request(raw, pipeline) is None, body
        assert slow(raw, pipeline) is None, body  # pydantic's 422
    for raw in (b"", b"{", b'{"k": NaN}', b'{"k": 1e400}', b'{"user_id": "\\ud800"}', b"\xff"):
        assert fast_recommend_request(raw, pipeline) is None, raw
        assert slow(raw, pipeline) is None, raw


def test_a_repeated_key_means_its_last_value_on_both_paths(pipeline):
    raw = b'{"k": 3, "k": 5}'
    fast, full = fast_recommend_request(raw, pipeline), slow(raw, pipeline)
    assert fast is not None and full is not None and fast.k == full.k == 5
