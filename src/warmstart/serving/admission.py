"""Admission control and load shedding (JIZHI, after SEDA's adaptive shedding).

At admission, the wait a new request would see is predicted from the queue depths and measured
batch service times of the stages on its path (``Stage.predicted_wait_s``). If the prediction
exceeds the request's deadline the request is refused at once (``Overloaded`` → HTTP 503 with
``Retry-After``) instead of joining a queue it cannot leave in time; if it exceeds a fraction of
the deadline the pipeline degrades first (fewer candidates, no rerank) and says so. The time a
request already spent counts against its deadline, and so does the event loop's recent lateness
(``LoopLag``: how long a request may have waited in its socket, unseen, before the loop read it).
A cap on requests in flight bounds memory under any load.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from warmstart.serving.engine import LoopLag, Overloaded, Stage, Window, pool_backlog_s


@dataclass(frozen=True)
class AdmissionConfig:
    """Attributes:
    deadline_ms: default per-request deadline (a request may ask for less).
    degrade_at: degrade when the predicted time exceeds this fraction of the deadline.
    reject_at: refuse when even the degraded path's predicted time exceeds this fraction of
        the deadline (the rest is headroom for the answer itself and for batch-time jitter:
        an admitted request that then misses its deadline is a slow refusal, the worst case).
    max_in_flight: requests admitted and not yet answered, at most.
    shed: ``False`` turns prediction-based shedding off (queues still bound memory).
    """

    deadline_ms: float = 100.0
    degrade_at: float = 0.5
    reject_at: float = 0.8
    max_in_flight: int = 512
    shed: bool = True

    def __post_init__(self) -> None:
        if self.deadline_ms <= 0:
            raise ValueError(f"AdmissionConfig.deadline_ms must be > 0, got {self.deadline_ms}")
        if not 0 < self.degrade_at <= self.reject_at <= 1:
            raise ValueError(
                "AdmissionConfig: need 0 < degrade_at <= reject_at <= 1, got "
                f"{self.degrade_at} and {self.reject_at}"
            )
        if self.max_in_flight < 1:
            raise ValueError(
                f"AdmissionConfig.max_in_flight must be >= 1, got {self.max_in_flight}"
            )


@dataclass(frozen=True)
class Ticket:
    """An admitted request: whether to degrade, the predicted time at admission (with the
    margin), the budget it was admitted against, the margin applied, and whether admission
    was refusing a sustained share of requests then (``Admission.overloaded``)."""

    degrade: bool
    predicted_s: float
    budget_s: float = math.inf
    margin: float = 1.0
    overloaded: bool = False


CALIBRATION_WINDOW = 512  # completed requests the margin is learnt from
CALIBRATION_FROM = 0.5  # ... those predicted at >= this fraction of their budget (near the
# refusal threshold: below it a request's own batch, still filling, makes the ratio say little)
CALIBRATION_QUANTILE = 0.99
CALIBRATION_EVERY = 32  # completions between two updates of the margin
MAX_MARGIN = 2.0
OVERLOAD_SMOOTHING = 1 / 256  # the shed shares are averages over ~256 recent decisions ...
OVERLOAD_TAU_S = 0.25  # ... or over the last ~0.25 s, whichever is shorter (an idle gap after a
# flood ends the overload: the next request is not judged by decisions taken seconds earlier)
OVERLOADED_AT = 0.05  # a shed share (refused or degraded) above which admission is overloaded
# and applies the margin
REUSE_S = 0.002  # :meth:`Admission.admit` reuses the prediction :meth:`Admission.refusal` made
# for the same path at most this long before (the front's check, then the body's parse)


class Admission:
    """Decides, per request, admit / degrade / reject; counts what it decided."""

    def __init__(
        self, config: AdmissionConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or AdmissionConfig()
        self._clock = clock
        self._last_decision: float | None = None
        self.in_flight = 0
        self.admitted = 0
        self.degraded = 0
        self.rejected = 0
        self._idle: asyncio.Event | None = None
        # the event loop's recent lateness, counted as time already spent (``LoopLag``); the
        # server sets it when it runs the loop
        self.loop_lag: LoopLag | None = None
        # under sustained overload predictions are multiplied by ``margin`` >= 1: the recent
        # high quantile of (measured time / predicted time) of requests admitted during overloads
        # (``observe``); ``refusing``: the share of refusals among recent decisions;
        # ``shedding``: of refusals and degradations (what decides ``overloaded``)
        self.margin = 1.0
        self.refusing = 0.0
        self.shedding = 0.0
        self.with_margin = 0  # decisions (admit or refuse) taken with the margin applied
        self._ratios = Window(CALIBRATION_WINDOW)
        self._observed = 0
        # the last prediction of ``refusal`` that refused nothing: (its stages, when, seconds),
        # used once by the next ``admit`` of the same path (see ``_reused``)
        self._last: tuple[Sequence[Stage], float, float] | None = None

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def idle(self) -> None:
        """Return once no admitted request is in flight (for draining before a stop)."""
        while self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def predict_s(self, stages: Sequence[Stage]) -> float:
        """Predicted time through ``stages`` (in order) for a request arriving now.

        Every item queued or in service at an earlier stage will reach each later stage before
        the new request does, so it counts in that stage's queue too; summing over stages also
        models stages that share one compute pool (their work serialises). Other stages' calls
        already handed to a compute pool the path uses run first: their work counts once
        (``pool_backlog_s``), not in each stage's service times (a call is timed from when a
        pool thread starts it).
        """
        return sum(self.stage_waits(stages)) + pool_backlog_s(stages)

    def stage_waits(self, stages: Sequence[Stage]) -> list[float]:
        """Each stage's share of :meth:`predict_s` (its predicted wait, with the items queued or
        in service upstream counted in its queue), in order."""
        waits, upstream = [], 0
        for stage in stages:
            waits.append(stage.predicted_wait_s(extra=upstream + 1))
            upstream += stage.load
        return waits

    def admit(
        self, full: Sequence[Stage], degraded: Sequence[Stage] | None, budget_s: float
    ) -> Ticket:
        """Admit a request whose full path is ``full`` and degraded path ``degraded``
        (``None``: it has no lesser form, e.g. a search without rerank: above ``degrade_at``
        it is admitted as it is, neither degraded nor counted as shedding, and refused above
        ``reject_at``).

        Raises:
            Overloaded: too many in flight, or even the degraded path cannot meet ``budget_s``.
        """
        if self.in_flight >= self.config.max_in_flight:
            self._decided(refused=True)
            raise self._full()
        budget_s -= self.front_delay_s()
        overloaded, margin = self.overloaded, self.applied_margin
        self.with_margin += overloaded
        raw = self._reused(full)
        if raw is None:
            raw = self.predict_s(full)
        predicted = margin * raw
        shed = self._loaded(raw, budget_s)
        degrade = self.config.shed and predicted > self.config.degrade_at * budget_s
        if degrade:
            if degraded is not None and degraded is not full:
                predicted = margin * self.predict_s(degraded)
            if predicted > self.config.reject_at * budget_s:
                self._decided(refused=True, shed=shed)
                raise _late(predicted, budget_s)
            degrade = degraded is not None
            self.degraded += degrade
        self._decided(refused=False, shed=shed and degraded is not None)
        return Ticket(degrade, predicted, budget_s, margin, overloaded)

    @property
    def overloaded(self) -> bool:
        """Whether more than ``OVERLOADED_AT`` of the recent decisions shed load (refused or
        degraded, judged without the margin: ``_loaded``): a sustained overload, where every
        admitted request sits near a threshold.

        Degradations count: with the default shedding a flood at twice the capacity is
        absorbed mostly by degrading (measured: ~54% degraded, ~4% refused), so a share of
        refusals alone hovered around the threshold and switched the margin on and off, and
        requests admitted without it then expired in the queue: 503s at the deadline."""
        return self.shedding > OVERLOADED_AT

    @property
    def applied_margin(self) -> float:
        """The factor on predictions now: ``margin`` during a sustained overload, else 1."""
        return self.margin if self.overloaded else 1.0

    def _loaded(self, raw_s: float, budget_s: float) -> bool:
        """Whether a prediction *without the margin* sheds (above ``degrade_at``): what counts
        towards ``overloaded``. Judged on the margined prediction, a margin learnt in a flood
        kept itself on after it: at 525-600 req/s, far below the flood, the default recommend
        server degraded 12-100% of its requests with the margin (2.0) it had learnt at 800
        (23:55 run), each degradation counting as shedding."""
        return self.config.shed and raw_s > self.config.degrade_at * budget_s

    def _decided(self, refused: bool, shed: bool | None = None) -> None:
        """Count a decision; ``shed``: whether it counts towards ``shedding`` (default: it
        refused; admission passes ``_loaded``)."""
        if refused:
            self.rejected += 1
        else:
            self.admitted += 1
        weight = self._weight()
        self.refusing += weight * (refused - self.refusing)
        shed = refused if shed is None else shed
        self.shedding += weight * (shed - self.shedding)

    def _weight(self) -> float:
        """The weight of this decision in the shed shares: 1/256, or more after a pause, so
        that the shares average the last ~``OVERLOAD_TAU_S`` when fewer than 256 decisions
        fall in it (after a flood, a quiet second forgets it)."""
        now = self._clock()
        last, self._last_decision = self._last_decision, now
        if last is None:
            return OVERLOAD_SMOOTHING
        return max(OVERLOAD_SMOOTHING, -math.expm1(-(now - last) / OVERLOAD_TAU_S))

    def observe(self, ticket: Ticket, seconds: float) -> None:
        """An admitted request took ``seconds`` from admission to its answer (or failure).

        Requests admitted during an overload (``overloaded``) and predicted at >=
        ``CALIBRATION_FROM`` of their budget calibrate the ``margin``: the 99th percentile of measured / predicted (unmargined)
        over the last ``CALIBRATION_WINDOW`` of them, within [1, ``MAX_MARGIN``]. The prediction sums median
        batch times; the batches a request really waits for vary (the loop takes the core
        from the model thread as requests arrive), and during a flood every admitted request
        sits near the refusal threshold, so their tail is what decides whether the accepted
        p99 stays within the deadline."""
        if not ticket.overloaded or ticket.predicted_s < CALIBRATION_FROM * ticket.budget_s:
            return
        self._ratios.add(seconds * ticket.margin / ticket.predicted_s)
        self._observed += 1
        if self._observed % CALIBRATION_EVERY == 0:
            self.margin = min(MAX_MARGIN, max(1.0, self._ratios.quantile(CALIBRATION_QUANTILE)))

    def refusal(self, common: Sequence[Stage], budget_s: float) -> Overloaded | None:
        """The refusal :meth:`admit` would give *every* request whose paths (full and
        degraded) include ``common`` (a request's path adds stages, never removes them, so its
        predicted time is at least ``common``'s), or ``None``; counted as a rejection.

        This needs no request: the HTTP front asks it before parsing a body, so a flood is
        refused for the cost of reading its bytes (``serving.front``)."""
        if self.in_flight >= self.config.max_in_flight:
            self._decided(refused=True)
            return self._full()
        if not self.config.shed:
            return None
        budget_s -= self.front_delay_s()
        raw = self.predict_s(common)
        predicted = self.applied_margin * raw
        if predicted <= self.config.reject_at * budget_s:
            self._last = (common, self._clock(), raw)
            return None  # admit decides (and counts)
        self.with_margin += self.overloaded
        self._decided(refused=True, shed=self._loaded(raw, budget_s))
        return _late(predicted, budget_s)

    def _reused(self, stages: Sequence[Stage]) -> float | None:
        """The prediction :meth:`refusal` made for exactly ``stages`` (the same stage objects,
        in order) within the last ``REUSE_S``, once; else ``None``.

        The HTTP front asks :meth:`refusal` before it parses a body and :meth:`admit` right
        after, with nothing run on the loop in between: for a request whose path is the common
        one (a new user's, through the fused model stage) the stages' state is the one just
        predicted from, so the second prediction (~5 us of the loop per request) is skipped.
        Stale by at most the parse: its in-flight batch has run that much longer, so the reused
        figure errs on the long side by those microseconds."""
        last, self._last = self._last, None
        if last is None:
            return None
        held, at, raw = last
        if self._clock() - at > REUSE_S or len(held) != len(stages):
            return None
        if any(a is not b for a, b in zip(held, stages, strict=True)):
            return None
        return raw

    def front_delay_s(self) -> float:
        """Seconds a request may have waited unseen before the loop read it (the loop's
        recent lateness; 0 without a ``loop_lag``)."""
        return 0.0 if self.loop_lag is None else self.loop_lag.value

    def _full(self) -> Overloaded:
        return Overloaded(f"{self.in_flight} requests in flight (limit)", retry_after_s=1.0)

    def snapshot(self) -> dict[str, float]:
        return {
            "in_flight": self.in_flight,
            "admitted": self.admitted,
            "degraded": self.degraded,
            "rejected": self.rejected,
            "margin": self.margin,
            "refusing": self.refusing,
            "shedding": self.shedding,
            "with_margin": self.with_margin,
        }


def _late(predicted_s: float, budget_s: float) -> Overloaded:
    return Overloaded(
        f"predicted {1e3 * predicted_s:.0f} ms exceeds the {1e3 * budget_s:.0f} ms deadline",
        retry_after_s=float(max(1, math.ceil(predicted_s))),
    )
