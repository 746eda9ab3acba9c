"""Fixtures for the serving tests: a real redis-server on a free loopback port, tiny models."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REDIS_HINT = (
    "redis-server not found: install it (`apt-get install -y redis-server`; `make setup` and "
    ".ci/run do this when run as root) to run the Redis tier tests"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process that tests can stop and start again on the same port."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        end = time.monotonic() + timeout
        while True:  # poll until the server accepts connections (a subprocess has no event)
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(REDIS_HINT)
    pytest.importorskip("redis", reason="pip install redis (the `serve` extra)")
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.stop()


# --------------------------------------------------------------------------- tiny models


@dataclass(frozen=True)
class TinyArtifacts:
    coldnas: Path
    mf: Path
    split: Any
    knn: Path


def write_tiny_artifacts(folder: Path) -> TinyArtifacts:
    """A 1-epoch ColdNAS model and an ALS model on one synthetic split, exported for serving."""
    import torch

    from fixtures.mf import tiny_als
    from warmstart.coldstart.knn_inference import export_knn, fit_knn
    from warmstart.coldstart.mf_inference import export_mf
    from warmstart.coldstart.model import ColdNASConfig
    from warmstart.coldstart.structure import Structure
    from warmstart.coldstart.training import TrainConfig, export, train_structure
    from warmstart.data.synthetic import synthetic_split

    torch.set_num_threads(1)
    split = synthetic_split(n_users=60, n_items=50, interactions_per_user=(15, 25), seed=3)
    config = ColdNASConfig(embedding_dim=8, hidden_sizes=(16, 8, 8), adaptation_dim=16)
    model, _ = train_structure(
        split, Structure.parse("mul+add|-|-|-"), config, TrainConfig(epochs=1)
    )
    export(folder / "coldnas", model, split.dataset.users, split.dataset.items, {"seed": 3})
    als = tiny_als(split)
    export_mf(folder / "mf", als, 10.0, split.dataset.items.ids, split.dataset.rating_range)
    export_knn(folder / "knn", fit_knn(split, like=4.0))
    return TinyArtifacts(folder / "coldnas", folder / "mf", split, folder / "knn")


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    return write_tiny_artifacts(tmp_path_factory.mktemp("serving-models"))
