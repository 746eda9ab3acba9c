"""Every cold-start method under one protocol over seeds: the assembly behind ``coldstart compare``.

ColdNAS: Wu et al., "Modulation Search for User Cold-Start Recommendation" (WWW 2023, arXiv
2306.03387). ``compare(config)`` loads each seed's split, fits the baselines, fixed FiLM,
MeLU-MAML and ColdNAS (search + retrain, K chosen on validation users), scores them on the test
users and returns the mean ± std table and the paired bootstrap of ColdNAS against each method.
The ColdNAS-family models it trains are exported (``<out>/seed<s>/<coldnas|film>/model``) with
their raw id maps and item display metadata, so ``coldstart evaluate``, ``load_recommender`` and
the serving layer load them. The settings helpers (presets with overrides, the split with
optional item-id fields, the metadata written next to a model) are shared with the CLI's
``search`` and ``train``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.coldstart.catalog import ItemInfo
from warmstart.coldstart.evaluate import (
    aggregate_seeds,
    evaluate_per_user,
    format_table,
    paired_table,
    report_of,
)
from warmstart.coldstart.model import ColdNAS
from warmstart.coldstart.training import (
    PRESETS,
    TRAIN_EPISODES,
    ColdNASPredictor,
    FitResult,
    FixedStructurePredictor,
    Preset,
    TrainConfig,
    export,
    gates_table,
)
from warmstart.data.types import EpisodeSplit
from warmstart.metrics import COLDSTART_KEYS
from warmstart.provenance import git_sha

DATASETS = ("lastfm-coldnas", "movielens-1m", "movielens-100k", "lastfm-2k", "synthetic")
PROTOCOLS = ("melu", "tanp")
Log = Callable[[str], None]


@dataclass(frozen=True)
class CompareConfig:
    """One comparison (or, with one seed, the settings of a ``search``/``train`` run).

    Attributes:
        dataset: one of ``DATASETS`` (``synthetic`` needs no data directory).
        data_dir / cache_dir: where the datasets / parsed caches live (cache None: no cache).
        protocol: episode preset for datasets other than the official Last.fm tasks.
        seeds: one run per seed (split seed for MovieLens, init and order everywhere).
        out: checkpoints and exported models go under ``out/seed<s>/``.
        preset: ``PRESETS`` key; ``epochs``, ``lr``, ``batch_size``, ``weight_decay``,
            ``episodes`` override its training settings when not None.
        search_weight_decay: the supernet's L2 penalty (None: ``ColdNASPredictor``'s default 0).
        item_prior / item_ids: smoothed-popularity prior logit / one-hot item id field.
        k: K values for ColdNAS (None: the preset's).
        skip: method names left out.
        progress: show progress bars.
    """

    dataset: str = "lastfm-coldnas"
    data_dir: Path = Path("data")
    cache_dir: Path | None = None
    protocol: str = "melu"
    seeds: tuple[int, ...] = (0, 1, 2)
    out: Path = Path("runs/coldnas")
    preset: str = "paper"
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    search_weight_decay: float | None = None
    episodes: str | None = None
    item_prior: bool = False
    item_ids: bool = False
    k: tuple[int, ...] | None = None
    skip: tuple[str, ...] = ()
    progress: bool = False

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("dataset", self.dataset, DATASETS),
            ("protocol", self.protocol, PROTOCOLS),
            ("preset", self.preset, tuple(sorted(PRESETS))),
        ):
            if value not in allowed:
                raise ValueError(f"CompareConfig.{name}={value!r}, allowed {allowed}")
        if self.episodes is not None and self.episodes not in TRAIN_EPISODES:
            raise ValueError(f"CompareConfig.episodes={self.episodes!r}, allowed {TRAIN_EPISODES}")
        if not self.seeds:
            raise ValueError("CompareConfig.seeds: give at least one seed")
        if self.k is not None and (not self.k or min(self.k) < 1):
            raise ValueError(f"CompareConfig.k must be positive integers, got {self.k}")
        # the training overrides are checked by TrainConfig itself (names the field)
        self.preset_for(self.seeds[0])
        if self.search_weight_decay is not None and self.search_weight_decay < 0:
            raise ValueError(
                f"CompareConfig.search_weight_decay must be >= 0, got {self.search_weight_decay}"
            )

    def preset_for(self, seed: int) -> Preset:
        """The preset with this run's overrides and ``seed``."""
        base = PRESETS[self.preset]
        overrides: dict[str, Any] = {"seed": seed}
        for name, value in (
            ("epochs", self.epochs),
            ("lr", self.lr),
            ("batch_size", self.batch_size),
            ("weight_decay", self.weight_decay),
            ("train_episodes", self.episodes),
        ):
            if value is not None:
                overrides[name] = value
        model = replace(base.model, item_prior=True) if self.item_prior else base.model
        k_values = tuple(self.k) if self.k else base.k_values
        return Preset(model, replace(base.train, **overrides), k_values)

    def search_config(self, preset: Preset) -> TrainConfig | None:
        """The supernet's settings when ``search_weight_decay`` is given: the preset's with that
        L2 penalty; None leaves the default to ``ColdNASPredictor`` (the preset's without L2)."""
        wd = self.search_weight_decay
        return None if wd is None else replace(preset.train, weight_decay=wd)


def with_item_ids(split: EpisodeSplit) -> EpisodeSplit:
    """The same episodes over a dataset whose item table also has a one-hot ``id`` field."""
    dataset = replace(split.dataset, items=split.dataset.items.with_id_field())
    return replace(split, dataset=dataset, meta={**split.meta, "item_ids": True})


def load_split(
    dataset: str,
    seed: int,
    protocol: str = "melu",
    data_dir: Path = Path("data"),
    cache_dir: Path | None = None,
    item_ids: bool = False,
) -> EpisodeSplit:
    """The episodes of ``dataset`` for ``seed`` (with a one-hot item id field if ``item_ids``)."""
    if dataset == "synthetic":
        from warmstart.data.synthetic import synthetic_split

        split = synthetic_split(seed=seed)
    else:
        from warmstart.data import coldstart_split

        split = coldstart_split(dataset, data_dir, seed, protocol, cache_dir=cache_dir)
    return with_item_ids(split) if item_ids else split


def model_meta(config: CompareConfig, seed: int, preset: Preset) -> dict[str, Any]:
    """What is written next to every exported model besides the architecture and structure."""
    return {
        "dataset": config.dataset,
        "protocol": config.protocol,
        "seed": seed,
        "git_sha": git_sha(),
        "preset": config.preset,
        "item_ids": config.item_ids,
        "train": asdict(preset.train),
    }


def item_info_of(dataset: str, data_dir: Path, split: EpisodeSplit) -> ItemInfo | None:
    """Display metadata (title, year, genres) of the split's item rows, if the dataset has it."""
    from warmstart.data.display import item_display

    display = item_display(dataset, data_dir)
    if display is None:
        return None
    columns, by_id = display
    return ItemInfo.aligned(split.dataset.items.ids.tolist(), by_id, columns)


def export_model(
    directory: Path, model: ColdNAS, split: EpisodeSplit, config: CompareConfig, meta: dict
) -> None:
    """Export ``model`` trained on ``split`` with its id maps and the dataset's display info."""
    info = item_info_of(config.dataset, config.data_dir, split)
    export(directory, model, split.dataset.users, split.dataset.items, meta, item_info=info)


def supernet_line(search: FitResult) -> str:
    """The supernet's own validation MSE: a supernet that never left the trivial solution
    (e.g. max/min clamps collapsed under weight decay) gives meaningless gates."""
    return f"supernet: best valid MSE {search.best_valid_mse:.4f} at epoch {search.best_epoch}"


def methods(config: CompareConfig, seed: int, split: EpisodeSplit, log: Log) -> list[Any]:
    """Every method of the comparison for one seed, in table order (``config.skip`` removed)."""
    from warmstart.coldstart.baselines import default_baselines

    preset = config.preset_for(seed)
    binary = tuple(split.dataset.rating_range) == (0.0, 1.0)
    out = config.out / f"seed{seed}"
    found: list[Any] = list(default_baselines(binary, seed=seed))
    found.append(
        FixedStructurePredictor(None, preset.model, preset.train, out / "film", config.progress)
    )
    try:
        from warmstart.coldstart.maml import MAMLConfig, MeLUMAML
    except ImportError:
        log("note: warmstart.coldstart.maml.MeLUMAML not available; skipping MeLU-MAML")
    else:
        cfg = MAMLConfig.tiny(seed) if config.preset == "tiny" else MAMLConfig(seed=seed)
        found.append(MeLUMAML(cfg))
    found.append(
        ColdNASPredictor(
            preset.model,
            preset.train,
            preset.k_values,
            out / "coldnas",
            config.progress,
            search_config=config.search_config(preset),
        )
    )
    return [m for m in found if m.name not in set(config.skip)]


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


@dataclass
class CompareResult:
    """What :func:`compare` measured.

    Attributes:
        per_seed: seed index -> method -> metrics (plus ``fit_s``).
        per_user: method -> per seed ``(U_s, 4)`` per-user test metrics (``COLDSTART_KEYS``).
        test_users: per seed, the dense test users in scoring order.
        structures: per seed, the structure ColdNAS selected, its gates and candidates.
        table / paired_text / paired: the printed table, the paired bootstrap text and numbers.
        models: per seed, method name -> exported model folder.
    """

    config: CompareConfig
    per_seed: list[dict[str, dict[str, float]]]
    per_user: dict[str, list[np.ndarray]]
    test_users: list[list[int]]
    structures: list[dict[str, Any]]
    table: str
    paired_text: str
    paired: dict[str, Any]
    models: list[dict[str, str]] = field(default_factory=list)

    @property
    def heading(self) -> str:
        what = "official tasks" if self.config.dataset == "lastfm-coldnas" else self.config.protocol
        return f"{self.config.dataset} ({what}), test users, seeds {list(self.config.seeds)}"

    def report(self) -> dict[str, Any]:
        """The JSON report (``compare.json``)."""
        return {
            "dataset": self.config.dataset,
            "protocol": self.config.protocol,
            "seeds": list(self.config.seeds),
            "git_sha": git_sha(),
            "per_seed": self.per_seed,
            "structures": self.structures,
            "table": self.table,
            "paired_vs_coldnas": self.paired,
            "test_users": self.test_users,
            "per_user_columns": list(COLDSTART_KEYS),
            "per_user": {n: [a.tolist() for a in arrays] for n, arrays in self.per_user.items()},
            "models": self.models,
        }


def _structure_record(seed: int, method: ColdNASPredictor) -> dict[str, Any]:
    outcome = method.outcome
    assert outcome is not None
    return {
        "seed": seed,
        "k": outcome.k,
        "structure": str(outcome.structure),
        "gates": outcome.gates.tolist(),
        "candidates": outcome.candidates,
        "supernet_valid_mse": outcome.search.best_valid_mse,
        "supernet_best_epoch": outcome.search.best_epoch,
    }


def _export_fitted(
    method: Any, config: CompareConfig, seed: int, split: EpisodeSplit
) -> tuple[str, Path] | None:
    """Export a fitted ColdNAS-family method next to its checkpoints; None for the others."""
    preset = config.preset_for(seed)
    meta = model_meta(config, seed, preset)
    if isinstance(method, ColdNASPredictor) and method.outcome is not None:
        model, folder = method.outcome.model, "coldnas"
        meta |= {
            "method": method.name,
            "search_train": asdict(method.search_config),
            "k": method.outcome.k,
            "gates": method.outcome.gates.tolist(),
            "candidates": method.outcome.candidates,
        }
    elif isinstance(method, FixedStructurePredictor) and method.model is not None:
        model, folder = method.model, "film"
        meta |= {"method": method.name}
    else:
        return None
    directory = config.out / f"seed{seed}" / folder / "model"
    export_model(directory, model, split, config, meta)
    return method.name, directory


def compare(config: CompareConfig, log: Log | None = None) -> CompareResult:
    """Fit and score every method on every seed (see the module docstring).

    Args:
        config: what to compare.
        log: called with one progress line per fitted method (None: silent).
    """
    say: Log = log or (lambda _line: None)
    per_seed: list[dict[str, dict[str, float]]] = []
    per_user: dict[str, list[np.ndarray]] = {}
    test_users: list[list[int]] = []
    structures: list[dict[str, Any]] = []
    models: list[dict[str, str]] = []
    for seed in config.seeds:
        split = load_split(
            config.dataset,
            seed,
            config.protocol,
            config.data_dir,
            config.cache_dir,
            config.item_ids,
        )
        test_users.append([int(t.user) for t in split.test])
        results: dict[str, dict[str, float]] = {}
        exported: dict[str, str] = {}
        for method in methods(config, seed, split, say):
            start = time.perf_counter()
            method.fit(split)
            scores = evaluate_per_user(method, split.test)
            per_user.setdefault(method.name, []).append(scores)
            results[method.name] = {**report_of(scores), "fit_s": time.perf_counter() - start}
            r = results[method.name]
            say(f"seed {seed} {method.name}: MSE {r['MSE']:.4f} ({r['fit_s']:.0f}s)")
            if isinstance(method, ColdNASPredictor) and method.outcome is not None:
                structures.append(_structure_record(seed, method))
                say(f"  {supernet_line(method.outcome.search)}")
                say("  gates:\n" + gates_table(method.outcome.gates))
                say(f"  selected K={method.outcome.k}: {method.outcome.structure}")
            done = _export_fitted(method, config, seed, split)
            if done is not None:
                exported[done[0]] = str(done[1])
        per_seed.append(results)
        models.append(exported)
    table, paired_text, paired = compare_tables(per_seed, per_user, test_users)
    return CompareResult(
        config, per_seed, per_user, test_users, structures, table, paired_text, paired, models
    )
