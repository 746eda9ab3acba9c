"""``warmstart coldstart baselines``: simple cold-start baselines on a dataset's test users."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from warmstart.cli.options import add_cache_dir, add_data_dir, resolve_cache_dir, resolve_data_dir
from warmstart.coldstart.baselines import MatrixFactorization, default_baselines
from warmstart.coldstart.evaluate import aggregate_seeds, evaluate, format_table
from warmstart.data import coldstart_split

DATASETS = ("lastfm-coldnas", "movielens-1m", "movielens-100k", "lastfm-2k")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "baselines",
        help="global mean, item popularity and MF + per-user ridge on cold-start test users",
        description="Fit each baseline on train-split users, select MF hyperparameters on the "
        "valid tasks and print MSE, MAE, nDCG@3, nDCG@5 on the test tasks (mean ± std over seeds).",
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    add_data_dir(parser)
    add_cache_dir(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="split/MF seeds")
    parser.add_argument("--protocol", choices=("melu", "tanp"), default="melu")
    parser.add_argument(
        "--json", type=Path, default=None, help="write per-seed and aggregate results"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: ALS's many small matmuls run fastest on one)",
    )
    parser.set_defaults(func=run)


def _one_seed(args: argparse.Namespace, seed: int) -> tuple[dict[str, dict[str, float]], dict]:
    """Evaluate every baseline on one split; returns the metrics and MF's selected settings."""
    split = coldstart_split(
        args.dataset,
        resolve_data_dir(args.data_dir),
        seed,
        args.protocol,
        cache_dir=resolve_cache_dir(args.cache_dir, args.no_cache),
    )
    binary = split.dataset.rating_range == (0.0, 1.0)
    results: dict[str, dict[str, float]] = {}
    selected: dict = {}
    for predictor in default_baselines(binary, seed=seed, progress=True):
        start = time.perf_counter()
        predictor.fit(split)
        results[predictor.name] = evaluate(predictor, split.test)
        if isinstance(predictor, MatrixFactorization):
            selected = {**predictor.selected_, "fit_seconds": time.perf_counter() - start}
    return results, selected


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    per_seed, selections = [], []
    for seed in args.seeds:
        results, selected = _one_seed(args, seed)
        per_seed.append(results)
        selections.append(selected)
        print(f"seed {seed}: MF selected on valid tasks: {selected}")
    methods = list(per_seed[0])
    if len(per_seed) == 1:
        rows: dict = per_seed[0]
    else:
        rows = {m: aggregate_seeds([r[m] for r in per_seed]) for m in methods}
    protocol = "official tasks" if args.dataset == "lastfm-coldnas" else f"{args.protocol} protocol"
    print(f"\n{args.dataset} ({protocol}), test users, seeds {args.seeds}")
    print(format_table(rows))
    if args.json is not None:
        payload = {
            "dataset": args.dataset,
            "protocol": args.protocol,
            "seeds": args.seeds,
            "per_seed": per_seed,
            "mf_selected": selections,
            "aggregate": {m: aggregate_seeds([r[m] for r in per_seed]) for m in methods},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    return 0
