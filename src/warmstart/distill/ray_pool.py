"""EDL-Dist's elastic teacher pool on Ray (Liu et al., CCPE 2022, arXiv 2207.06667).

    TeacherRegistry   named actor (the paper's Redis/etcd discovery service): teachers register,
                      heartbeat every ``heartbeat_s`` and are dropped ``ttl_s`` after their last
                      one; the student reads the membership every ``poll_s`` (< 2 s in all)
    TeacherWorker     Ray actor serving one teacher (its own torch threads, batch size, fractional
                      ``num_cpus``); it registers and heartbeats itself, so a teacher started by
                      the student and one joining from another process or machine look the same
    ElasticTeacherPool  the student's source of teacher outputs: ``dispatch.stream`` over a
                      :class:`RayBackend` (submit, then ``ray.wait``; never ``ray.get`` in a loop)

Ray is imported here only: the rest of ``distill`` works without it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayError

import warmstart
from warmstart.distill.data import GroupDataset, Task
from warmstart.distill.dispatch import Dispatcher, StreamStats, TeacherFailed, log, stream
from warmstart.distill.teacher import TeacherSpec, build_teacher, use_idle_priority

REGISTRY = "warmstart-distill-registry"
NAMESPACE = "warmstart-distill"


@dataclass(frozen=True)
class PoolConfig:
    """Timing of the elastic pool.

    Attributes:
        max_in_flight: requests outstanding per teacher.
        timeout_s: a request older than this counts as failed.
        heartbeat_s / ttl_s: teachers refresh their entry this often / are dropped this long
            after the last refresh.
        poll_s: how often the student re-reads the membership.
        buffer / refill_at: the dispatcher's queue beyond the requests in flight, and its
            low-water mark (``dispatch.Dispatcher``).
        student_threads_idle: teachers on the student's own cores: the student trains with this
            many torch threads while no teacher has work, and with 1 while one has (None: the
            student's threads are left alone). With ``refill_at`` the teachers work in bursts
            (the queue refilled from ``refill_at`` to full), so the student gets all cores
            between bursts and one core during them.
    """

    max_in_flight: int = 2
    timeout_s: float = 60.0
    heartbeat_s: float = 0.5
    ttl_s: float = 1.5
    poll_s: float = 0.25
    buffer: int = 2
    refill_at: int | None = None
    student_threads_idle: int | None = None

    def __post_init__(self) -> None:
        if self.ttl_s <= self.heartbeat_s:
            raise ValueError(f"ttl_s={self.ttl_s} must exceed heartbeat_s={self.heartbeat_s}")
        if self.ttl_s + self.poll_s > 2.0:
            raise ValueError("ttl_s + poll_s must stay <= 2 s (membership seen within 2 s)")
        if self.student_threads_idle is not None and self.student_threads_idle < 1:
            raise ValueError(f"student_threads_idle={self.student_threads_idle}: must be >= 1")


def runtime_env() -> dict[str, Any]:
    """Ray workers import this same ``warmstart`` (the driver's checkout, not another install)."""
    src = str(Path(warmstart.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}}


def connect(address: str | None = None, num_cpus: float | None = None) -> str:
    """``ray.init`` (a new local cluster when ``address`` is None); returns the GCS address."""
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"namespace": NAMESPACE, "runtime_env": runtime_env()}
        if address is None:
            kwargs.update(num_cpus=num_cpus, include_dashboard=False)
        ray.init(address=address, log_to_driver=False, **kwargs)
    return str(ray.get_runtime_context().gcs_address)


@ray.remote(num_cpus=0)
class TeacherRegistry:
    """Membership with heartbeats and TTL, plus the student's published status."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._members: dict[str, tuple[Any, dict[str, Any], float]] = {}
        self._status: dict[str, Any] = {}

    def register(self, name: str, handle: Any, info: dict[str, Any]) -> None:
        self._members[name] = (handle, info, time.monotonic())

    def heartbeat(self, name: str) -> bool:
        entry = self._members.get(name)
        if entry is None:
            return False
        self._members[name] = (entry[0], entry[1], time.monotonic())
        return True

    def deregister(self, name: str) -> None:
        self._members.pop(name, None)

    def members(self) -> dict[str, tuple[Any, dict[str, Any]]]:
        now = time.monotonic()
        self._members = {k: v for k, v in self._members.items() if now - v[2] <= self.ttl_s}
        return {k: (v[0], v[1]) for k, v in self._members.items()}

    def publish(self, status: dict[str, Any]) -> None:
        self._status = status

    def status(self) -> dict[str, Any]:
        teachers = {k: info for k, (_, info) in self.members().items()}
        return {"teachers": teachers, "student": self._status}


def registry(ttl_s: float = PoolConfig.ttl_s) -> Any:
    """The cluster's registry actor, created on first use (detached: it outlives the student,
    so teachers stay registered while a killed student restarts)."""
    return TeacherRegistry.options(  # type: ignore[attr-defined]
        name=REGISTRY, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote(ttl_s)


@ray.remote
class TeacherWorker:
    """One teacher service: builds the teacher from its spec, registers and heartbeats."""

    def __init__(self, spec: TeacherSpec, name: str, heartbeat_s: float) -> None:
        import torch

        torch.set_num_threads(spec.threads)  # this actor's own process
        self.teacher = build_teacher(spec)
        self.name = name
        self.info = {"pid": os.getpid(), "host": os.uname().nodename, **_spec_info(spec)}
        self._registry = registry()
        handle = ray.get_runtime_context().current_actor
        ray.get(self._registry.register.remote(name, handle, self.info))
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True)
        self._beat.start()
        self._idle = spec.idle_priority
        self._idle_threads: set[int] = set()  # threads already at SCHED_IDLE

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            self._registry.heartbeat.remote(self.name)

    def predict(self, batch: Any) -> np.ndarray:
        if self._idle and threading.get_ident() not in self._idle_threads:
            self._idle_threads.add(threading.get_ident())
            self.info["idle_priority_applied"] = use_idle_priority()
        return self.teacher.predict(batch)

    def describe(self) -> dict[str, Any]:
        return self.info

    def leave(self) -> None:
        """Deregister (a graceful departure); the caller then lets the actor go."""
        self._stop.set()
        ray.get(self._registry.deregister.remote(self.name))


def _spec_info(spec: TeacherSpec) -> dict[str, Any]:
    keep = ("kind", "threads", "batch_size", "device", "num_cpus", "num_gpus", "idle_priority")
    return {k: v for k, v in asdict(spec).items() if k in keep}


def start_teacher(spec: TeacherSpec, name: str | None = None, heartbeat_s: float = 0.5) -> Any:
    """A :class:`TeacherWorker` actor owned by the calling process (it dies with it)."""
    name = name or f"teacher-{uuid.uuid4().hex[:6]}"
    return TeacherWorker.options(  # type: ignore[attr-defined]
        num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, name=name, max_concurrency=1
    ).remote(spec, name, heartbeat_s)


class RayBackend:
    """:class:`dispatch.Backend` over Ray actors listed by the registry."""

    def __init__(self, dataset: GroupDataset, registry_handle: Any) -> None:
        self.dataset = dataset
        self.registry = registry_handle
        self._handles: dict[str, Any] = {}
        self._owner: dict[Any, str] = {}

    def members(self) -> Mapping[str, Any]:
        try:
            live = ray.get(self.registry.members.remote(), timeout=10)
        except GetTimeoutError:
            log.warning("registry did not answer within 10 s; keeping the last membership")
            return {n: {} for n in self._handles}
        self._handles = {name: handle for name, (handle, _) in live.items()}
        return {name: info for name, (_, info) in live.items()}

    def submit(self, member: str, task: Task) -> Any:
        ref = self._handles[member].predict.remote(self.dataset.take(task.sample_ids))
        self._owner[ref] = member
        return ref

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:  # then everything else that is ready too, without waiting
            more, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
            ready = list({*ready, *more})
        return ready

    def fetch(self, handle: Any) -> Any:
        self._owner.pop(handle, None)
        try:
            return ray.get(handle, timeout=0)  # ready: ray.wait said so
        except RayError as err:
            raise TeacherFailed(type(err).__name__) from err

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def drop(self, member: str) -> None:
        handle = self._handles.pop(member, None)
        if handle is not None:
            with contextlib.suppress(RayError, ValueError):  # already gone
                ray.kill(handle, no_restart=True)


class ElasticTeacherPool:
    """The EDL-Dist source of teacher outputs for ``trainer.train_student``."""

    def __init__(
        self,
        dataset: GroupDataset,
        config: PoolConfig | None = None,
        say: Callable[[str], None] = log.info,
    ) -> None:
        self.config = config or PoolConfig()
        self.say = say
        self.dataset = dataset
        self.registry = registry(self.config.ttl_s)
        c = self.config
        self.dispatcher = Dispatcher(
            c.max_in_flight, c.timeout_s, buffer=c.buffer, refill_at=c.refill_at
        )
        self.student_threads: list[int] = []  # threads of each delivered step (when sized)
        self.stats = StreamStats()
        self._t0 = time.monotonic()

    def stream(self, tasks: Iterator[Task]) -> Iterator[tuple[Task, np.ndarray | None]]:
        backend = RayBackend(self.dataset, self.registry)
        yield from stream(
            tasks,
            backend,
            self.dispatcher,
            poll_s=self.config.poll_s,
            say=self.say,
            stats=self.stats,
            before_yield=None if self.config.student_threads_idle is None else self._size,
        )

    def _size(self, dispatcher: Dispatcher) -> None:
        """The student's torch threads for its next step: 1 while a teacher has work."""
        import torch

        assert self.config.student_threads_idle is not None
        threads = 1 if dispatcher.teachers_busy() else self.config.student_threads_idle
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.student_threads.append(threads)

    def status(self, step: int, samples: int) -> dict[str, Any]:
        d = self.dispatcher
        seconds = time.monotonic() - self._t0
        return {
            "step": step,
            "in_flight": d.in_flight(),
            "queued": len(d.pending),
            "resent": d.resent,
            "duplicates_dropped": d.duplicates,
            "samples_per_s": samples / seconds if seconds > 0 else 0.0,
            "per_teacher": {
                n: {"in_flight": m.in_flight, "done": m.done, "s_per_task": m.seconds_per_task}
                for n, m in d.members.items()
            },
            "events": self.stats.events[-10:],
        }

    def publish(self, step: int, samples: int) -> None:
        self.registry.publish.remote(self.status(step, samples))  # fire and forget
