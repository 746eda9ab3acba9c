"""Cold-start evaluation protocol: one task per new user, metrics per user then averaged.

Protocol of ColdNAS (Wu et al., WWW 2023, arXiv 2306.03387): a predictor sees each test user's
support set (items and labels) and the query items, never the query labels, and predicts one value
per query item. MSE, MAE, nDCG@3 and nDCG@5 come from ``warmstart.metrics.coldstart_report``.
Hyperparameters are chosen on the valid tasks; test tasks are only scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from warmstart.data.types import EpisodeSplit, Task
from warmstart.metrics import (
    COLDSTART_KEYS,
    coldstart_means,
    coldstart_per_user,
    paired_bootstrap,
)

TABLE_COLUMNS = (*COLDSTART_KEYS, "users")
"""Columns of ``format_table``, in order."""


@runtime_checkable
class Predictor(Protocol):
    """A cold-start predictor.

    ``fit`` may read the train tasks, ``split.train_interactions()`` and the valid tasks (for
    model selection), never the test tasks. ``predict`` may read each task's support items and
    labels and its query items, never its query labels.
    """

    name: str

    def fit(self, split: EpisodeSplit) -> None: ...

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]: ...


def evaluate_per_user(predictor: Predictor, tasks: Sequence[Task]) -> np.ndarray:
    """Per-user metrics of a fitted predictor on ``tasks``.

    Returns:
        ``(U, 4)``: one row per task, columns ``COLDSTART_KEYS`` (MSE, MAE, nDCG@3, nDCG@5).
    """
    if not tasks:
        raise ValueError("evaluate: no tasks to score")
    preds = predictor.predict(tasks)
    if len(preds) != len(tasks):
        raise ValueError(
            f"{predictor.name}: returned {len(preds)} predictions for {len(tasks)} tasks"
        )
    for pred, task in zip(preds, tasks, strict=True):
        if np.shape(pred) != task.query_items.shape:
            raise ValueError(
                f"{predictor.name}: user {task.user} has {task.query_items.size} query items, "
                f"got predictions of shape {np.shape(pred)}"
            )
    return coldstart_per_user(preds, [t.query_labels for t in tasks])


def report_of(per_user: np.ndarray) -> dict[str, float]:
    """``evaluate``'s dict from ``evaluate_per_user``'s array (means over users, plus ``users``)."""
    report = coldstart_means(per_user)
    report["users"] = float(per_user.shape[0])
    return report


def evaluate(predictor: Predictor, tasks: Sequence[Task]) -> dict[str, float]:
    """Score a fitted predictor on ``tasks``.

    Returns:
        ``coldstart_report`` keys (``MSE``, ``MAE``, ``nDCG@3``, ``nDCG@5``) plus ``users``
        (number of tasks scored).
    """
    return report_of(evaluate_per_user(predictor, tasks))


def paired_table(
    per_user: Mapping[str, Sequence[np.ndarray]],
    reference: str,
    shared_users: bool,
    metrics: Sequence[str] = ("MSE", "nDCG@3"),
    n_boot: int = 10_000,
    keys: Sequence[str] = COLDSTART_KEYS,
) -> tuple[str, dict[str, dict[str, dict[str, float]]]]:
    """Paired comparison of one method against every other, users resampled.

    Args:
        per_user: method -> per seed ``(U_s, 4)`` arrays from ``evaluate_per_user`` (same users
            in the same order for every method within a seed).
        reference: the method compared against the others (e.g. ``"ColdNAS"``).
        shared_users: every seed scored the same users (see ``paired_bootstrap``).
        metrics: columns of ``keys`` to compare.
        n_boot: bootstrap resamples.
        keys: the column names of the per-user arrays (``topk`` passes its own).

    Returns:
        The text table (one row per other method: ``reference - other`` with its 95 % interval)
        and the numbers as ``{other: {metric: paired_bootstrap(...)}}``.
    """
    if reference not in per_user:
        raise ValueError(f"paired_table: {reference!r} not among {list(per_user)}")
    cols = [list(keys).index(m) for m in metrics]
    numbers: dict[str, dict[str, dict[str, float]]] = {}
    lines = []
    for other, arrays in per_user.items():
        if other == reference:
            continue
        numbers[other] = {}
        cells = []
        for m, c in zip(metrics, cols, strict=True):
            diffs = [
                ref[:, c] - oth[:, c] for ref, oth in zip(per_user[reference], arrays, strict=True)
            ]
            r = paired_bootstrap(diffs, shared_users, n_boot=n_boot)
            numbers[other][m] = r
            cells.append(f"{r['delta']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]")
        lines.append([other, *cells])
    header = [f"{reference} minus", *(f"{m} (95% CI)" for m in metrics)]
    return _aligned(header, lines), numbers


def aggregate_seeds(reports: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each metric over seeds.

    The std is the sample std (``ddof=1``) over the seeds, 0.0 for a single seed.

    Args:
        reports: one ``evaluate`` result per seed, all with the same keys.
    """
    if not reports:
        raise ValueError("aggregate_seeds: no reports")
    keys = list(reports[0])
    for i, r in enumerate(reports):
        if list(r) != keys:
            raise ValueError(f"aggregate_seeds: report {i} has keys {list(r)}, expected {keys}")
    values = np.array([[r[k] for k in keys] for r in reports], dtype=np.float64)  # (seeds, K)
    std = values.std(axis=0, ddof=1) if len(reports) > 1 else np.zeros(len(keys))
    return {k: (float(m), float(s)) for k, m, s in zip(keys, values.mean(axis=0), std, strict=True)}


def _cell(column: str, value: float | tuple[float, float]) -> str:
    """One table cell: ``0.2150`` or ``0.2150 ± 0.0031``; counts as integers."""
    mean, std = value if isinstance(value, tuple) else (value, 0.0)
    if column == "users":
        return f"{mean:.0f}" if std == 0.0 else f"{mean:.1f} ± {std:.1f}"
    return f"{mean:.4f}" if not isinstance(value, tuple) else f"{mean:.4f} ± {std:.4f}"


def format_table(
    rows: Mapping[str, Mapping[str, float | tuple[float, float]]],
    columns: Sequence[str] = TABLE_COLUMNS,
) -> str:
    """A plain-text table: one row per method, columns MSE, MAE, nDCG@3, nDCG@5, users.

    Args:
        rows: method name → metric → value, either a float (one run) or ``(mean, std)`` over
            seeds (printed as ``mean ± std``).

    Returns:
        The table as a string (no trailing newline), columns aligned.
    """
    header = ["method", *columns]
    body = [[name, *(_cell(c, metrics[c]) for c in columns)] for name, metrics in rows.items()]
    return _aligned(header, body)


def _aligned(header: list[str], body: list[list[str]]) -> str:
    """Rows as text: first column left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
