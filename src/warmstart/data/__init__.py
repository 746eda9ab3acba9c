"""Datasets: loaders for the official formats, cold-start episodes, synthetic data, downloads.

Entry points:
    load_dataset(name, data_dir) -> RecDataset
    coldstart_split(name, data_dir, seed, protocol) -> EpisodeSplit
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from warmstart.data.cache import cached_dataset
from warmstart.data.episodes import EpisodeConfig, build_episodes, load_official_lastfm
from warmstart.data.lastfm import load_lastfm_coldnas, load_lastfm_hetrec
from warmstart.data.movielens import (
    load_movielens_1m,
    load_movielens_100k,
    ml1m_files,
    ml100k_files,
)
from warmstart.data.retrieval import RetrievalCollection, load_scifact
from warmstart.data.synthetic import synthetic_collection, synthetic_dataset, synthetic_split
from warmstart.data.tables import load_table_dataset
from warmstart.data.types import EpisodeSplit, FeatureField, FeatureTable, RecDataset, Task

LOADER_VERSION = 1
"""Bump when any loader's output changes, so cached parses are rebuilt."""


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its folder under the data directory, loader and source files."""

    folder: str
    load: Callable[[Path], RecDataset]
    files: Callable[[Path], list[Path]]


DATASETS: dict[str, DatasetSpec] = {
    "movielens-1m": DatasetSpec("movielens-1m", load_movielens_1m, ml1m_files),
    "movielens-100k": DatasetSpec("movielens-100k", load_movielens_100k, ml100k_files),
    "lastfm-2k": DatasetSpec(
        "lastfm-2k", load_lastfm_hetrec, lambda root: [root / "user_artists.dat"]
    ),
    "lastfm-coldnas": DatasetSpec(
        "lastfm-coldnas",
        load_lastfm_coldnas,
        lambda root: [root / "interactions.tsv", root / "user_split.json"],
    ),
}
PROTOCOLS = ("melu", "tanp")


def dataset_root(name: str, data_dir: Path) -> Path:
    """The folder of dataset ``name`` under ``data_dir``; errors name the allowed names."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    root = data_dir / DATASETS[name].folder
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: dataset folder not found (run `warmstart data fetch --data-dir {data_dir}`)"
        )
    return root


def load_dataset(name: str, data_dir: Path, cache_dir: Path | None = None) -> RecDataset:
    """Load a named dataset from ``<data_dir>/<name>/``.

    Args:
        name: one of ``DATASETS`` (movielens-1m, movielens-100k, lastfm-2k, lastfm-coldnas).
        data_dir: the data directory.
        cache_dir: where to keep parsed binary copies; None = parse every time.
    """
    root = dataset_root(name, data_dir)
    spec = DATASETS[name]
    files = spec.files(root)
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: file not found (part of dataset {name!r})")
    return cached_dataset(cache_dir, name, LOADER_VERSION, files, lambda: spec.load(root))


def coldstart_split(
    name: str,
    data_dir: Path,
    seed: int = 0,
    protocol: str = "melu",
    cache_dir: Path | None = None,
) -> EpisodeSplit:
    """Cold-start episodes of a named dataset.

    ``lastfm-coldnas`` gives the official TaNP/ColdNAS tasks (``seed`` and ``protocol`` ignored);
    other datasets are cut by ``build_episodes`` with ``EpisodeConfig.melu`` or ``.tanp``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if name == "lastfm-coldnas":
        return load_official_lastfm(dataset_root(name, data_dir))
    dataset = load_dataset(name, data_dir, cache_dir)
    config = EpisodeConfig.melu(seed) if protocol == "melu" else EpisodeConfig.tanp(seed)
    return build_episodes(dataset, config)


__all__ = [
    "DATASETS",
    "EpisodeConfig",
    "EpisodeSplit",
    "FeatureField",
    "FeatureTable",
    "RecDataset",
    "RetrievalCollection",
    "Task",
    "build_episodes",
    "coldstart_split",
    "dataset_root",
    "load_dataset",
    "load_official_lastfm",
    "load_scifact",
    "load_table_dataset",
    "synthetic_collection",
    "synthetic_dataset",
    "synthetic_split",
]
