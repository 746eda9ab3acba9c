"""Benchmark: ColdNAS training throughput, batched trainer versus a per-user loop.

Both sides train the SAME model (``warmstart.coldstart.model.ColdNAS``, paper preset sizes) on the
same objective (mean over users of the per-user query MSE, one Adam step per 32 users):

- batched ("ours"): ``warmstart.coldstart.training.fit`` — one padded forward/backward per batch
  of 32 users;
- per-user loop (baseline, written here): one forward/backward per user (``B = 1`` batches,
  pre-collated outside the timed region so only the model work is timed), gradients accumulated
  over the 32 users of a batch, then one Adam step.

Measured for the search supernet (every op gated) and a retrained fixed structure (the released
Last.fm structure ``add | add | max+add | -``), on the official Last.fm tasks and on ML-1M
(MeLU protocol, seed 0). Also times the full Last.fm search + retrain (K = 4) with
``search_and_retrain``; ``--quick`` times fewer epochs and extrapolates linearly (labelled).

Usage:
    python benchmarks/bench_coldnas_train.py [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import add_common_args, print_table, ratio, write_result
from warmstart.coldstart.model import ColdNAS
from warmstart.coldstart.structure import Structure
from warmstart.coldstart.training import (
    PRESETS,
    TrainConfig,
    build_model,
    fit,
    per_task_mse,
    search_and_retrain,
)
from warmstart.data import coldstart_split
from warmstart.data.types import EpisodeSplit, TaskBatch, collate_tasks

RELEASED_LASTFM = Structure.parse("add|add|max+add|-")
BATCH_SIZE = 32
LR = 1e-3  # the trainer's paper preset


@dataclass(frozen=True)
class Plan:
    """How much to time per dataset."""

    batched_epochs: int
    loop_epochs: int
    loop_users: int  # the loop baseline is timed on the first N train tasks (throughput per user)
    full_epochs: int  # search + retrain epochs actually timed for the Last.fm wall time


PLANS = {
    ("lastfm-coldnas", False): Plan(
        batched_epochs=10, loop_epochs=2, loop_users=248, full_epochs=100
    ),
    ("lastfm-coldnas", True): Plan(batched_epochs=3, loop_epochs=1, loop_users=96, full_epochs=10),
    ("movielens-1m", False): Plan(batched_epochs=2, loop_epochs=1, loop_users=320, full_epochs=0),
    ("movielens-1m", True): Plan(batched_epochs=1, loop_epochs=1, loop_users=64, full_epochs=0),
}


def loop_epoch(
    model: ColdNAS,
    opt: torch.optim.Optimizer,
    singles: Sequence[TaskBatch],
    rng: np.random.Generator,
) -> None:
    """Per-user baseline epoch: one ``B = 1`` forward/backward per user, a step per batch."""
    model.train()
    order = rng.permutation(len(singles))
    for start in range(0, len(order), BATCH_SIZE):
        rows = order[start : start + BATCH_SIZE]
        opt.zero_grad(set_to_none=True)
        for i in rows:
            one = singles[i]
            loss = per_task_mse(model(one), one).mean() / len(rows)
            loss.backward()
        opt.step()


def time_loop(split: EpisodeSplit, structure: Structure | None, plan: Plan) -> float:
    """Users per second of the per-user loop on the first ``plan.loop_users`` train tasks."""
    tasks = split.train[: plan.loop_users]
    singles = [collate_tasks([t]) for t in tasks]
    model = build_model(split, PRESETS["paper"].model, structure, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(plan.loop_epochs):
        loop_epoch(model, opt, singles, rng)
    return plan.loop_epochs * len(tasks) / (time.perf_counter() - start)


def time_batched(split: EpisodeSplit, structure: Structure | None, plan: Plan) -> float:
    """Users per second of the batched trainer (``fit``, no validation) over all train tasks."""
    model = build_model(split, PRESETS["paper"].model, structure, seed=0)
    epochs = plan.batched_epochs
    config = TrainConfig(
        epochs=epochs, batch_size=BATCH_SIZE, lr=LR, eval_every=epochs, checkpoint_every=epochs
    )
    start = time.perf_counter()
    fit(model, split.train, [], config)
    return epochs * len(split.train) / (time.perf_counter() - start)


def throughput_rows(name: str, split: EpisodeSplit, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for phase, structure in (("search", None), ("retrain", RELEASED_LASTFM)):
        loop = time_loop(split, structure, plan)
        batched = time_batched(split, structure, plan)
        rows.append(
            {
                "dataset": name,
                "phase": phase,
                "train users": len(split.train),
                "loop users/s": loop,
                "batched users/s": batched,
                "speedup": ratio(batched, loop),
            }
        )
        print_table(rows[-1:], list(rows[-1]))
    return rows


def full_lastfm(split: EpisodeSplit, plan: Plan) -> dict[str, Any]:
    """Wall time of search + retrain (K = 4); extrapolated to 100 + 100 epochs if fewer timed."""
    epochs = plan.full_epochs
    start = time.perf_counter()
    outcome = search_and_retrain(
        split, PRESETS["paper"].model, TrainConfig(epochs=epochs, lr=LR), k_values=(4,)
    )
    seconds = time.perf_counter() - start
    return {
        "timed epochs (search + retrain)": f"{epochs} + {epochs}",
        "timed wall s": seconds,
        "100+100 wall s": seconds * 100 / epochs,
        "how": "measured" if epochs == 100 else f"extrapolated x{100 / epochs:g} (--quick)",
        "structure found": str(outcome.structure),
    }


def plot(rows: list[dict[str, Any]]) -> Any:
    def draw(ax: Any) -> None:
        labels = [f"{r['dataset']}\n{r['phase']}" for r in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["loop users/s"] for r in rows], 0.4, label="per-user loop")
        ax.bar(x + 0.2, [r["batched users/s"] for r in rows], 0.4, label="batched (ours)")
        for xi, r in zip(x, rows, strict=True):
            ax.annotate(f"{r['speedup']:.1f}x", (xi + 0.2, r["batched users/s"]), ha="center")
        ax.set_xticks(x, labels)
        ax.set_yscale("log")
        ax.set_ylabel("training users / second")
        ax.set_title(f"ColdNAS training throughput ({torch.get_num_threads()} threads)")
        ax.legend()

    return draw


def main() -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--datasets", nargs="+", default=["lastfm-coldnas", "movielens-1m"])
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (default 2, the target machine; use 1 on an oversubscribed host)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    full: dict[str, Any] | None = None
    for name in args.datasets:
        split = coldstart_split(name, Path(args.data_dir), seed=0, protocol="melu")
        plan = PLANS[(name, args.quick)]
        rows += throughput_rows(name, split, plan)
        if plan.full_epochs:
            full = full_lastfm(split, plan)
    print(
        f"== ColdNAS training throughput, {args.threads} thread(s): batched vs per-user loop (goal >= 5x) =="
    )
    print_table(rows, list(rows[0]))
    if full is not None:
        print(
            f"== Last.fm search + retrain wall time, {args.threads} thread(s) (goal < 120 s on 2 cores) =="
        )
        print_table([full], list(full))
    payload = {
        "quick": args.quick,
        "threads": args.threads,
        "throughput": rows,
        "lastfm_search_retrain": full,
    }
    path = write_result("coldnas_train", payload, plot(rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
