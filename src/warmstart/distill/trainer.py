"""The student trainer of EDL-Dist (Liu et al., CCPE 2022, arXiv 2207.06667) and its two
baselines, one loop for all: the teacher outputs of each batch come from a *source*.

    none      no teacher (hard labels only; the no-KD baseline)
    online    the teacher runs in the student's process, lock-step: predict, then train
    offline   teacher outputs precomputed to disk once, then looked up
    edl       an elastic pool of teacher services (``distill.ray_pool.ElasticTeacherPool``)

Every accepted teacher output is recorded in a :class:`SampleLedger`; at the end the ledger must
equal what the batch plan says (one output per sample per epoch; checked, not assumed). The
student checkpoints every ``checkpoint_every`` steps and resumes from the latest checkpoint with
the same ledger, so a killed and resumed run has the same accounting as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from warmstart.distill.checkpoint import StudentState, load_student, save_student
from warmstart.distill.data import BatchPlan, GroupDataset, PairGroups, Task
from warmstart.distill.dispatch import SampleLedger
from warmstart.distill.losses import KDLossConfig, kd_loss
from warmstart.distill.student import Student
from warmstart.distill.teacher import Teacher

MODES = ("none", "online", "offline", "edl")


class TeacherSource(Protocol):
    """Teacher outputs of each task, yielded in the tasks' order."""

    def stream(self, tasks: Iterator[Task]) -> Iterator[tuple[Task, np.ndarray | None]]: ...


@dataclass(frozen=True)
class StudentConfig:
    """Optimisation of the student.

    Attributes:
        epochs / batch_size / seed: the batch plan (``data.BatchPlan``).
        max_steps: stop after this many steps (None = all epochs).
        lr / warmup_ratio / weight_decay / max_grad_norm: AdamW with linear warm-up and decay.
        checkpoint_every: steps between checkpoints (when a workdir is given).
        bf16: bf16 autocast for the student's forward pass.
        loss: the KD loss weights.
    """

    epochs: int = 1
    batch_size: int = 8
    seed: int = 0
    max_steps: int | None = None
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    bf16: bool = False
    loss: KDLossConfig = field(default_factory=KDLossConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps}: must be >= 1 or None")
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError(
                f"lr={self.lr} must be > 0, warmup_ratio={self.warmup_ratio} in [0, 1)"
            )

    def plan(self, n_samples: int) -> BatchPlan:
        return BatchPlan(n_samples, self.batch_size, self.epochs, self.seed)

    def total_steps(self, n_samples: int) -> int:
        total = self.plan(n_samples).total_steps
        return total if self.max_steps is None else min(total, self.max_steps)


# ---------------------------------------------------------------- teacher sources


class NoTeacher:
    """The no-KD baseline: no teacher outputs."""

    def stream(self, tasks: Iterator[Task]) -> Iterator[tuple[Task, np.ndarray | None]]:
        for task in tasks:
            yield task, None


@dataclass
class OnlineTeacher:
    """Online KD: the teacher scores each batch in the student's process, then the student trains."""

    teacher: Teacher
    dataset: GroupDataset

    def stream(self, tasks: Iterator[Task]) -> Iterator[tuple[Task, np.ndarray | None]]:
        for task in tasks:
            yield task, self.teacher.predict(self.dataset.take(task.sample_ids))


@dataclass
class OfflineTeacher:
    """Offline KD: (N, G) outputs precomputed once (``precompute_outputs``), looked up per batch."""

    table: np.ndarray

    def stream(self, tasks: Iterator[Task]) -> Iterator[tuple[Task, np.ndarray | None]]:
        for task in tasks:
            yield task, self.table[list(task.sample_ids)]


def precompute_outputs(
    teacher: Teacher, dataset: GroupDataset, batch_size: int, path: Path | None = None
) -> np.ndarray:
    """(N, G) teacher outputs of every sample (cached in ``path``, a safetensors file)."""
    if path is not None and path.is_file():
        return load_file(str(path))["outputs"].numpy()
    parts = [
        teacher.predict(dataset.take(range(i, min(i + batch_size, len(dataset)))))
        for i in range(0, len(dataset), batch_size)
    ]
    table = np.concatenate(parts).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"outputs": torch.from_numpy(table)}, str(path))
    return table


# ---------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What one (possibly resumed) run did."""

    steps: int
    resumed_from: int
    samples: int
    seconds: float
    losses: list[float]
    ledger: SampleLedger

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "samples_this_run": self.samples,
            "seconds_this_run": self.seconds,
            "samples_per_s": self.samples_per_s,
            "final_loss": self.losses[-1] if self.losses else None,
            "ledger": self.ledger.summary(),
        }


def _lr_factor(total: int, warmup_ratio: float) -> Callable[[int], float]:
    warm = max(1, math.ceil(total * warmup_ratio))
    return lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))


def train_student(
    student: Student,
    dataset: GroupDataset,
    config: StudentConfig,
    source: TeacherSource,
    *,
    workdir: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``student`` on ``dataset`` with teacher outputs from ``source``.

    Args:
        workdir: checkpoints go to ``workdir/checkpoint`` and a run resumes from there.
        on_step: called with (step, loss) after every step (status publishing).

    Raises:
        AssertionError: the ledger differs from the plan (a sample got no or two outputs).
    """
    if not dataset.all_labelled and not config.loss.needs_teacher:
        raise ValueError("unlabelled samples need a teacher loss (soft or mse weight > 0)")
    plan = config.plan(len(dataset))
    total = config.total_steps(len(dataset))
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    shape = (plan.epochs, plan.n_samples)
    ckpt = None if workdir is None else workdir / "checkpoint"
    state, ledger = (
        (StudentState(), SampleLedger(*shape))
        if ckpt is None
        else load_student(ckpt, student, opt, shape)
    )
    for group in opt.param_groups:
        group.setdefault("initial_lr", config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_factor(total, config.warmup_ratio), last_epoch=state.step - 1
    )
    resumed_from, samples = state.step, 0
    uses_teacher = config.loss.needs_teacher
    student.train()
    bar = tqdm(total=total, initial=state.step, desc="student", disable=not progress, leave=False)
    t0 = time.perf_counter()
    for task, outputs in source.stream(plan.tasks(state.step, total)):
        if task.step != state.step + 1:
            raise AssertionError(f"source delivered step {task.step} after step {state.step}")
        if uses_teacher and outputs is None:
            raise ValueError("the KD loss needs teacher outputs but the source gave none")
        if outputs is not None:
            ledger.record(task)
        loss = _step(student, dataset.take(task.sample_ids), outputs, config, opt, params)
        sched.step()
        state.step, bar.n = task.step, task.step
        state.losses.append(loss)
        samples += len(task.sample_ids)
        bar.set_postfix(loss=f"{loss:.3f}")
        if on_step is not None:
            on_step(state.step, loss)
        if ckpt is not None and state.step % config.checkpoint_every == 0:
            save_student(ckpt, student, opt, state, ledger)
    seconds = time.perf_counter() - t0
    bar.close()
    if ckpt is not None:
        save_student(ckpt, student, opt, state, ledger)
    if uses_teacher:
        ledger.check(plan.expected_counts(state.step))
    return TrainResult(state.step, resumed_from, samples, seconds, state.losses, ledger)


def _step(
    student: Student,
    batch: PairGroups,
    outputs: np.ndarray | None,
    config: StudentConfig,
    opt: torch.optim.Optimizer,
    params: list[nn.Parameter],
) -> float:
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        scores = student.scores(batch).float()  # (B, G)
    teacher = None if outputs is None else torch.tensor(outputs, dtype=torch.float32)
    labelled = None if batch.labelled is None else torch.tensor(batch.labelled)
    loss, _ = kd_loss(scores, teacher, config.loss, labelled)
    loss.backward()
    nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    opt.step()
    return float(loss.detach())


def config_json(config: StudentConfig) -> dict[str, Any]:
    return asdict(config)
