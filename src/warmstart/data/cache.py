"""A binary cache of parsed datasets: Parquet for interactions, npz + JSON for feature tables.

Text parsing of ML-1M takes about a second; reading the cached form takes a small fraction of it.
An entry is keyed by the loader name and version and by the path, size and modification time of
every source file, so editing or replacing a file makes a fresh entry. Entries are written to a
temporary folder and renamed into place, so an interrupted write never leaves a half entry.
Nothing is ever written beside the data; the cache folder is always passed in by the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from warmstart.data.types import FeatureField, FeatureTable, RecDataset

CACHE_FORMAT = 1
"""Bump when the on-disk layout below changes."""


def cache_key(loader: str, version: int, files: Sequence[Path]) -> str:
    """Hex digest over the loader identity and each file's resolved path, size and mtime."""
    stats = []
    for f in files:
        st = f.stat()
        stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    payload = json.dumps([loader, version, CACHE_FORMAT, stats])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cached_dataset(
    cache_dir: Path | None,
    loader: str,
    version: int,
    files: Sequence[Path],
    build: Callable[[], RecDataset],
) -> RecDataset:
    """Return the cached dataset for ``files`` or build, store and return it.

    Args:
        cache_dir: cache root; None disables caching.
        loader / version: identity of the parsing code (a new version invalidates old entries).
        files: every source file the loader reads.
        build: parses the source files.
    """
    if cache_dir is None:
        return build()
    entry = cache_dir / f"{loader}-{cache_key(loader, version, files)}"
    if (entry / "meta.json").is_file():
        return read_entry(entry)
    dataset = build()
    write_entry(dataset, entry)
    return dataset


def write_entry(dataset: RecDataset, entry: Path) -> None:
    """Write ``dataset`` to the folder ``entry`` atomically (temp folder + rename)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        dataset.interactions.to_parquet(tmp / "interactions.parquet", index=False)
        arrays: dict[str, np.ndarray] = {}
        meta = {
            "name": dataset.name,
            "rating_range": list(dataset.rating_range),
            "users": _table_meta(dataset.users, "users", arrays),
            "items": _table_meta(dataset.items, "items", arrays),
        }
        savez: Any = np.savez  # numpy's stub mistypes **arrays as allow_pickle
        savez(tmp / "features.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, entry)
    except OSError:
        if entry.is_dir():  # another process won the race; its entry is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _table_meta(table: FeatureTable, prefix: str, arrays: dict[str, np.ndarray]) -> list[dict]:
    arrays[f"{prefix}.ids"] = np.asarray(table.ids)
    fields = []
    for i, f in enumerate(table.fields):
        arrays[f"{prefix}.{i}"] = f.index
        vocab = list(f.vocabulary) if f.vocabulary is not None else None
        fields.append({"name": f.name, "cardinality": f.cardinality, "vocabulary": vocab})
    return fields


def read_entry(entry: Path) -> RecDataset:
    """Load a dataset written by ``write_entry`` (no pickle involved)."""
    meta = json.loads((entry / "meta.json").read_text())
    interactions = pd.read_parquet(entry / "interactions.parquet")
    with np.load(entry / "features.npz", allow_pickle=False) as arrays:
        users = _table(meta["users"], "users", arrays)
        items = _table(meta["items"], "items", arrays)
    low, high = meta["rating_range"]
    return RecDataset(meta["name"], interactions, users, items, (float(low), float(high)))


def _table(fields: list[dict], prefix: str, arrays: np.lib.npyio.NpzFile) -> FeatureTable:
    built = tuple(
        FeatureField(
            f["name"],
            f["cardinality"],
            arrays[f"{prefix}.{i}"],
            tuple(f["vocabulary"]) if f["vocabulary"] is not None else None,
        )
        for i, f in enumerate(fields)
    )
    return FeatureTable(arrays[f"{prefix}.ids"], built)
