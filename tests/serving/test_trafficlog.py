"""Traffic log: line format round trip, sampling, size-bounded rotation, the stage hook."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from warmstart.serving.admission import Admission
from warmstart.serving.config import ServeConfig
from warmstart.serving.engine import ComputePool, LoopLag, Overloaded, Stage, StageConfig
from warmstart.serving.trafficlog import (
    FILE_NAME,
    TrafficLog,
    TrafficLogConfig,
    attach,
    log_files,
    read_events,
)


def test_round_trip(tmp_path: Path) -> None:
    log = TrafficLog(TrafficLogConfig(path=str(tmp_path)), {"compute": {"workers": 1}})
    log.request("recommend", "admit", 0.004)
    log.batch("recommend", "model", log.t0 + 0.01, 0.0025, [0.001, 0.0005], 1000, 3)
    log.close()
    events = list(read_events(tmp_path))
    assert [e["e"] for e in events] == ["meta", "req", "batch", "tick"]
    meta, req, batch, tick = events
    assert meta["server"] == {"compute": {"workers": 1}} and meta["v"] == 1
    assert meta["cpus"] >= 1  # the cores the process may run on (its affinity)
    assert req["p"] == "recommend" and req["d"] == "admit" and req["pred"] == 0.004
    assert batch["s"] == "model" and batch["n"] == 2 and batch["u"] == 1000
    assert batch["svc"] == 0.0025 and batch["wait"] == [0.001, 0.0005] and batch["q"] == 3
    assert batch["t"] == pytest.approx(0.01)
    assert tick["req"] == 1 and tick["cpu"] >= 0


def test_cut_last_line_is_skipped_and_version_checked(tmp_path: Path) -> None:
    log = TrafficLog(TrafficLogConfig(path=str(tmp_path)))
    log.request("search", "reject", -1.0)
    log.close()
    with open(tmp_path / FILE_NAME, "ab") as f:
        f.write(b'{"e": "batch", "t": 0.1, "s"')  # a crash mid-line
    assert [e["e"] for e in read_events(tmp_path)] == ["meta", "req", "tick"]
    (tmp_path / FILE_NAME).write_text('{"e": "meta", "v": 99}\n')
    with pytest.raises(ValueError, match="format 99"):
        list(read_events(tmp_path))


def test_a_server_started_again_on_the_directory_starts_a_new_run(tmp_path: Path) -> None:
    first = TrafficLog(TrafficLogConfig(path=str(tmp_path)), {"recommend": {"precision": "a"}})
    first.request("recommend", "admit", 0.001)
    first.close()
    with open(tmp_path / FILE_NAME, "ab") as f:
        f.write(b'{"e": "req", "t": 0.1, "p"')  # the first process died mid-line
    second = TrafficLog(TrafficLogConfig(path=str(tmp_path)), {"recommend": {"precision": "b"}})
    second.request("recommend", "reject", 0.002)
    second.close()
    events = list(read_events(tmp_path))
    metas = [e for e in events if e["e"] == "meta"]
    assert [m["server"]["recommend"]["precision"] for m in metas] == ["a", "b"]
    assert [(e["run"], e["d"]) for e in events if e["e"] == "req"] == [(0, "admit"), (1, "reject")]


def test_rotation_bounds_the_files(tmp_path: Path) -> None:
    config = TrafficLogConfig(path=str(tmp_path), max_mb=2 / 1024, files=3, tick_s=1e-9)
    log = TrafficLog(config)
    for i in range(2000):
        log.batch("recommend", "model", log.t0 + i, 0.001, [0.0] * 4, 4, 0)
    log.close()
    files = log_files(tmp_path)
    assert len(files) == 3
    for f in files:  # each file at most max_bytes plus one line, each starts with meta
        assert f.stat().st_size < 2048 + 512
        assert f.read_bytes().startswith(b'{"e":"meta"')
    times = [e["t"] for e in read_events(tmp_path) if e["e"] == "batch"]
    assert times == sorted(times) and times[-1] == pytest.approx(1999)  # the newest kept


def test_sampling_keeps_a_fraction(tmp_path: Path) -> None:
    log = TrafficLog(TrafficLogConfig(path=str(tmp_path), sample=0.25))
    for _ in range(4000):
        log.request("recommend", "admit", 0.0)
    log.close()
    events = list(read_events(tmp_path))
    kept = sum(e["e"] == "req" for e in events)
    assert 800 < kept < 1200
    assert sum(e["req"] for e in events if e["e"] == "tick") == 4000  # ticks count them all


def test_config_entry_and_validation() -> None:
    config = ServeConfig.from_dict({"traffic_log": {"path": "runs/t", "sample": 0.5}})
    assert config.traffic_log == TrafficLogConfig(path="runs/t", sample=0.5)
    assert ServeConfig().traffic_log.path is None  # off by default
    with pytest.raises(ValueError, match=r"traffic_log\.sample"):
        ServeConfig.from_dict({"traffic_log": {"sample": 0}})


class _Pipe:
    """The attributes ``attach`` uses: stages as attributes and an admission."""

    def __init__(self, stage: Stage) -> None:
        self.model = stage
        self.admission = Admission()


def test_stage_hook_records_batches_and_admission(tmp_path: Path) -> None:
    log = TrafficLog(TrafficLogConfig(path=str(tmp_path)))
    pool = ComputePool(1, None)
    stage = Stage("model", lambda xs: [2 * x for x in xs], StageConfig(8, 0.0), pool)
    pipe = _Pipe(stage)
    attach(log, pipe, "recommend")

    async def main() -> list[int]:
        await stage.start()
        try:
            return list(await asyncio.gather(*(stage.submit(i) for i in range(5))))
        finally:
            await stage.stop()

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    pipe.admission.admit([stage], [stage], 1.0)
    pipe.admission.config = type(pipe.admission.config)(max_in_flight=1)
    pipe.admission.in_flight = 1
    with pytest.raises(Overloaded):
        pipe.admission.admit([stage], [stage], 1.0)
    log.close()
    pool.shutdown()
    events = list(read_events(tmp_path))
    batches = [e for e in events if e["e"] == "batch"]
    assert sum(b["n"] for b in batches) == 5 and all(b["s"] == "model" for b in batches)
    assert [e["d"] for e in events if e["e"] == "req"] == ["admit", "reject"]


def test_a_refusal_logs_what_it_was_refused_on(tmp_path: Path) -> None:
    """A refused request's ``req`` event holds the prediction it was refused on, the budget
    after the loop's lateness, and per stage its predicted wait and the batch-time model behind
    it; a refusal at the HTTP front (``Admission.refusal``) is logged too, marked ``front``."""
    log = TrafficLog(TrafficLogConfig(path=str(tmp_path)))
    now = [10.0]
    pool = ComputePool(1, None)
    stage = Stage("encode", lambda xs: xs, StageConfig(4, 0.0), pool, clock=lambda: now[0])
    for _ in range(3):  # three measured calls of 40 ms on 2 items
        stage.metrics.observe_service(0.040, 2, at=now[0])
    pipe = _Pipe(stage)
    attach(log, pipe, "search")
    lag = LoopLag(clock=lambda: now[0])
    lag.tick(now[0] - 0.010)  # the loop ran 10 ms late
    pipe.admission.loop_lag = lag
    # a 45-ms budget less 10 ms of lag: 35 ms, below the 40 ms predicted for the one call
    with pytest.raises(Overloaded):
        pipe.admission.admit([stage], [stage], 0.045)
    assert pipe.admission.refusal([stage], 0.045) is not None
    assert pipe.admission.refusal([stage], 1.0) is None  # admitted ones: logged by admit
    log.close()
    pool.shutdown()
    refused = [e for e in read_events(tmp_path) if e["e"] == "req"]
    assert [e["d"] for e in refused] == ["reject", "reject"]
    first, front = refused
    assert first["pred"] == pytest.approx(0.040) and first["b"] == pytest.approx(0.035)
    assert first["lag"] == pytest.approx(0.010) and first["m"] == 1.0
    (st,) = first["st"]
    assert st["s"] == "encode" and st["w"] == pytest.approx(0.040) and st["q"] == 0
    assert st["med"] == pytest.approx(0.040) and st["typ"] == 2 and st["big"] == 2
    assert st["el"] is None and "front" not in first
    assert front["front"] == 1 and front["pred"] == pytest.approx(0.040)
