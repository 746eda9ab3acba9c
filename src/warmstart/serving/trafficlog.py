"""Traffic logs: what the resource planner learns from (JIZHI's resource manager reads history).

When ``traffic_log.path`` is set in the server config, the server appends one JSON object per
line (JSON Lines, UTF-8) to ``<path>/traffic.jsonl``; when the file passes ``max_mb`` it is
rotated to ``traffic.jsonl.1`` (older files shift up, at most ``files`` are kept), so the logs
never hold more than ``files × max_mb`` MB. Events (``e``), times ``t`` in seconds since the
file's ``meta`` line (``time.monotonic()`` based), durations in seconds::

    {"e": "meta", "v": 1, "t0": 1234.5, "wall": 1.7e9, "pid": 42, "cpus": 1, "sample": 1.0,
     "server": {...the resolved server config...}}
    {"e": "req", "t": 0.0123, "p": "recommend", "d": "admit", "pred": 0.004}
    {"e": "batch", "t": 0.0150, "p": "recommend", "s": "model", "n": 3, "u": 1500,
     "svc": 0.0027, "cpu": 0.0026, "wait": [0.0011, 0.0006, 0.0001], "q": 0}
    {"e": "tick", "t": 1.0004, "cpu": 0.41, "wall": 1.0001, "req": 212}

- ``req``: a request at admission, per pipeline ``p``; ``d`` is ``admit``, ``degrade`` or
  ``reject``, ``pred`` the admission's predicted seconds. A refusal also has what it was
  refused on (``refusal_detail``): the budget ``b`` (s, after the loop's lateness ``lag``),
  the margin ``m``, the pools' backlog ``bk`` and per stage ``st`` its predicted wait ``w``
  and what made it (``stage_state``); ``"front": 1`` marks one the HTTP front refused before parsing the body
  (``Admission.refusal``). Sampled with probability ``sample``.
- ``batch``: one call of stage ``s``: ``n`` items, ``u`` work units (candidates scored, hits
  reranked; ``n`` when the stage has no notion of size), ``svc`` the call's wall time (from
  when a pool thread started it), ``wait`` each item's seconds before the call started (in
  the stage's queue, then for a pool thread), ``q`` the queue depth left behind, ``cpu``
  the calling thread's CPU seconds of the call (``null`` for a coroutine stage).
  Sampled with probability ``sample``.
- ``tick``: about every ``tick_s``: process CPU seconds (all threads) and wall seconds since the
  last tick, and requests seen (all, not only sampled): what the planner needs for the cost
  outside the stages (HTTP parsing, validation, the event loop).

A reader skips lines it cannot parse (a crash may cut the last one) and fails on an unknown
format version. Writing is buffered and flushed with each tick, on the event loop (a few µs per
event; measured in ``benchmarks/bench_planner.py``); when the log is off a stage pays one
attribute test per batch.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

FORMAT_VERSION = 1
FILE_NAME = "traffic.jsonl"


@dataclass(frozen=True)
class TrafficLogConfig:
    """Attributes:
    path: directory of the log files (``None``: logging off, the default).
    sample: fraction of ``req`` and ``batch`` events written (ticks are always written).
    max_mb: size at which the current file is rotated.
    files: files kept in all (the current one and ``files - 1`` rotated ones).
    tick_s: seconds between CPU ticks (and buffer flushes).
    seed: seed of the sampling.
    """

    path: str | None = None
    sample: float = 1.0
    max_mb: float = 16.0
    files: int = 4
    tick_s: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.sample <= 1:
            raise ValueError(f"traffic_log.sample must lie in (0, 1], got {self.sample}")
        if self.max_mb <= 0:
            raise ValueError(f"traffic_log.max_mb must be > 0, got {self.max_mb}")
        if self.files < 1:
            raise ValueError(f"traffic_log.files must be >= 1, got {self.files}")
        if self.tick_s <= 0:
            raise ValueError(f"traffic_log.tick_s must be > 0, got {self.tick_s}")


class RotatingLines:
    """Append-only line files bounded by size: ``name``, ``name.1``, ... ``name.(files-1)``.

    Each new file starts with ``header()`` so every file can be read on its own.
    """

    def __init__(
        self, directory: Path, max_bytes: int, files: int, header: Callable[[], bytes]
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / FILE_NAME
        self.max_bytes = max_bytes
        self.files = files
        self.header = header
        self._file = self._open()

    def _open(self) -> Any:
        """Open for appending and write a ``meta`` line: a server started again on the same
        directory starts a new run (its own clock origin and config), after the previous
        process's last line even when that one was cut."""
        f = open(self.path, "a+b")  # noqa: SIM115 (held open for the server's lifetime)
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(self.header())
        return f

    def write(self, data: bytes) -> None:
        self._file.write(data)
        if self._file.tell() >= self.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        self._file.close()
        for i in range(self.files - 1, 0, -1):
            older = self.path.with_name(f"{FILE_NAME}.{i}")
            newer = self.path.with_name(f"{FILE_NAME}.{i - 1}") if i > 1 else self.path
            if newer.exists():
                os.replace(newer, older)
        if self.files == 1:
            self.path.unlink(missing_ok=True)
        self._file = self._open()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def usable_cpus() -> int:
    """Cores this process may run on (its affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class TrafficLog:
    """The server's recorder: stages and admission call it; it samples, buffers and writes.

    Args:
        config: where and how much to log (``config.path`` must be set).
        server: the resolved server config, written in each file's ``meta`` line.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        config: TrafficLogConfig,
        server: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.path is None:
            raise ValueError("TrafficLog needs traffic_log.path")
        self.config = config
        self.clock = clock
        self.t0 = clock()
        self.server = server or {}
        self._rng = random.Random(config.seed)
        self._buffer: list[bytes] = []
        self._requests = 0
        self._last_tick = self.t0
        self._last_cpu = time.process_time()
        self._out = RotatingLines(
            Path(config.path), int(config.max_mb * 2**20), config.files, self._meta
        )

    def _meta(self) -> bytes:
        meta = {
            "e": "meta",
            "v": FORMAT_VERSION,
            "t0": self.t0,
            "wall": time.time(),
            "pid": os.getpid(),
            "cpus": usable_cpus(),
            "sample": self.config.sample,
            "server": self.server,
        }
        return orjson.dumps(meta, default=str) + b"\n"

    def _sampled(self) -> bool:
        return self.config.sample >= 1 or self._rng.random() < self.config.sample

    def _emit(self, event: dict[str, Any]) -> None:
        self._buffer.append(orjson.dumps(event) + b"\n")
        now = self.clock()
        if now - self._last_tick >= self.config.tick_s:
            self.tick(now)

    def request(
        self,
        pipeline: str,
        decision: str,
        predicted_s: float,
        why: dict[str, Any] | None = None,
    ) -> None:
        """A request at admission (``decision``: admit, degrade or reject); ``why``: for a
        refusal, what it was refused on (``refusal_detail``), written as its fields."""
        self._requests += 1
        if self._sampled():
            t = self.clock() - self.t0
            event = {"e": "req", "t": t, "p": pipeline, "d": decision, "pred": predicted_s}
            self._emit(event if why is None else {**event, **why})

    def batch(
        self,
        pipeline: str,
        stage: str,
        start: float,
        service_s: float,
        waits: Sequence[float],
        units: int,
        depth: int,
        cpu_s: float | None = None,
    ) -> None:
        """One stage call: ``start`` on the log's clock, its items' queue waits, the calling
        thread's CPU seconds (``None`` for a coroutine stage) and the total work units."""
        if self._sampled():
            self._emit(
                {"e": "batch", "t": start - self.t0, "p": pipeline, "s": stage, "n": len(waits),
                 "u": units, "svc": service_s, "cpu": cpu_s, "wait": list(waits), "q": depth}
            )  # fmt: skip

    def tick(self, now: float | None = None) -> None:
        """Write a CPU tick and flush the buffer (also done by the events themselves)."""
        now = self.clock() if now is None else now
        cpu = time.process_time()
        self._buffer.append(
            orjson.dumps(
                {"e": "tick", "t": now - self.t0, "cpu": cpu - self._last_cpu,
                 "wall": now - self._last_tick, "req": self._requests}
            ) + b"\n"
        )  # fmt: skip
        self._last_tick, self._last_cpu, self._requests = now, cpu, 0
        for line in self._buffer:
            self._out.write(line)
        self._buffer.clear()
        self._out.flush()

    def close(self) -> None:
        self.tick()
        self._out.close()


# --------------------------------------------------------------------------- wiring


def work_units(value: Any) -> int:
    """Work of one stage item: candidates to score (``n``), hits to rerank, else 1."""
    n = getattr(value, "n", None)
    if isinstance(n, int):
        return n
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], list):
        return len(value[1])  # (query, hits) of the rerank stage
    return 1


class StageRecorder:
    """Bound to one stage: what ``Stage`` calls after each batch (see ``engine.Stage``).

    For a stage running in a thread pool it also wraps the stage function to measure the
    calling thread's CPU time of each call (``time.thread_time``): the service demand without
    the time the thread waited for a core (torch threads beyond the calling one are not seen).
    """

    def __init__(self, log: TrafficLog, pipeline: str, stage: Any) -> None:
        self.log, self.pipeline, self.stage = log, pipeline, stage
        self._cpu: dict[int, float] = {}
        fn = stage.fn
        if not getattr(stage, "_is_async", True):

            def measured(values: list[Any]) -> Any:
                start = time.thread_time()
                try:
                    return fn(values)
                finally:
                    self._cpu[id(values[0])] = time.thread_time() - start

            stage.fn = measured

    def __call__(self, items: Sequence[Any], start: float, end: float) -> None:
        cpu = self._cpu.pop(id(items[0].value), None) if items else None
        self.log.batch(
            self.pipeline,
            self.stage.name,
            start,
            end - start,
            [start - it.enqueued for it in items],
            sum(work_units(it.value) for it in items),
            self.stage.depth,
            cpu,
        )


def stage_state(stage: Any) -> dict[str, Any]:
    """What a stage's predicted wait is made of (``engine.Stage.predicted_wait_s``): queue
    depth ``q``, items in flight ``f``, seconds since its latest call started ``el``, and its
    batch-time model (``engine.StageMetrics.batch_seconds``): the median recent call ``med``
    (s) at the median recent batch size ``typ``, the cost per item up to the largest recent
    batch ``big`` (``slope``) and past it (``cap``)."""
    m = stage.metrics
    return {
        "s": stage.name,
        "q": stage.depth,
        "f": stage._busy_items,
        "el": stage.clock() - stage._last_start if stage._busy else None,
        "med": m._median_s,
        "typ": m._typical,
        "slope": m._per_item,
        "cap": m._cap,
        "big": m._largest,
    }


def refusal_detail(admission: Any, path: Sequence[Any], budget_s: float) -> dict[str, Any]:
    """A refused request's ``req`` fields: ``pred`` the prediction refused on (the margin
    applied), ``b`` the budget it was held against (the loop's lateness ``lag`` taken off),
    ``m`` the margin, ``bk`` the other stages' work ahead in the compute pools
    (``engine.pool_backlog_s``), and per stage of ``path`` its predicted wait ``w`` beside its
    ``stage_state``. Computed only for refusals (rare), right after the decision, on the same
    state."""
    from warmstart.serving.engine import pool_backlog_s

    lag = admission.front_delay_s()
    margin = admission.applied_margin
    waits = admission.stage_waits(path)
    backlog = pool_backlog_s(path)
    return {
        "pred": margin * (sum(waits) + backlog),
        "b": budget_s - lag,
        "lag": lag,
        "m": margin,
        "bk": backlog,
        "st": [{**stage_state(s), "w": w} for s, w in zip(path, waits, strict=True)],
    }


def attach(log: TrafficLog | None, pipeline: Any, name: str) -> None:
    """Record ``pipeline``'s stages and admission decisions into ``log`` (no-op for ``None``).

    Every stage the pipeline owns gets a ``StageRecorder``; its admission's ``admit`` is wrapped
    (on the instance) to log each decision, and its ``refusal`` (the HTTP front's, before a
    body is parsed) to log each refusal it gives (``"front": 1``).
    """
    if log is None or pipeline is None:
        return
    from warmstart.serving.engine import Overloaded, Stage

    for stage in vars(pipeline).values():
        if isinstance(stage, Stage):
            stage.recorder = StageRecorder(log, name, stage)
    admission = pipeline.admission
    admit = admission.admit

    def recorded(full: Any, degraded: Any, budget_s: float) -> Any:
        try:
            ticket = admit(full, degraded, budget_s)
        except Overloaded:
            why = refusal_detail(admission, full if degraded is None else degraded, budget_s)
            log.request(name, "reject", why.pop("pred"), why)
            raise
        log.request(name, "degrade" if ticket.degrade else "admit", ticket.predicted_s)
        return ticket

    admission.admit = recorded
    refusal = admission.refusal

    def front_recorded(common: Any, budget_s: float) -> Any:
        refused = refusal(common, budget_s)
        if refused is not None:  # admitted ones are logged by ``admit``, which decides them
            why = refusal_detail(admission, common, budget_s)
            log.request(name, "reject", why.pop("pred"), {**why, "front": 1})
        return refused

    admission.refusal = front_recorded


# --------------------------------------------------------------------------- reading


def log_files(directory: Path | str) -> list[Path]:
    """The log files under ``directory``, oldest first (rotated ones, then the current)."""
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    rotated = sorted(directory.glob(f"{FILE_NAME}.*"), key=lambda p: -int(p.suffix[1:] or 0))
    current = directory / FILE_NAME
    return [*rotated, *([current] if current.exists() else [])]


def read_events(path: Path | str) -> Iterator[dict[str, Any]]:
    """Events of every log file under ``path`` (a directory or one file), in file order.

    Each event gains ``"run"`` (an index per ``meta`` line, i.e. per server start or file) and
    ``meta`` events keep their server config. Unparseable lines are skipped (a cut last line).

    Raises:
        ValueError: a file of another format version, or nothing to read.
    """
    files = [f for f in log_files(path) if f.is_file()]
    if not files:
        raise ValueError(f"{path}: no traffic log files ({FILE_NAME}*)")
    run = -1
    for f in files:
        with open(f, "rb") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(event, dict) or "e" not in event:
                    continue
                if event["e"] == "meta":
                    if event.get("v") != FORMAT_VERSION:
                        raise ValueError(
                            f"{f}: line {number}: traffic log format {event.get('v')!r}, "
                            f"this reader knows {FORMAT_VERSION}"
                        )
                    run += 1
                event["run"] = max(run, 0)
                yield event
