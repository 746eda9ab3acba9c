"""Counts per dataset, as printed by ``warmstart data summary`` (compare with the data README)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from warmstart.data.episodes import load_official_lastfm
from warmstart.data.retrieval import load_scifact
from warmstart.data.types import RecDataset

SUMMARY_NAMES = ("movielens-1m", "movielens-100k", "lastfm-2k", "lastfm-coldnas", "scifact")

Counts = dict[str, int | str]


def _rec_counts(ds: RecDataset) -> Counts:
    if ds.name == "lastfm-2k":
        return {
            "user-artist rows": len(ds.interactions),
            "users": ds.n_users,
            "artists": ds.n_items,
        }
    return {"ratings": len(ds.interactions), "users": ds.n_users, "items": ds.n_items}


def _span(sizes: list[int]) -> str:
    low, high = min(sizes), max(sizes)
    return str(low) if low == high else f"{low}..{high}"


def _per_split(values: list[int]) -> str:
    return "/".join(f"{v:,}" for v in values)


def lastfm_coldnas_counts(data_dir: Path) -> Counts:
    """Interactions, tasks, support/query sizes and users per split of the official benchmark."""
    split = load_official_lastfm(data_dir)
    tasks = split.train + split.valid + split.test
    users = [split.train_users, split.valid_users, split.test_users]
    return {
        "interactions": len(split.dataset.interactions),
        "users": split.dataset.n_users,
        "items": split.dataset.n_items,
        "tasks (train/valid/test)": _per_split(
            [len(split.train), len(split.valid), len(split.test)]
        ),
        "support size": _span([len(t.support_items) for t in tasks]),
        "query size": _span([len(t.query_items) for t in tasks]),
        "users (train/valid/test)": _per_split([len(u) for u in users]),
    }


def scifact_counts(data_dir: Path) -> Counts:
    coll = load_scifact(data_dir)
    out: Counts = {"docs": len(coll), "labelled queries": len(coll.queries)}
    for split in sorted(coll.qrels):
        pairs = sum(len(docs) for docs in coll.qrels[split].values())
        out[f"{split} queries (pairs)"] = f"{len(coll.qrels[split]):,} ({pairs:,})"
    out["unlabelled queries"] = len(coll.unlabeled_queries)
    return out


def dataset_counts(name: str, data_dir: Path, load: Callable[[str, Path], RecDataset]) -> Counts:
    """Counts of one dataset; ``load(name, data_dir)`` loads recommendation datasets."""
    if name == "scifact":
        return scifact_counts(data_dir)
    if name == "lastfm-coldnas":
        return lastfm_coldnas_counts(data_dir)
    return _rec_counts(load(name, data_dir))


def format_counts(name: str, counts: Counts) -> str:
    """``name: key value, ...`` with thousands separators."""
    parts = [
        f"{k} {v:,}" if isinstance(v, int | np.integer) else f"{k} {v}" for k, v in counts.items()
    ]
    return f"{name}: " + ", ".join(parts)
