"""``warmstart coldstart search|train|evaluate|compare``: ColdNAS end to end.

ColdNAS: Wu et al., "Modulation Search for User Cold-Start Recommendation" (WWW 2023).
Every command writes resumable checkpoints under ``--out``; rerunning the same command after an
interruption continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from warmstart.cli.options import add_cache_dir, add_data_dir, resolve_cache_dir, resolve_data_dir
from warmstart.coldstart.artifacts import save_model
from warmstart.coldstart.catalog import ItemInfo
from warmstart.coldstart.compare import (
    DATASETS,
    CompareConfig,
    compare,
    export_model,
    load_split,
    model_meta,
    supernet_line,
    with_item_ids,
)
from warmstart.coldstart.evaluate import evaluate, format_table
from warmstart.coldstart.structure import Structure
from warmstart.coldstart.training import (
    PRESETS,
    ColdNASPredictor,
    FixedStructurePredictor,
    gates_table,
    predict_tasks,
)
from warmstart.data.types import EpisodeSplit


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


def _config(args: argparse.Namespace, seeds: list[int] | None = None) -> CompareConfig:
    """The library's settings from the command line (the seeds of ``compare``, else ``--seed``)."""
    k = getattr(args, "k", None)
    return CompareConfig(
        dataset=args.dataset,
        data_dir=resolve_data_dir(args.data_dir),
        cache_dir=resolve_cache_dir(args.cache_dir, args.no_cache),
        protocol=args.protocol,
        seeds=tuple(seeds if seeds is not None else [args.seed]),
        out=args.out,
        preset=args.preset,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        search_weight_decay=getattr(args, "search_weight_decay", None),
        episodes=args.episodes,
        item_prior=args.item_prior,
        item_ids=args.item_ids,
        k=tuple(k) if k else None,
        skip=tuple(getattr(args, "skip", ())),
        progress=not args.no_progress,
    )


def _split(config: CompareConfig, seed: int) -> EpisodeSplit:
    return load_split(
        config.dataset, seed, config.protocol, config.data_dir, config.cache_dir, config.item_ids
    )


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
    own = train.add_argument_group(
        "your own data (instead of --dataset)",
        "a CSV/Parquet with columns user_id,item_id,rating[,timestamp] (docs/data.md)",
    )
    own.add_argument("--interactions", type=Path, default=None, help="interactions table")
    own.add_argument("--user-features", type=Path, default=None, help="user feature table")
    own.add_argument("--item-features", type=Path, default=None, help="item feature table")
    own.add_argument(
        "--item-titles",
        type=Path,
        default=None,
        help="CSV item_id,title[,year][,genres] shown by `warmstart recommend` (genres |-separated)",
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
    ev.add_argument(
        "--interactions",
        type=Path,
        default=None,
        help="a model trained on your own table: that table, if it moved since training",
    )
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
    config = _config(args)
    preset = config.preset_for(args.seed)
    split = _split(config, args.seed)
    out = args.out / f"seed{args.seed}"
    predictor = ColdNASPredictor(
        preset.model,
        preset.train,
        preset.k_values,
        out,
        config.progress,
        search_config=config.search_config(preset),
    )
    start = time.perf_counter()
    predictor.fit(split)
    outcome = predictor.outcome
    assert outcome is not None
    print(f"search + retrain: {time.perf_counter() - start:.1f}s")
    print(supernet_line(outcome.search))
    print("supernet gates (best valid epoch):\n" + gates_table(outcome.gates))
    for cand in outcome.candidates:
        print(
            f"  K={cand['k']}: {cand['structure']}  valid MSE {cand['valid_mse']:.4f} (epoch {cand['best_epoch']})"
        )
    print(f"selected on valid users: K={outcome.k}  structure {outcome.structure}")
    meta = {
        **model_meta(config, args.seed, preset),
        "search_train": asdict(predictor.search_config),
        "k": outcome.k,
        "gates": outcome.gates.tolist(),
        "candidates": outcome.candidates,
    }
    export_model(out / "model", outcome.model, split, config, meta)
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
    if spec.endswith(".json") or "/" in spec or "\\" in spec:
        raise FileNotFoundError(f"--structure {spec}: file does not exist")
    return Structure.parse(spec)


def read_item_titles(path: Path, split: EpisodeSplit) -> ItemInfo:
    """Display rows of the split's items from a CSV ``item_id,title[,year][,genres]``."""
    import pandas as pd

    from warmstart.data.parsing import require_file

    require_file(path, "item titles table")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = [c for c in ("title", "year", "genres") if c in frame.columns]
    if frame.columns[0] != "item_id" or "title" not in columns:
        raise ValueError(
            f"{path}: line 1: header must be item_id,title[,year][,genres], got "
            f"{','.join(frame.columns)!r}"
        )
    ints = frame["item_id"].str.fullmatch(r"-?\d+").all()
    by_id: dict[Any, dict[str, Any]] = {}
    for line, rec in enumerate(frame.to_dict("records"), 2):
        year = rec.get("year", "")
        if year and not year.isdigit():
            raise ValueError(f"{path}: line {line}: field 'year' must be an integer, got {year!r}")
        by_id[int(rec["item_id"]) if ints else rec["item_id"]] = {
            "title": rec["title"],
            "year": int(year) if year else None,
            "genres": [g for g in rec.get("genres", "").split("|") if g],
        }
    return ItemInfo.aligned(split.dataset.items.ids.tolist(), by_id, columns)


OWN_TABLES = ("interactions", "user_features", "item_features")
"""The ``--interactions`` / ``--user-features`` / ``--item-features`` paths a model trained on
one's own tables records in its config.json, so ``coldstart evaluate`` rebuilds the same split."""


def _own_split(
    tables: dict[str, Path | None], protocol: str, seed: int, item_ids: bool
) -> EpisodeSplit:
    """Episodes of one's own interactions table, cut by ``protocol`` with ``seed``."""
    from warmstart.data.episodes import EpisodeConfig, build_episodes
    from warmstart.data.tables import load_table_dataset

    interactions = tables["interactions"]
    assert interactions is not None
    dataset = load_table_dataset(
        interactions,
        name=interactions.stem,
        user_features=tables["user_features"],
        item_features=tables["item_features"],
    )
    make = EpisodeConfig.melu if protocol == "melu" else EpisodeConfig.tanp
    split = build_episodes(dataset, make(seed))
    return with_item_ids(split) if item_ids else split


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _own_tables_meta(args: argparse.Namespace) -> dict[str, Any]:
    """What ``coldstart evaluate`` needs to rebuild the split of a model trained on one's own
    tables: their paths (absolute: evaluate may run elsewhere) and content hashes."""
    meta: dict[str, Any] = {"dataset": "custom", "item_ids": bool(args.item_ids)}
    for name in OWN_TABLES:
        path = getattr(args, name)
        meta[name] = None if path is None else str(Path(path).resolve())
        meta[f"{name}_sha256"] = None if path is None else _file_sha256(Path(path))
    return meta


def _saved_own_split(model_dir: Path, config: dict[str, Any], given: Path | None) -> EpisodeSplit:
    """The split a custom-table model was trained on; ``given`` replaces the recorded
    interactions path (the file moved). Refuses a table whose contents changed."""
    tables: dict[str, Path | None] = {}
    for name in OWN_TABLES:
        recorded = config.get(name)
        path = given if name == "interactions" and given is not None else recorded
        if name == "interactions" and path is None:
            raise ValueError(f"{model_dir}: config.json records no interactions table")
        tables[name] = None if path is None else Path(path)
        digest = config.get(f"{name}_sha256")
        if path is not None and digest is not None and _file_sha256(Path(path)) != digest:
            raise ValueError(
                f"{path}: not the {name.replace('_', '-')} table {model_dir} was trained on "
                "(its contents changed); evaluate needs the same file"
            )
    return _own_split(
        tables, config.get("protocol", "melu"), int(config["seed"]), bool(config.get("item_ids"))
    )


def model_split(
    model_dir: Path,
    config: dict[str, Any],
    data_dir: Path,
    cache_dir: Path | None,
    interactions: Path | None = None,
) -> EpisodeSplit:
    """The split a saved model was trained on, from its config.json: a named dataset under
    ``data_dir``, or (``"dataset": "custom"``) the own tables it recorded (``interactions``
    replaces a moved interactions file). Used by ``coldstart evaluate`` and ``serve export-mf``."""
    if config["dataset"] == "custom":
        return _saved_own_split(model_dir, config, interactions)
    return load_split(
        config["dataset"],
        int(config["seed"]),
        config.get("protocol", "melu"),
        data_dir,
        cache_dir,
        bool(config.get("item_ids", False)),
    )


def run_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    config = _config(args)
    preset = config.preset_for(args.seed)
    structure = _read_structure(args.structure)
    expected = preset.model.n_positions
    if structure.n_positions != expected:
        raise ValueError(
            f"--structure {args.structure}: {structure.n_positions} positions, the model has "
            f"{expected} (hidden sizes {preset.model.hidden_sizes})"
        )
    if args.interactions is None:
        split = _split(config, args.seed)
    else:
        tables = {name: getattr(args, name) for name in OWN_TABLES}
        split = _own_split(tables, args.protocol, args.seed, args.item_ids)
    out = args.out / f"seed{args.seed}"
    predictor = FixedStructurePredictor(
        structure,
        preset.model,
        preset.train,
        out / "checkpoint",
        config.progress,
        f"fixed {structure}",
    )
    predictor.fit(split)
    assert predictor.model is not None and predictor.result is not None
    print(
        f"structure {structure}: best valid MSE {predictor.result.best_valid_mse:.4f} at epoch {predictor.result.best_epoch}"
    )
    meta = model_meta(config, args.seed, preset)
    if args.interactions is None:
        export_model(out / "model", predictor.model, split, config, meta)
    else:
        meta = {**meta, **_own_tables_meta(args)}
        info = read_item_titles(args.item_titles, split) if args.item_titles else None
        save_model(
            out / "model", predictor.model, split.dataset.users, split.dataset.items, meta, info
        )
    _print_metrics(f"{structure} (test)", evaluate(predictor, split.test))
    print(f"model written to {out / 'model'}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    from warmstart.coldstart.artifacts import load_model

    model, config = load_model(args.model)
    for key in ("dataset", "seed"):
        if key not in config:
            raise ValueError(
                f"{args.model}: config.json has no {key!r}; evaluate needs the dataset and seed "
                "the model was trained on"
            )
    split = model_split(
        args.model,
        config,
        resolve_data_dir(args.data_dir),
        resolve_cache_dir(args.cache_dir, args.no_cache),
        args.interactions,
    )

    class _Saved:
        name = f"ColdNAS {model.structure}"

        def fit(self, split: EpisodeSplit) -> None:  # already trained
            pass

        def predict(self, tasks: Any) -> Any:
            return predict_tasks(model, tasks)

    _print_metrics(_Saved.name, evaluate(_Saved(), split.test))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    result = compare(_config(args, args.seeds), log=lambda line: print(line, flush=True))
    print(f"\n{result.heading}")
    print(result.table)
    for s in result.structures:
        print(f"ColdNAS structure seed {s['seed']}: K={s['k']} {s['structure']}")
    if result.paired_text:
        print(result.paired_text)
    for seed, models in zip(args.seeds, result.models, strict=True):
        for name, directory in models.items():
            print(f"seed {seed} {name} model: {directory}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(result.report(), indent=2))
    return 0
