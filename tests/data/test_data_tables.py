"""Bring-your-own-data tables: CSV/Parquet interactions and feature tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from warmstart.data.episodes import EpisodeConfig, build_episodes
from warmstart.data.synthetic import synthetic_dataset
from warmstart.data.tables import load_table_dataset


def _write(tmp_path: Path, parquet: bool = False) -> Path:
    inter = synthetic_dataset(30, 25, interactions_per_user=(12, 20), seed=0).interactions
    frame = pd.DataFrame(
        {
            "user_id": "u" + inter["user"].astype(str),
            "item_id": "i" + inter["item"].astype(str),
            "rating": inter["label"],
            "timestamp": np.arange(len(inter)),
        }
    )
    path = tmp_path / ("inter.parquet" if parquet else "inter.csv")
    if parquet:
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def test_csv_with_string_ids_and_features(tmp_path: Path) -> None:
    path = _write(tmp_path)
    users = pd.DataFrame(
        {"user_id": [f"u{i}" for i in range(30)], "country": ["fr", "de", "us"] * 10}
    )
    items = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(25)], "tags": ["rock|pop", "jazz", "pop"] * 8 + ["x"]}
    )
    users.to_csv(tmp_path / "users.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    ds = load_table_dataset(
        path, user_features=tmp_path / "users.csv", item_features=tmp_path / "items.csv"
    )
    assert ds.n_users == 30 and ds.n_items == 25 and "timestamp" in ds.interactions
    assert ds.users.fields[0].name == "country" and not ds.users.fields[0].multi_hot
    assert ds.items.fields[0].name == "tags" and ds.items.fields[0].multi_hot
    assert ds.rating_range == (
        float(ds.interactions["label"].min()),
        float(ds.interactions["label"].max()),
    )
    assert build_episodes(ds, EpisodeConfig(min_interactions=11, max_interactions=30)).test


def test_parquet_matches_csv(tmp_path: Path) -> None:
    a = load_table_dataset(_write(tmp_path))
    b = load_table_dataset(_write(tmp_path, parquet=True))
    assert a.interactions.equals(b.interactions)


def test_csv_nan_rating(tmp_path: Path) -> None:
    path = _write(tmp_path)
    lines = path.read_text().splitlines()
    parts = lines[5].split(",")
    parts[2] = "NaN"
    lines[5] = ",".join(parts)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError, match=r"inter\.csv: line 6: field 'rating' is not a finite number"
    ):
        load_table_dataset(path)


def test_parquet_nan_rating(tmp_path: Path) -> None:
    path = _write(tmp_path, parquet=True)
    frame = pd.read_parquet(path)
    frame.loc[3, "rating"] = np.nan
    frame.to_parquet(path)
    with pytest.raises(ValueError, match=r"inter\.parquet: row 3: field 'rating'"):
        load_table_dataset(path)


def test_unknown_item_in_feature_table(tmp_path: Path) -> None:
    path = _write(tmp_path)
    pd.DataFrame({"item_id": ["i0", "i1"], "kind": ["a", "b"]}).to_csv(
        tmp_path / "items.csv", index=False
    )
    with pytest.raises(
        ValueError, match=r"inter\.csv: line \d+: field 'item': id i\d+ is not in .*items\.csv"
    ):
        load_table_dataset(path, item_features=tmp_path / "items.csv")


def test_bad_header_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("user,item,score\n1,2,3\n")
    with pytest.raises(ValueError, match=r"x\.csv: line 1: header must be user_id,item_id,rating"):
        load_table_dataset(path)
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_table_dataset(tmp_path / "nope.csv")


def test_with_id_field_adds_one_value_per_row() -> None:
    from warmstart.data.synthetic import synthetic_split
    from warmstart.data.types import FeatureField, FeatureTable

    table = FeatureTable(
        ids=np.array([10, 20, 30]),
        fields=(FeatureField("genre", 2, np.array([[0, 1], [1, -1], [0, -1]])),),
    )
    out = table.with_id_field()
    assert [f.name for f in out.fields] == ["genre", "id"]
    assert out.fields[1].cardinality == 3
    np.testing.assert_array_equal(out.fields[1].index[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(out.ids, table.ids)
    assert out.with_id_field() is out  # idempotent

    from warmstart.coldstart.compare import with_item_ids

    split = synthetic_split(seed=0)
    with_ids = with_item_ids(split)
    assert with_ids.test is split.test
    assert with_ids.dataset.items.fields[-1].name == "id"
    assert with_ids.meta["item_ids"] is True
