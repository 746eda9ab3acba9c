"""Distillation samples and the student's batch plan.

A sample is one query with a group of passages (column 0 the labelled positive, then negatives);
teacher and student both score every (query, passage) pair of the group. An *unlabelled* sample
(an augmentation, e.g. a pseudo-query built from the corpus) has no labelled positive: only the
teacher's outputs train the student on it (the hard loss skips it). A batch of samples is
also the unit of work sent to a teacher (a *task*), so a task id is a (epoch, step) position in
the plan and the samples of a task are known from the plan alone: resuming needs only the step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairGroups:
    """What a teacher scores: ``queries[i]`` against each of ``passages[i]``.

    Attributes:
        queries: (B,) query texts.
        passages: (B, G) passage texts.
        labelled: (B,) whether column 0 of a row is a labelled positive; None = every row.
    """

    queries: tuple[str, ...]
    passages: tuple[tuple[str, ...], ...]
    labelled: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.passages):
            raise ValueError(f"{len(self.queries)} queries but {len(self.passages)} groups")
        if len({len(g) for g in self.passages}) > 1:
            raise ValueError("every passage group must have the same size")
        if self.labelled is not None and len(self.labelled) != len(self.queries):
            raise ValueError(f"{len(self.labelled)} labelled flags for {len(self.queries)} rows")

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def group_size(self) -> int:
        return len(self.passages[0]) if self.passages else 0

    def flat(self) -> tuple[list[str], list[str]]:
        """(B·G,) aligned query and passage texts, row-major."""
        qs = [q for q, g in zip(self.queries, self.passages, strict=True) for _ in g]
        return qs, [p for g in self.passages for p in g]


@dataclass(frozen=True)
class GroupDataset:
    """N samples of one query and G passages (column 0 = the positive; ``labelled``: whether it
    is a labelled one, None = every sample is)."""

    queries: tuple[str, ...]
    passages: tuple[tuple[str, ...], ...]
    labelled: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        PairGroups(self.queries, self.passages, self.labelled)  # same checks
        if not self.queries:
            raise ValueError("GroupDataset: no samples")

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def all_labelled(self) -> bool:
        return self.labelled is None or all(self.labelled)

    def take(self, ids: Sequence[int] | np.ndarray) -> PairGroups:
        rows = [int(i) for i in ids]
        return PairGroups(
            tuple(self.queries[i] for i in rows),
            tuple(self.passages[i] for i in rows),
            None if self.labelled is None else tuple(self.labelled[i] for i in rows),
        )

    def unlabelled(self) -> GroupDataset:
        """The same samples marked unlabelled (augmentations: teacher outputs only)."""
        return GroupDataset(self.queries, self.passages, (False,) * len(self))

    def __add__(self, other: GroupDataset) -> GroupDataset:
        """This dataset's samples, then ``other``'s (same group size), flags kept."""
        if len(other.passages[0]) != len(self.passages[0]):
            raise ValueError("GroupDataset +: the group sizes differ")
        flags = None
        if self.labelled is not None or other.labelled is not None:
            flags = (self.labelled or (True,) * len(self)) + (
                other.labelled or (True,) * len(other)
            )
        return GroupDataset(self.queries + other.queries, self.passages + other.passages, flags)


@dataclass(frozen=True)
class Task:
    """One batch of samples: the unit the student trains on and a teacher scores.

    Attributes:
        step: 1-based global optimizer step (its order in the plan).
        epoch: 0-based epoch.
        sample_ids: (B,) dataset positions.
    """

    step: int
    epoch: int
    sample_ids: tuple[int, ...]


@dataclass(frozen=True)
class BatchPlan:
    """Seeded order of the samples: ``epochs`` shuffles, each cut into batches of ``batch_size``
    (the last batch of an epoch may be smaller), so every sample is in every epoch once."""

    n_samples: int
    batch_size: int
    epochs: int
    seed: int

    def __post_init__(self) -> None:
        for name in ("n_samples", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")

    def epoch(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_samples)
        return [order[i : i + self.batch_size] for i in range(0, self.n_samples, self.batch_size)]

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_samples // self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def tasks(self, after_step: int = 0, max_steps: int | None = None) -> Iterator[Task]:
        """Tasks with ``after_step < step <= max_steps`` (all steps when ``max_steps`` is None)."""
        last = self.total_steps if max_steps is None else min(max_steps, self.total_steps)
        step = 0
        for e in range(self.epochs):
            if step + self.steps_per_epoch <= after_step:
                step += self.steps_per_epoch
                continue
            for rows in self.epoch(e):
                step += 1
                if step > last:
                    return
                if step > after_step:
                    yield Task(step, e, tuple(int(r) for r in rows))

    def expected_counts(self, step: int) -> np.ndarray:
        """(epochs, N) teacher outputs each sample should have received after ``step`` steps."""
        counts = np.zeros((self.epochs, self.n_samples), dtype=np.int64)
        for task in self.tasks(0, step):
            counts[task.epoch, list(task.sample_ids)] += 1
        return counts


def synthetic_groups(n: int, group: int = 3, seed: int = 0, vocab: int = 40) -> GroupDataset:
    """``n`` tiny samples: the positive repeats 3 of the query's 4 words, negatives are random
    (tests and the ``tiny`` preset)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab)]
    queries, groups = [], []
    for _ in range(n):
        q = [str(w) for w in rng.choice(words, 4)]
        positive = " ".join([*q[:3], *rng.choice(words, 3)])
        negatives = [" ".join(rng.choice(words, 6)) for _ in range(group - 1)]
        queries.append(" ".join(q))
        groups.append((positive, *negatives))
    return GroupDataset(tuple(queries), tuple(groups))
