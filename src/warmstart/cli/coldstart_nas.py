"""``warmstart coldstart search|train|evaluate|compare``: ColdNAS end to end.

ColdNAS: Wu et al., "Modulation Search for User Cold-Start Recommendation" (WWW 2023).
Every command writes resumable checkpoints under ``--out``; rerunning the same command after an
interruption continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from warmstart.cli.options import add_cache_dir, add_data_dir, resolve_cache_dir, resolve_data_dir
from warmstart.coldstart.evaluate import (
    aggregate_seeds,
    evaluate,
    evaluate_per_user,
    format_table,
    paired_table,
    report_of,
)
from warmstart.coldstart.structure import Structure
from warmstart.coldstart.training import (
    PRESETS,
    ColdNASPredictor,
    FitResult,
    FixedStructurePredictor,
    Preset,
    TrainConfig,
    export,
    gates_table,
    predict_tasks,
)
from warmstart.data.types import EpisodeSplit
from warmstart.metrics import COLDSTART_KEYS
from warmstart.provenance import git_sha

DATASETS = ("lastfm-coldnas", "movielens-1m", "movielens-100k", "lastfm-2k", "synthetic")


# ----------------------------------------------------------------------------- options
def _search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--search-weight-decay",
        type=float,
        default=None,
        help="Adam L2 penalty of the ColdNAS supernet (default 0, as in the reference: weight "
        "decay collapses its max/min clamps; --weight-decay applies to retraining and FiLM)",
    )


def _common(parser: argparse.ArgumentParser, many_seeds: bool = False) -> None:
    parser.add_argument("--dataset", default="lastfm-coldnas", choices=DATASETS)
    add_data_dir(parser)
    add_cache_dir(parser)
    parser.add_argument(
        "--protocol", choices=("melu", "tanp"), default="melu", help="episode preset (not Last.fm)"
    )
    if many_seeds:
        parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    else:
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("runs/coldnas"), help="output/checkpoint folder"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument(
        "--lr", type=float, default=None, help="override the preset's learning rate"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="override tasks per step")
    parser.add_argument("--weight-decay", type=float, default=None, help="override Adam L2 penalty")
    parser.add_argument(
        "--episodes",
        choices=("fixed", "resample-tasks", "resample-users"),
        default=None,
        help="training episodes (see TrainConfig.train_episodes)",
    )
    parser.add_argument(
        "--item-prior", action="store_true", help="add the smoothed-popularity prior logit"
    )
    parser.add_argument(
        "--item-ids",
        action="store_true",
        help="add a one-hot id field to the item features (every method that embeds items)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _preset(args: argparse.Namespace, seed: int) -> Preset:
    base = PRESETS[args.preset]
    overrides: dict[str, Any] = {"seed": seed}
    for flag, name in (
        ("epochs", "epochs"),
        ("lr", "lr"),
        ("batch_size", "batch_size"),
        ("weight_decay", "weight_decay"),
        ("episodes", "train_episodes"),
    ):
        if getattr(args, flag, None) is not None:
            overrides[name] = getattr(args, flag)
    model = (
        replace(base.model, item_prior=True) if getattr(args, "item_prior", False) else base.model
    )
    k_values = tuple(args.k) if getattr(args, "k", None) else base.k_values
    return Preset(model, replace(base.train, **overrides), k_values)


def _search_config(args: argparse.Namespace, preset: Preset) -> TrainConfig | None:
    """The supernet's settings when ``--search-weight-decay`` is given: the preset's with that
    L2 penalty; None leaves the default to ``ColdNASPredictor`` (the preset's without L2)."""
    wd = args.search_weight_decay
    return None if wd is None else replace(preset.train, weight_decay=wd)


def _supernet_line(search: FitResult) -> str:
    """The supernet's own validation MSE: a supernet that never left the trivial solution
    (e.g. max/min clamps collapsed under weight decay) gives meaningless gates."""
    return f"supernet: best valid MSE {search.best_valid_mse:.4f} at epoch {search.best_epoch}"


def _split(args: argparse.Namespace, seed: int) -> EpisodeSplit:
    if args.dataset == "synthetic":
        from warmstart.data.synthetic import synthetic_split

        return synthetic_split(seed=seed)
    from warmstart.data import coldstart_split

    cache_dir = resolve_cache_dir(args.cache_dir, args.no_cache)
    data_dir = resolve_data_dir(args.data_dir)
    split = coldstart_split(args.dataset, data_dir, seed, args.protocol, cache_dir=cache_dir)
    return with_item_ids(split) if getattr(args, "item_ids", False) else split


def with_item_ids(split: EpisodeSplit) -> EpisodeSplit:
    """The same episodes over a dataset whose item table also has a one-hot ``id`` field."""
    dataset = replace(split.dataset, items=split.dataset.items.with_id_field())
    return replace(split, dataset=dataset, meta={**split.meta, "item_ids": True})


def _meta(args: argparse.Namespace, seed: int, preset: Preset) -> dict[str, Any]:
    """What is written next to every exported model besides the architecture and structure."""
    return {
        "dataset": args.dataset,
        "protocol": args.protocol,
        "seed": seed,
        "git_sha": git_sha(),
        "preset": args.preset,
        "item_ids": bool(getattr(args, "item_ids", False)),
        "train": asdict(preset.train),
    }


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(format_table({title: metrics}))


# ----------------------------------------------------------------------------- commands
def register(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser(
        "search", help="ColdNAS one-shot search + retrain (K chosen on valid users)"
    )
    _common(search)
    _search_options(search)
    search.add_argument(
        "--k", type=int, nargs="+", default=None, help="K values to retrain (top-K gates)"
    )
    search.set_defaults(func=run_search)

    train = commands.add_parser("train", help="train a fixed modulation structure")
    _common(train)
    train.add_argument(
        "--structure",
        required=True,
        help="JSON file, or 'film', 'full', or a short form like 'add|add|max+add|-'",
    )
    train.set_defaults(func=run_train)

    ev = commands.add_parser(
        "evaluate", help="evaluate a saved ColdNAS model on its split's test users"
    )
    ev.add_argument(
        "--model", type=Path, required=True, help="model folder (config.json + safetensors)"
    )
    add_data_dir(ev)
    add_cache_dir(ev)
    ev.add_argument("--threads", type=int, default=2)
    ev.set_defaults(func=run_evaluate)

    compare = commands.add_parser(
        "compare", help="all methods under one protocol over seeds, one table"
    )
    _common(compare, many_seeds=True)
    _search_options(compare)
    compare.add_argument("--k", type=int, nargs="+", default=None, help="K values for ColdNAS")
    compare.add_argument(
        "--skip", nargs="*", default=[], help="method names to skip (e.g. MeLU-MAML)"
    )
    compare.set_defaults(func=run_compare)


def run_search(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    preset = _preset(args, args.seed)
    split = _split(args, args.seed)
    out = args.out / f"seed{args.seed}"
    predictor = ColdNASPredictor(
        preset.model,
        preset.train,
        preset.k_values,
        out,
        not args.no_progress,
        search_config=_search_config(args, preset),
    )
    start = time.perf_counter()
    predictor.fit(split)
    outcome = predictor.outcome
    assert outcome is not None
    print(f"search + retrain: {time.perf_counter() - start:.1f}s")
    print(_supernet_line(outcome.search))
    print("supernet gates (best valid epoch):\n" + gates_table(outcome.gates))
    for cand in outcome.candidates:
        print(
            f"  K={cand['k']}: {cand['structure']}  valid MSE {cand['valid_mse']:.4f} (epoch {cand['best_epoch']})"
        )
    print(f"selected on valid users: K={outcome.k}  structure {outcome.structure}")
    meta = {
        **_meta(args, args.seed, preset),
        "search_train": asdict(predictor.search_config),
        "k": outcome.k,
        "gates": outcome.gates.tolist(),
        "candidates": outcome.candidates,
    }
    export(out / "model", outcome.model, split.dataset.users, split.dataset.items, meta)
    (out / "structure.json").write_text(outcome.structure.to_json())
    _print_metrics("ColdNAS (test)", evaluate(predictor, split.test))
    print(f"model written to {out / 'model'}")
    return 0


def _read_structure(spec: str) -> Structure:
    path = Path(spec)
    if path.is_file():
        try:
            return Structure.from_json(path.read_text())
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path}: not a structure JSON ({err})") from err
    return Structure.parse(spec)


def run_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    preset = _preset(args, args.seed)
    structure = _read_structure(args.structure)
    split = _split(args, args.seed)
    out = args.out / f"seed{args.seed}"
    predictor = FixedStructurePredictor(
        structure,
        preset.model,
        preset.train,
        out / "checkpoint",
        not args.no_progress,
        f"fixed {structure}",
    )
    predictor.fit(split)
    assert predictor.model is not None and predictor.result is not None
    print(
        f"structure {structure}: best valid MSE {predictor.result.best_valid_mse:.4f} at epoch {predictor.result.best_epoch}"
    )
    export(
        out / "model",
        predictor.model,
        split.dataset.users,
        split.dataset.items,
        _meta(args, args.seed, preset),
    )
    _print_metrics(f"{structure} (test)", evaluate(predictor, split.test))
    print(f"model written to {out / 'model'}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    from warmstart.coldstart.artifacts import load_model

    model, config = load_model(args.model)
    ns = argparse.Namespace(
        dataset=config["dataset"],
        protocol=config["protocol"],
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        no_cache=args.no_cache,
    )
    split = _split(ns, int(config["seed"]))

    class _Saved:
        name = f"ColdNAS {model.structure}"

        def fit(self, split: EpisodeSplit) -> None:  # already trained
            pass

        def predict(self, tasks: Any) -> Any:
            return predict_tasks(model, tasks)

    _print_metrics(_Saved.name, evaluate(_Saved(), split.test))
    return 0


def _methods(args: argparse.Namespace, seed: int, split: EpisodeSplit) -> list[Any]:
    from warmstart.coldstart.baselines import default_baselines

    preset = _preset(args, seed)
    binary = tuple(split.dataset.rating_range) == (0.0, 1.0)
    out = args.out / f"seed{seed}"
    methods: list[Any] = list(default_baselines(binary, seed=seed))
    methods.append(
        FixedStructurePredictor(
            None, preset.model, preset.train, out / "film", not args.no_progress
        )
    )
    try:
        from warmstart.coldstart.maml import MAMLConfig, MeLUMAML
    except ImportError:
        print("note: warmstart.coldstart.maml.MeLUMAML not available; skipping MeLU-MAML")
    else:
        cfg = MAMLConfig.tiny(seed) if args.preset == "tiny" else MAMLConfig(seed=seed)
        methods.append(MeLUMAML(cfg))
    methods.append(
        ColdNASPredictor(
            preset.model,
            preset.train,
            preset.k_values,
            out / "coldnas",
            not args.no_progress,
            search_config=_search_config(args, preset),
        )
    )
    return [m for m in methods if m.name not in set(args.skip)]


def compare_tables(
    per_seed: list[dict[str, dict[str, float]]],
    per_user: dict[str, list[np.ndarray]],
    test_users: list[list[int]],
) -> tuple[str, str, dict[str, Any]]:
    """What ``compare`` prints: the mean ± std table over seeds and, when ColdNAS and another
    method ran, the paired bootstrap of ColdNAS against each (heading + table; "" otherwise)
    with its numbers. Also used to merge several ``compare.json`` (one process per seed)."""
    names = list(per_seed[0])
    rows = {
        n: aggregate_seeds([{k: v for k, v in r[n].items() if k != "fit_s"} for r in per_seed])
        for n in names
    }
    table = format_table(rows if len(per_seed) > 1 else {n: per_seed[0][n] for n in names})
    if "ColdNAS" not in per_user or len(per_user) < 2:
        return table, "", {}
    shared = all(u == test_users[0] for u in test_users)
    text, paired = paired_table(per_user, "ColdNAS", shared_users=shared)
    how = (
        "per-user metrics averaged over seeds, users resampled jointly"
        if shared
        else "users resampled within each seed"
    )
    heading = (
        "\nPaired differences on the test users (negative MSE / positive nDCG favour ColdNAS; "
        f"{how}, 10,000 bootstraps):"
    )
    return table, f"{heading}\n{text}", paired


def run_compare(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    per_seed: list[dict[str, dict[str, float]]] = []
    per_user: dict[str, list[np.ndarray]] = {}
    test_users: list[list[int]] = []
    structures = []
    for seed in args.seeds:
        split = _split(args, seed)
        test_users.append([int(t.user) for t in split.test])
        results: dict[str, dict[str, float]] = {}
        for method in _methods(args, seed, split):
            start = time.perf_counter()
            method.fit(split)
            scores = evaluate_per_user(method, split.test)
            per_user.setdefault(method.name, []).append(scores)
            results[method.name] = {**report_of(scores), "fit_s": time.perf_counter() - start}
            print(
                f"seed {seed} {method.name}: MSE {results[method.name]['MSE']:.4f} ({results[method.name]['fit_s']:.0f}s)",
                flush=True,
            )
            if isinstance(method, ColdNASPredictor) and method.outcome is not None:
                structures.append(
                    {
                        "seed": seed,
                        "k": method.outcome.k,
                        "structure": str(method.outcome.structure),
                        "gates": method.outcome.gates.tolist(),
                        "candidates": method.outcome.candidates,
                        "supernet_valid_mse": method.outcome.search.best_valid_mse,
                        "supernet_best_epoch": method.outcome.search.best_epoch,
                    }
                )
                print(f"  {_supernet_line(method.outcome.search)}")
                print("  gates:\n" + gates_table(method.outcome.gates))
                print(f"  selected K={method.outcome.k}: {method.outcome.structure}")
        per_seed.append(results)
    table, paired_text, paired = compare_tables(per_seed, per_user, test_users)
    print(
        f"\n{args.dataset} ({'official tasks' if args.dataset == 'lastfm-coldnas' else args.protocol}), test users, seeds {args.seeds}"
    )
    print(table)
    for s in structures:
        print(f"ColdNAS structure seed {s['seed']}: K={s['k']} {s['structure']}")
    if paired_text:
        print(paired_text)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "dataset": args.dataset,
        "protocol": args.protocol,
        "seeds": args.seeds,
        "git_sha": git_sha(),
        "per_seed": per_seed,
        "structures": structures,
        "table": table,
        "paired_vs_coldnas": paired,
        "test_users": test_users,
        "per_user_columns": list(COLDSTART_KEYS),
        "per_user": {name: [a.tolist() for a in arrays] for name, arrays in per_user.items()},
    }
    (args.out / "compare.json").write_text(json.dumps(report, indent=2))
    return 0
