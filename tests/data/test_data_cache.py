"""The parsed-dataset cache: round trip, invalidation, and never writing beside the data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from warmstart.data import load_dataset
from warmstart.data.types import RecDataset


def _same(a: RecDataset, b: RecDataset) -> None:
    assert a.name == b.name and a.rating_range == b.rating_range
    assert a.interactions.equals(b.interactions)
    for ta, tb in ((a.users, b.users), (a.items, b.items)):
        assert np.array_equal(ta.ids, tb.ids)
        for fa, fb in zip(ta.fields, tb.fields, strict=True):
            assert (fa.name, fa.cardinality, fa.vocabulary) == (
                fb.name,
                fb.cardinality,
                fb.vocabulary,
            )
            assert np.array_equal(fa.index, fb.index)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_round_trip_and_no_write_beside_data(tiny_data_dir: Path, tmp_path: Path) -> None:
    before = _listing(tiny_data_dir)
    cache = tmp_path / "cache"
    for name in ("movielens-1m", "movielens-100k", "lastfm-2k", "lastfm-coldnas"):
        fresh = load_dataset(name, tiny_data_dir)
        first = load_dataset(name, tiny_data_dir, cache)
        second = load_dataset(name, tiny_data_dir, cache)
        _same(fresh, first)
        _same(fresh, second)
    assert len(list(cache.iterdir())) == 4
    assert _listing(tiny_data_dir) == before


def test_changed_file_invalidates(tiny_data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "movielens-100k", data / "movielens-100k")
    cache = tmp_path / "cache"
    a = load_dataset("movielens-100k", data, cache)
    path = data / "movielens-100k" / "u.data"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    b = load_dataset("movielens-100k", data, cache)
    assert len(b.interactions) == len(a.interactions) - 1
    assert len(list(cache.iterdir())) == 2
