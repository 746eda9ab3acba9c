"""``warmstart coldstart topk``: every method ranks the whole catalogue for the cold-start test
users of ``compare``'s splits (``coldstart/topk.py``), one table over seeds, ``DIR/topk.json``.

Methods: item popularity (train likes), MF + per-user ridge, item-kNN, the rating-trained fixed
FiLM, ColdNAS and MeLU-MAML of ``compare``, FiLM and ColdNAS trained with the ranking objective
(``coldstart/ranking.py``, the search run under that objective), and two-stage rankers
(MF + ridge or item-kNN candidates, ordered by the ranking-trained FiLM), and offline MPP
(``coldstart/mpp_topk.py``, ``mpp compare``'s documented settings). The rating metrics of
``compare`` are printed for every method that predicts ratings, ranking-trained ones included.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from warmstart.cli.coldstart_nas import _common, _config, _split
from warmstart.cli.coldstart_nas import _search_options as search_options
from warmstart.coldstart.compare import methods
from warmstart.coldstart.evaluate import (
    aggregate_seeds,
    evaluate_per_user,
    format_table,
    paired_table,
    report_of,
)
from warmstart.coldstart.knn_inference import KNN_ROWS
from warmstart.coldstart.mpp_topk import MPPRanker
from warmstart.coldstart.ranking import LOSSES, RankingConfig
from warmstart.coldstart.topk import (
    LIST_KEYS,
    SAMPLED_KEYS,
    TOPK_KEYS,
    CatalogueRanker,
    ColdNASRanker,
    KNNRanker,
    MFRanker,
    MostPopular,
    PredictorRanker,
    TwoStage,
    evaluate_topk,
    like_threshold,
    popularity_counts,
    popularity_rank,
    taste_groups,
)
from warmstart.coldstart.training import ColdNASPredictor, FixedStructurePredictor, gates_table
from warmstart.data.types import EpisodeSplit
from warmstart.metrics import COLDSTART_KEYS
from warmstart.provenance import git_sha

RATING_FROM_COMPARE = ("MF + per-user ridge", "fixed FiLM", "MeLU-MAML", "ColdNAS")
"""The methods of ``compare``'s assembly ranked here (the constants / mean-label popularity
rows are replaced by item popularity over likes and item-kNN)."""
FILM_RANK, COLDNAS_RANK = "FiLM (ranking)", "ColdNAS (ranking)"
BASELINES = ("item popularity", "MF + per-user ridge", "item-kNN")


def register(commands: argparse._SubParsersAction) -> None:
    topk = commands.add_parser(
        "topk", help="catalogue-level top-k table: every method ranks the whole catalogue"
    )
    _common(topk, many_seeds=True)
    search_options(topk)
    topk.add_argument("--k", type=int, nargs="+", default=None, help="K values for ColdNAS")
    topk.add_argument("--skip", nargs="*", default=[], help="method names to skip")
    topk.add_argument("--loss", choices=LOSSES, default="softmax", help="ranking objective")
    topk.add_argument("--negatives", type=int, default=256, help="sampled catalogue negatives")
    topk.add_argument(
        "--rating-weight", type=float, default=0.0, help="weight of the query MSE in the mix"
    )
    topk.add_argument("--rank-epochs", type=int, default=None, help="epochs of ranking models")
    topk.add_argument("--rank-lr", type=float, default=None, help="lr of ranking models")
    topk.add_argument(
        "--rank-weight-decay",
        type=float,
        default=None,
        help="Adam L2 of ranking models (default: --weight-decay; their supernet: 0)",
    )
    topk.add_argument(
        "--candidates", type=int, default=100, help="first-stage candidates of two-stage rankers"
    )
    topk.add_argument(
        "--sampled", action="store_true", help="also the sampled-100 variant (not the headline)"
    )
    topk.set_defaults(func=run_topk)


def _ranking_models(args: argparse.Namespace, seed: int) -> list[Any]:
    """FiLM and ColdNAS under the ranking objective (own checkpoints under ``--out``)."""
    config = _config(args, args.seeds)
    preset = config.preset_for(seed)
    overrides = {
        name: value
        for name, value in (("epochs", args.rank_epochs), ("lr", args.rank_lr))
        if value is not None
    }
    wd = {} if args.rank_weight_decay is None else {"weight_decay": args.rank_weight_decay}
    train = replace(preset.train, **overrides, **wd)
    objective = RankingConfig(
        loss=args.loss, negatives=args.negatives, rating_weight=args.rating_weight
    ).factory()
    out = args.out / f"seed{seed}"
    progress = not args.no_progress
    search = config.search_config(preset)
    return [
        FixedStructurePredictor(
            None, preset.model, train, out / "film-rank", progress, FILM_RANK, objective
        ),
        ColdNASPredictor(
            preset.model,
            train,
            preset.k_values,
            out / "coldnas-rank",
            progress,
            COLDNAS_RANK,
            None if search is None else replace(search, **overrides),
            objective,
        ),
    ]


def _as_ranker(method: Any, n_items: int) -> CatalogueRanker:
    """A fitted ``compare`` / ranking predictor as a catalogue ranker."""
    if isinstance(method, FixedStructurePredictor | ColdNASPredictor):
        return ColdNASRanker(method, fitted=True)
    if method.name == "MF + per-user ridge":
        return MFRanker(method, fitted=True)
    return PredictorRanker(method, fitted=True, n_items=n_items)


def _fit_rankers(
    args: argparse.Namespace, seed: int, split: EpisodeSplit
) -> tuple[list[CatalogueRanker], dict[str, Any], list[dict[str, Any]]]:
    """Fit every method of the seed; returns rankers, the rating predictors and structures."""
    skip = set(args.skip)
    assembly = methods(_config(args, args.seeds), seed, split, print)
    compare = [m for m in assembly if m.name in RATING_FROM_COMPARE]
    ranked = [m for m in _ranking_models(args, seed) if m.name not in skip]
    predictors: dict[str, Any] = {}
    rankers: list[CatalogueRanker] = []
    knn: list[CatalogueRanker] = [KNNRanker(c, name) for name, c in KNN_ROWS.items()]
    for simple in [MostPopular(), *knn]:
        if simple.name not in skip:
            simple.fit(split)
            rankers.append(simple)
    mpp = MPPRanker(seed=seed, checkpoint=args.out / f"seed{seed}" / "mpp")
    if mpp.name not in skip:
        start = time.perf_counter()
        mpp.fit(split)
        took, res = time.perf_counter() - start, mpp.result_
        best = f", valid AUC {res.best_valid_auc:.4f} at step {res.best_step}" if res else ""
        print(f"seed {seed} {mpp.name}: fitted ({took:.0f}s{best})", flush=True)
        rankers.append(mpp)
    structures = []
    for method in [*compare, *ranked]:
        start = time.perf_counter()
        method.fit(split)
        took = time.perf_counter() - start
        # FiLM's fit, or ColdNAS's supernet; valid MSE, or -nDCG@10 under the ranking objective
        result = getattr(method, "result", None) or getattr(
            getattr(method, "outcome", None), "search", None
        )
        best = (
            f", valid score {result.best_valid_mse:.4f} at epoch {result.best_epoch}"
            if result
            else ""
        )
        print(f"seed {seed} {method.name}: fitted ({took:.0f}s{best})", flush=True)
        predictors[method.name] = method
        rankers.append(_as_ranker(method, split.dataset.n_items))
        if isinstance(method, ColdNASPredictor) and method.outcome is not None:
            structures.append(_structure_record(seed, method))
    by_name = {r.name: r for r in rankers}
    if FILM_RANK in by_name:
        for first, short in (("MF + per-user ridge", "MF"), ("item-kNN", "kNN")):
            if first in by_name:
                name = f"two-stage {short} -> {FILM_RANK}"
                rankers.append(TwoStage(by_name[first], by_name[FILM_RANK], args.candidates, name))
    return [r for r in rankers if r.name not in skip], predictors, structures


def _structure_record(seed: int, method: ColdNASPredictor) -> dict[str, Any]:
    outcome = method.outcome
    assert outcome is not None
    print(f"  {method.name} supernet gates:\n" + gates_table(outcome.gates))
    print(f"  {method.name} selected K={outcome.k}: {outcome.structure}")
    return {
        "method": method.name,
        "seed": seed,
        "k": outcome.k,
        "structure": str(outcome.structure),
        "gates": outcome.gates.tolist(),
        "candidates": outcome.candidates,
        "supernet_valid": outcome.search.best_valid_mse,
    }


def _seed_run(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    split = _split(_config(args, args.seeds), seed)
    ds = split.dataset
    thr = like_threshold(ds.rating_range)
    if not args.no_progress:
        print(f"seed {seed}: {len(split.test)} test users, {ds.n_items} items", flush=True)
    pop_rank = popularity_rank(popularity_counts(split, thr))
    groups = taste_groups(split.test, ds.items, thr)
    rankers, predictors, structures = _fit_rankers(args, seed, split)
    topk, per_user, users = {}, {}, []
    for ranker in rankers:
        start = time.perf_counter()
        res = evaluate_topk(
            ranker, split.test, ds.n_items, thr, pop_rank, groups, seed if args.sampled else None
        )
        topk[ranker.name] = res.means()
        per_user[ranker.name] = res.per_user
        users = res.users.tolist()
        print(
            f"seed {seed} {ranker.name}: HR@10 {topk[ranker.name]['HR@10']:.4f} "
            f"nDCG@10 {topk[ranker.name]['nDCG@10']:.4f} ({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    rating, rating_per_user = {}, {}
    for name, method in predictors.items():
        scores = evaluate_per_user(method, split.test)
        rating[name], rating_per_user[name] = report_of(scores), scores
    return {
        "topk": topk,
        "per_user": per_user,
        "users": users,
        "rating": rating,
        "rating_per_user": rating_per_user,
        "structures": structures,
        "taste": "dominant genre" if groups is not None else "disjoint liked support",
    }


def _paired(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """Each cold-start model (ranking-trained, two-stage, offline MPP) minus each baseline,
    paired over users."""
    names = list(runs[0]["per_user"])
    shared = all(r["users"] == runs[0]["users"] for r in runs)
    texts, numbers = [], {}
    models = [n for n in names if "(ranking)" in n or n == MPPRanker.name]
    for ref in models:  # ranking-trained, two-stage and offline MPP
        per_user = {n: [r["per_user"][n] for r in runs] for n in [ref, *BASELINES] if n in names}
        if len(per_user) < 2:
            continue
        text, nums = paired_table(per_user, ref, shared, metrics=("HR@10", "nDCG@10"), keys=keys)
        texts.append(text)
        numbers[ref] = nums
    how = "users resampled jointly" if shared else "users resampled within each seed"
    heading = f"\nPaired differences over test users ({how}, 10,000 bootstraps; mean of seeds):"
    return heading + "\n" + "\n\n".join(texts), numbers


def _table(per_seed: list[dict[str, dict[str, float]]], columns: tuple[str, ...]) -> str:
    names = list(per_seed[0])
    if len(per_seed) == 1:
        return format_table({n: per_seed[0][n] for n in names}, columns)
    return format_table({n: aggregate_seeds([r[n] for r in per_seed]) for n in names}, columns)


def topk_tables(
    runs: list[dict[str, Any]], keys: tuple[str, ...]
) -> tuple[str, str, str, dict[str, Any]]:
    """What ``topk`` prints from per-seed runs (``topk``, ``per_user``, ``users``, ``rating``
    each): the top-k table, the rating table, the paired text and its numbers. Also used to
    merge several ``topk.json`` (``experiments/merge_topk.py``)."""
    table = _table([r["topk"] for r in runs], (*keys, *LIST_KEYS, "users"))
    rating = _table([r["rating"] for r in runs], (*COLDSTART_KEYS, "users"))
    paired_text, paired = _paired(runs, keys)
    return table, rating, paired_text, paired


def run_topk(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    runs = [_seed_run(args, seed) for seed in args.seeds]
    keys = TOPK_KEYS + (SAMPLED_KEYS if args.sampled else ())
    table, rating, paired_text, paired = topk_tables(runs, keys)
    where = "official tasks" if args.dataset == "lastfm-coldnas" else f"{args.protocol} protocol"
    print(f"\n{args.dataset} ({where}), full-catalogue top-k, test users, seeds {args.seeds}")
    print(
        f"(overlap@10: mean shared top-10 items between users of contrasting taste, by {runs[0]['taste']})"
    )
    print(table)
    print(paired_text)
    print("\nRating metrics of the same models (compare protocol):")
    print(rating)
    for r in runs:
        for s in r["structures"]:
            print(f"{s['method']} structure seed {s['seed']}: K={s['k']} {s['structure']}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "dataset": args.dataset,
        "protocol": args.protocol,
        "seeds": args.seeds,
        "git_sha": git_sha(),
        "ranking": {
            "loss": args.loss,
            "negatives": args.negatives,
            "rating_weight": args.rating_weight,
        },
        "table": table,
        "rating_table": rating,
        "paired": paired,
        "per_seed": [{"topk": r["topk"], "rating": r["rating"]} for r in runs],
        "structures": [s for r in runs for s in r["structures"]],
        "test_users": [r["users"] for r in runs],
        "per_user_columns": list(keys),
        "per_user": {
            n: [np.asarray(r["per_user"][n]).tolist() for r in runs] for n in runs[0]["per_user"]
        },
    }
    (args.out / "topk.json").write_text(json.dumps(report, indent=2))
    return 0
