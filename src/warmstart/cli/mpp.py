"""``warmstart mpp compare|train``: Meta Parameter Partition (Zhao et al., arXiv 1912.04108).

``compare`` runs the five conditions of ``coldstart/mpp_compare.py`` per seed (resumable: a
finished seed is reused from ``--out/seed<N>/result.json``) and writes ``--out/compare.json``,
``--out/convergence.png`` and the printed tables. ``train`` meta-trains one model offline and
exports a serving artifact (``mpp_inference.load``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from warmstart.cli.options import add_cache_dir, add_data_dir, resolve_cache_dir, resolve_data_dir
from warmstart.coldstart.compare import with_item_ids
from warmstart.coldstart.mpp import MPPConfig, PartitionRule
from warmstart.coldstart.mpp_compare import (
    CompareConfig,
    auc_table,
    convergence_table,
    forgetting_table,
    paired,
    paired_text,
    plot_convergence,
    run_seed,
)
from warmstart.coldstart.mpp_inference import save
from warmstart.coldstart.mpp_train import (
    MetaConfig,
    OnlineConfig,
    click_split,
    mean_user_auc,
    new_learner,
    predict_adapted,
    train_offline,
)
from warmstart.data.types import EpisodeSplit
from warmstart.provenance import git_sha

DATASETS = ("movielens-1m", "lastfm-coldnas", "movielens-100k", "synthetic")
ML1M_TIMESTAMPS = "ratings_last20pct_timestamped.csv"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="movielens-1m", choices=DATASETS)
    add_data_dir(parser)
    add_cache_dir(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/mpp"), help="output folder")
    parser.add_argument(
        "--rule",
        default="top",
        help='partition rule: top, film, context, head, or JSON {"adaptive": ["head.out.*"]}',
    )
    parser.add_argument("--steps", type=int, default=300, help="outer steps of every method")
    parser.add_argument("--eval-every", type=int, default=25, help="validation AUC interval")
    parser.add_argument("--batch-size", type=int, default=32, help="users per outer step")
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--inner-lr", type=float, default=0.5)
    parser.add_argument("--fixed-inner-lr", action="store_true", help="do not learn step sizes")
    parser.add_argument("--first-order", action="store_true", help="first-order MAML")
    parser.add_argument("--lr", type=float, default=3e-3, help="outer Adam learning rate")
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 32])
    parser.add_argument(
        "--item-ids", action="store_true", help="add a one-hot id field to the item features"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser("compare", help="pooled vs offline/online MPP vs full MAML")
    _common(compare)
    compare.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    compare.add_argument("--online-mode", choices=("maml", "reptile"), default="maml")
    compare.add_argument(
        "--online-lrs",
        type=float,
        nargs="+",
        default=[0.01, 0.05, 0.2],
        help="online step sizes; the best prequential AUC on the valid users' stream is used",
    )
    compare.add_argument("--maml-local-lr", type=float, default=0.5, help="MeLU inner step")
    compare.set_defaults(func=run_compare)
    train = commands.add_parser("train", help="offline MPP meta-training + serving artifact")
    _common(train)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=run_train)


def _meta(args: argparse.Namespace, seed: int) -> MetaConfig:
    return MetaConfig(
        inner_steps=args.inner_steps,
        inner_lr=args.inner_lr,
        learn_inner_lr=not args.fixed_inner_lr,
        first_order=args.first_order,
        lr=args.lr,
        batch_size=args.batch_size,
        steps=args.steps,
        eval_every=args.eval_every,
        seed=seed,
    )


def _model(args: argparse.Namespace) -> MPPConfig:
    return MPPConfig(embedding_dim=args.embedding_dim, hidden=tuple(args.hidden))


def _split(args: argparse.Namespace, seed: int) -> EpisodeSplit:
    if args.dataset == "synthetic":
        from warmstart.data.synthetic import synthetic_split

        return synthetic_split(seed=seed)
    from warmstart.data import coldstart_split

    cache = resolve_cache_dir(args.cache_dir, args.no_cache)
    split = coldstart_split(args.dataset, resolve_data_dir(args.data_dir), seed, cache_dir=cache)
    return with_item_ids(split) if args.item_ids else split


def first_seen(args: argparse.Namespace, split: EpisodeSplit) -> dict[int, float] | None:
    """Each user's first timestamp (dense user row -> seconds) where the dataset has one.

    ML-1M ships timestamps only for its chronologically last 20 % of ratings
    (``ratings_last20pct_timestamped.csv``); users with none of those have no arrival time.
    """
    inter = split.dataset.interactions
    if "timestamp" in inter:
        first = inter.groupby("user")["timestamp"].min()
        return dict(
            zip(first.index.to_numpy().tolist(), first.to_numpy(float).tolist(), strict=True)
        )
    if args.dataset != "movielens-1m":
        return None
    path = resolve_data_dir(args.data_dir) / "movielens-1m" / ML1M_TIMESTAMPS
    if not path.is_file():
        return None
    frame = pd.read_csv(path, usecols=["user_id", "timestamp"])
    first = frame.groupby("user_id")["timestamp"].min()
    row = {int(raw): i for i, raw in enumerate(np.asarray(split.dataset.users.ids))}
    pairs = zip(first.index.to_numpy().tolist(), first.to_numpy(float).tolist(), strict=True)
    return {row[u]: t for u, t in pairs if u in row}


def run_compare(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    rule = PartitionRule.parse(args.rule)
    base = CompareConfig(
        model=_model(args),
        meta=_meta(args, 0),
        online=OnlineConfig(mode=args.online_mode),
        rule=rule,
        maml_local_lr=args.maml_local_lr,
        online_lrs=tuple(args.online_lrs),
    )
    per_seed = []
    for seed in args.seeds:
        split = _split(args, seed)
        config = replace(base, meta=_meta(args, seed))
        result = run_seed(
            split, seed, config, args.out / f"seed{seed}", first_seen(args, split),
            not args.no_progress,
        )  # fmt: skip
        per_seed.append(result)
    boot = paired(per_seed)
    title = f"{args.dataset}, rule {rule.name}, seeds {args.seeds}"
    tables = {
        "auc": auc_table(per_seed),
        "paired": paired_text(boot),
        "forgetting": forgetting_table(per_seed),
        "convergence": convergence_table(per_seed),
    }
    how = "jointly (same users every seed)" if boot["shared_users"] else "within each seed"
    print(f"\n{title}: AUC on the stream of new (test) users, mean ± std over seeds")
    print(tables["auc"])
    print(f"\nPaired bootstrap over users ({how}, 10,000 resamples):")
    print(tables["paired"])
    print("\nForgetting (user AUC; first 20% of the stream and valid users, before/after):")
    print(tables["forgetting"])
    print("\nValidation user AUC against outer steps (mean over seeds):")
    print(tables["convergence"])
    print(f"\nstream order: {per_seed[0]['stream_order']}")
    args.out.mkdir(parents=True, exist_ok=True)
    plot_convergence(per_seed, args.out / "convergence.png", title)
    report: dict[str, Any] = {
        "dataset": args.dataset,
        "item_ids": args.item_ids,
        "seeds": args.seeds,
        "git_sha": git_sha(),
        "config": base.to_dict(),
        "tables": tables,
        "paired": boot,
        "per_seed": per_seed,
    }
    (args.out / "compare.json").write_text(json.dumps(report, indent=2))
    return 0


def run_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    split = click_split(_split(args, args.seed))
    meta = _meta(args, args.seed)
    learner = new_learner(split, _model(args), PartitionRule.parse(args.rule), meta)
    result = train_offline(learner, split, not args.no_progress)
    test_auc = mean_user_auc(predict_adapted(learner, split.test), split.test)
    save(
        args.out, learner.net, learner.rule, meta.inner_steps, learner.inner_lr_values(),
        split.dataset.users, split.dataset.items,
        {"dataset": args.dataset, "seed": args.seed, "git_sha": git_sha(),
         "best_step": result.best_step, "valid_auc": result.best_valid_auc, "test_auc": test_auc},
    )  # fmt: skip
    print(
        f"offline MPP ({learner.rule.name}): best valid user AUC {result.best_valid_auc:.4f} "
        f"at step {result.best_step}; test user AUC {test_auc:.4f}; saved {args.out}"
    )
    return 0
