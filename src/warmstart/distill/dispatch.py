"""EDL-Dist's student-side reader (Liu et al., CCPE 2022, arXiv 2207.06667, section 3): tasks go
to an elastic set of teachers with a bounded number in flight per teacher, a failed or timed-out
teacher's work is re-sent to another, results come back in the original order and every task is
accepted exactly once.

Pure bookkeeping (:class:`Dispatcher`, :class:`SampleLedger`) plus one driving loop
(:func:`stream`) written against a small :class:`Backend` protocol, so the same code runs on Ray
(``distill.ray_pool``) and on the simulated backend of the unit tests.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from warmstart.distill.data import Task

log = logging.getLogger("warmstart.distill")

H = TypeVar("H", bound=Hashable)


class TeacherFailed(Exception):
    """A teacher call did not return outputs (the teacher died, left, or raised)."""


@dataclass
class Member:
    """What the dispatcher knows of one teacher."""

    in_flight: int = 0
    done: int = 0
    failed: int = 0
    seconds_per_task: float | None = None  # EWMA of observed call times

    def speed_key(self) -> float:
        # unmeasured teachers go first so that they get measured
        return 0.0 if self.seconds_per_task is None else self.seconds_per_task


@dataclass
class Attempt:
    seq: int
    task: Task
    member: str
    sent_at: float


@dataclass
class Dispatcher:
    """Which task goes to which teacher; re-sending; re-ordering; exactly-once acceptance.

    Tasks are numbered in the order they are added (``seq``) and delivered in that order.

    Attributes:
        max_in_flight: requests outstanding per teacher (backpressure).
        timeout_s: an attempt older than this counts as failed (its teacher is dropped).
        ewma: weight of the newest call time in each teacher's speed estimate.
        buffer: undelivered tasks held beyond ``max_in_flight`` per teacher (EDL-Dist's ``+ 2``).
        refill_at: None: top the queue up whenever a task is delivered; a number: once full, add
            tasks again only when this few are undelivered (teachers then work in bursts and
            idle in between, which a student sharing their cores uses: ``ElasticTeacherPool``).
    """

    max_in_flight: int = 2
    timeout_s: float = 60.0
    ewma: float = 0.3
    buffer: int = 2
    refill_at: int | None = None
    members: dict[str, Member] = field(default_factory=dict)
    pending: deque[int] = field(default_factory=deque)
    attempts: dict[int, Attempt] = field(default_factory=dict)
    tasks: dict[int, Task] = field(default_factory=dict)
    results: dict[int, Any] = field(default_factory=dict)
    next_seq: int = 0  # next task number to deliver
    added: int = 0
    resent: int = 0
    duplicates: int = 0
    _attempt_ids: Iterator[int] = field(default_factory=itertools.count)
    _filling: bool = True

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight={self.max_in_flight}: must be >= 1")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s={self.timeout_s}: must be > 0")
        if self.buffer < 0 or (self.refill_at is not None and self.refill_at < 0):
            raise ValueError(f"buffer={self.buffer}, refill_at={self.refill_at}: must be >= 0")

    # ------------------------------------------------------------------ membership
    def add_member(self, name: str) -> None:
        self.members.setdefault(name, Member())

    def remove_member(self, name: str) -> list[Task]:
        """Drop a teacher; its outstanding tasks go back to the front of the queue."""
        self.members.pop(name, None)
        lost = [a for a in self.attempts.values() if a.member == name]
        return [self._requeue(a) for a in lost]

    # ------------------------------------------------------------------ tasks
    def add_task(self, task: Task) -> None:
        self.tasks[self.added] = task
        self.pending.append(self.added)
        self.added += 1

    @property
    def outstanding(self) -> int:
        """Tasks added but not yet delivered."""
        return self.added - self.next_seq

    def capacity(self) -> int:
        """How many undelivered tasks to hold: EDL-Dist's ``2n + 2`` for n teachers (defaults)."""
        return self.max_in_flight * max(1, len(self.members)) + self.buffer

    def wants_task(self) -> bool:
        """Whether to add a task now: below capacity, and (with ``refill_at``) not between a
        full queue and the low-water mark."""
        if self.outstanding >= self.capacity():
            self._filling = False
        if self.refill_at is None or self.outstanding <= self.refill_at:
            self._filling = True
        return self._filling and self.outstanding < self.capacity()

    def teachers_busy(self) -> bool:
        """A teacher has work: a request in flight or a task waiting for a slot."""
        return bool(self.attempts or self.pending)

    def assignments(self, now: float) -> list[tuple[int, str, Task]]:
        """(attempt id, teacher, task) for each pending task a teacher has a free slot for.

        The fastest teacher with a free slot gets the next task, so faster teachers, which also
        free their slots sooner, get more of the work.
        """
        out = []
        while self.pending:
            free = [
                (m.speed_key(), n)
                for n, m in self.members.items()
                if m.in_flight < self.max_in_flight
            ]
            if not free:
                break
            name = min(free)[1]
            seq = self.pending.popleft()
            aid = next(self._attempt_ids)
            self.attempts[aid] = Attempt(seq, self.tasks[seq], name, now)
            self.members[name].in_flight += 1
            out.append((aid, name, self.tasks[seq]))
        return out

    def complete(self, attempt_id: int, outputs: Any, now: float) -> bool:
        """Record an attempt's outputs; False when its task already had outputs (dropped)."""
        attempt = self.attempts.pop(attempt_id, None)
        if attempt is None:
            return False  # its teacher was dropped and the task re-sent; the re-send counts
        member = self.members.get(attempt.member)
        if member is not None:
            member.in_flight -= 1
            member.done += 1
            took = now - attempt.sent_at
            prev = member.seconds_per_task
            member.seconds_per_task = (
                took if prev is None else (1 - self.ewma) * prev + self.ewma * took
            )
        if attempt.seq < self.next_seq or attempt.seq in self.results:
            self.duplicates += 1
            return False
        self.results[attempt.seq] = outputs
        return True

    def fail(self, attempt_id: int) -> Task | None:
        """An attempt raised: its task goes back to the front of the queue."""
        attempt = self.attempts.get(attempt_id)
        if attempt is None:
            return None
        member = self.members.get(attempt.member)
        if member is not None:
            member.failed += 1
        return self._requeue(attempt)

    def expired(self, now: float) -> list[str]:
        """Teachers with an attempt older than ``timeout_s``."""
        return sorted(
            {a.member for a in self.attempts.values() if now - a.sent_at > self.timeout_s}
        )

    def _requeue(self, attempt: Attempt) -> Task:
        self.attempts = {k: a for k, a in self.attempts.items() if a is not attempt}
        member = self.members.get(attempt.member)
        if member is not None:
            member.in_flight -= 1
        open_task = attempt.seq >= self.next_seq and attempt.seq not in self.results
        if open_task and attempt.seq not in self.pending:
            self.pending.appendleft(attempt.seq)
            self.resent += 1
        return attempt.task

    def deliver(self, limit: int | None = None) -> list[tuple[Task, Any]]:
        """Tasks whose outputs are in, in their original order, up to the first missing one
        (at most ``limit``)."""
        out: list[tuple[Task, Any]] = []
        while self.next_seq in self.results and (limit is None or len(out) < limit):
            out.append((self.tasks.pop(self.next_seq), self.results.pop(self.next_seq)))
            self.next_seq += 1
        return out

    def in_flight(self) -> int:
        return len(self.attempts)


class SampleLedger:
    """Teacher outputs accepted per (epoch, sample): the exactly-once accounting."""

    def __init__(self, epochs: int, n_samples: int, counts: np.ndarray | None = None) -> None:
        self.counts = np.zeros((epochs, n_samples), np.int64) if counts is None else counts.copy()
        if self.counts.shape != (epochs, n_samples):
            raise ValueError(f"ledger counts {self.counts.shape} != {(epochs, n_samples)}")

    def record(self, task: Task) -> None:
        ids = list(task.sample_ids)
        if len(set(ids)) != len(ids):
            raise ValueError(f"task of step {task.step} lists a sample twice")
        self.counts[task.epoch, ids] += 1

    def check(self, expected: np.ndarray) -> None:
        """Raise AssertionError naming the first (epoch, sample) whose count differs."""
        bad = np.argwhere(self.counts != expected)
        if bad.size:
            e, i = (int(x) for x in bad[0])
            raise AssertionError(
                f"{len(bad)} (epoch, sample) counts wrong, first: epoch {e} sample {i} got "
                f"{self.counts[e, i]} teacher outputs, expected {expected[e, i]}"
            )

    def summary(self) -> dict[str, int]:
        return {
            "outputs": int(self.counts.sum()),
            "max_per_sample_epoch": int(self.counts.max()) if self.counts.size else 0,
        }


class Backend(Protocol, Generic[H]):
    """Where teacher calls run: Ray in production, a simulation in the unit tests."""

    def members(self) -> Mapping[str, Any]:
        """Live teachers: name -> description (polled every ``poll_s``)."""
        ...

    def submit(self, member: str, task: Task) -> H:
        """Start one teacher call; returns a handle."""
        ...

    def wait(self, handles: list[H], timeout: float) -> list[H]:
        """The handles that are ready, waiting up to ``timeout`` s for at least one."""
        ...

    def fetch(self, handle: H) -> Any:
        """The outputs of a ready handle; raises :class:`TeacherFailed`."""
        ...

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def drop(self, member: str) -> None:
        """Stop using a teacher that timed out (e.g. kill it)."""
        ...


@dataclass
class StreamStats:
    """Live numbers of one :func:`stream` (what ``distill status`` shows)."""

    delivered: int = 0
    joined: int = 0
    left: int = 0
    waits_without_teachers: int = 0
    events: list[str] = field(default_factory=list)


def stream(
    tasks: Iterable[Task],
    backend: Backend[Any],
    dispatcher: Dispatcher,
    *,
    poll_s: float = 0.5,
    wait_log_s: float = 10.0,
    say: Callable[[str], None] = log.info,
    stats: StreamStats | None = None,
    before_yield: Callable[[Dispatcher], None] | None = None,
) -> Iterator[tuple[Task, Any]]:
    """Yield ``(task, outputs)`` for every task, in order, each accepted exactly once.

    Membership is re-read every ``poll_s`` seconds (joins and leaves logged); with no teacher
    alive it waits, logging every ``wait_log_s`` seconds, and never gives up. ``before_yield``
    sees the dispatcher before each task goes to the student (e.g. to size the student's threads
    by ``teachers_busy``).
    """
    stats = stats if stats is not None else StreamStats()
    todo = iter(tasks)
    exhausted = False
    handles: dict[Any, int] = {}
    known: set[str] = set()  # teachers the registry lists, including dropped ones
    dropped: set[str] = set()  # failed or timed out: no more work until they leave the registry
    last_poll = -float("inf")
    last_wait_log = -float("inf")

    def note(line: str) -> None:
        stats.events.append(line)
        say(line)

    while True:
        now = backend.now()
        if now - last_poll >= poll_s:
            last_poll = now
            _refresh(backend, dispatcher, known, dropped, note, stats)
        # what finished while the student trained, without waiting: frees slots. Collected
        # before the timeouts are judged, so a student that stalled (a long step, a paused
        # process) does not drop a teacher whose answers were waiting for it
        if handles:
            _collect(backend, dispatcher, handles, dropped, 0.0, note)
        for name in dispatcher.expired(now):
            note(
                f"teacher {name} timed out after {dispatcher.timeout_s:g} s: dropped, work re-sent"
            )
            _drop(backend, dispatcher, dropped, name)
        while not exhausted and dispatcher.wants_task():
            task = next(todo, None)
            if task is None:
                exhausted = True
            else:
                dispatcher.add_task(task)
        if exhausted and dispatcher.outstanding == 0:
            return
        for aid, name, task in dispatcher.assignments(now):
            handles[backend.submit(name, task)] = aid
        # one at a time: between two steps of the student the loop collects, refills and
        # re-assigns (a batch of ready outputs would otherwise hold all of that back)
        ready = dispatcher.deliver(limit=1)
        if ready:
            for item in ready:
                stats.delivered += 1
                if before_yield is not None:
                    before_yield(dispatcher)
                yield item
            continue
        if not dispatcher.members and now - last_wait_log >= wait_log_s:
            last_wait_log = now
            stats.waits_without_teachers += 1
            note(
                f"waiting for teachers: none alive, {dispatcher.outstanding} tasks queued "
                "(start one with `warmstart distill teacher --address ADDR`)"
            )
        if not handles:
            backend.sleep(poll_s)
            continue
        _collect(backend, dispatcher, handles, dropped, poll_s, note)


def _drop(backend: Backend[Any], dispatcher: Dispatcher, dropped: set[str], name: str) -> None:
    dispatcher.remove_member(name)
    dropped.add(name)
    backend.drop(name)


def _refresh(
    backend: Backend[Any],
    dispatcher: Dispatcher,
    known: set[str],
    dropped: set[str],
    note: Callable[[str], None],
    stats: StreamStats,
) -> None:
    live = backend.members()
    for name in sorted(set(live) - known):
        dispatcher.add_member(name)
        stats.joined += 1
        note(f"teacher joined: {name} {live[name]} ({len(live)} alive)")
    for name in sorted(known - set(live)):
        lost = dispatcher.remove_member(name)
        dropped.discard(name)
        stats.left += 1
        note(f"teacher left: {name} ({len(live)} alive, {len(lost)} tasks re-sent)")
    known.clear()
    known.update(live)


def _collect(
    backend: Backend[Any],
    dispatcher: Dispatcher,
    handles: dict[Any, int],
    dropped: set[str],
    timeout: float,
    note: Callable[[str], None],
) -> None:
    for handle in backend.wait(list(handles), timeout):
        aid = handles.pop(handle)
        try:
            outputs = backend.fetch(handle)
        except TeacherFailed as err:
            attempt = dispatcher.attempts.get(aid)
            if attempt is not None:
                dispatcher.fail(aid)
                if attempt.member in dispatcher.members:
                    note(
                        f"teacher {attempt.member} failed on step {attempt.task.step} ({err}): "
                        "dropped, its work re-sent"
                    )
                    _drop(backend, dispatcher, dropped, attempt.member)
            continue
        dispatcher.complete(aid, outputs, backend.now())
