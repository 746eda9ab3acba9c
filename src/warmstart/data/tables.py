"""From raw rating rows and raw side features (original ids) to a dense-index ``RecDataset``.

Also the bring-your-own-data loader: an interactions table (CSV or Parquet) with columns
``user_id,item_id,rating[,timestamp]`` and optional user/item feature tables whose first column is
the id and whose other columns are categorical, or multi-hot when values hold ``|``-separated lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from warmstart.data.features import categorical_field, multi_hot_field, split_list
from warmstart.data.parsing import Column, Kind, read_delimited, read_header, require_file
from warmstart.data.types import FeatureField, FeatureTable, RecDataset


@dataclass(frozen=True)
class RawFeatures:
    """Side features keyed by original id, before restriction to the ids that have ratings.

    Attributes:
        ids: ``(N,)`` original ids, unique.
        categorical: field name → ``N`` string values.
        multi_hot: field name → ``N`` lists of string values.
        source: the file they came from (named in errors).
    """

    ids: np.ndarray
    categorical: dict[str, list[str]] = field(default_factory=dict)
    multi_hot: dict[str, list[list[str]]] = field(default_factory=dict)
    source: Path | None = None

    def table(self, ids: np.ndarray) -> FeatureTable:
        """Feature table for ``ids`` (each must be in ``self.ids``), rows in ``ids`` order."""
        if not self.categorical and not self.multi_hot:
            return FeatureTable.one_hot_ids(ids)
        order = np.argsort(self.ids, kind="stable")
        rows = order[np.searchsorted(self.ids[order], ids)]
        fields: list[FeatureField] = [
            categorical_field(name, [values[r] for r in rows])
            for name, values in self.categorical.items()
        ]
        fields += [
            multi_hot_field(name, [lists[r] for r in rows])
            for name, lists in self.multi_hot.items()
        ]
        return FeatureTable(ids, tuple(fields))


def check_known(
    path: Path,
    column: str,
    values: np.ndarray,
    known: np.ndarray,
    known_source: Path | str,
    first_line: int,
) -> None:
    """Raise naming the first line of ``path`` whose ``column`` value is not in ``known``."""
    missing = ~np.isin(values, known)
    if missing.any():
        row = int(np.argmax(missing))
        raise ValueError(
            f"{path}: line {first_line + row}: field {column!r}: id {values[row]} is not in {known_source}"
        )


def assemble(
    name: str,
    ratings: pd.DataFrame,
    *,
    source: Path,
    first_line: int,
    rating_range: tuple[float, float],
    users: RawFeatures | None = None,
    items: RawFeatures | None = None,
) -> RecDataset:
    """Turn rating rows with original ids into a ``RecDataset``.

    Args:
        name: dataset name.
        ratings: columns ``user``, ``item``, ``label`` (+ optional ``timestamp``), file order.
        source: the ratings file, and ``first_line`` the line number of its first row (for errors).
        rating_range: labels must lie in it.
        users / items: side features; None = one-hot ids. Every rated id must have features.

    Raises:
        ValueError: a label out of range, a duplicate (user, item) pair, an id without features.
    """
    if len(ratings) == 0:
        raise ValueError(f"{source}: no rating rows")
    label = ratings["label"].to_numpy(np.float64)
    low, high = rating_range
    outside = (label < low) | (label > high)
    if outside.any():
        row = int(np.argmax(outside))
        raise ValueError(
            f"{source}: line {first_line + row}: field 'rating' must be in [{low}, {high}], got {label[row]}"
        )
    dup = ratings.duplicated(["user", "item"]).to_numpy()
    if dup.any():
        row = int(np.argmax(dup))
        raise ValueError(
            f"{source}: line {first_line + row}: duplicate rating of item {ratings['item'].iloc[row]} "
            f"by user {ratings['user'].iloc[row]}"
        )
    tables = []
    for column, raw in (("user", users), ("item", items)):
        values = ratings[column].to_numpy()
        ids = np.unique(values)
        if raw is not None:
            check_known(
                source, column, values, raw.ids, raw.source or "the feature table", first_line
            )
        tables.append(raw.table(ids) if raw is not None else FeatureTable.one_hot_ids(ids))
    frame = {
        "user": np.searchsorted(tables[0].ids, ratings["user"].to_numpy()).astype(np.int64),
        "item": np.searchsorted(tables[1].ids, ratings["item"].to_numpy()).astype(np.int64),
        "label": label.astype(np.float32),
    }
    if "timestamp" in ratings:
        frame["timestamp"] = ratings["timestamp"].to_numpy(np.int64)
    return RecDataset(name, pd.DataFrame(frame), tables[0], tables[1], rating_range)


INTERACTION_HEADERS = (
    ("user_id", "item_id", "rating"),
    ("user_id", "item_id", "rating", "timestamp"),
)


def read_interactions(path: Path) -> pd.DataFrame:
    """Read a generic interactions table (CSV with header, or Parquet) into original-id columns.

    Returns:
        DataFrame ``user``, ``item`` (int64 or str ids), ``label`` (float64) [, ``timestamp``].
    """
    require_file(path, "interactions table")
    if path.suffix == ".parquet":
        return _from_frame(path, pd.read_parquet(path))
    header = read_header(path, ",")
    if tuple(header) not in INTERACTION_HEADERS:
        raise ValueError(
            f"{path}: line 1: header must be user_id,item_id,rating[,timestamp], got {','.join(header)!r}"
        )
    id_kind: Kind = "int" if _ids_are_ints(path) else "str"
    # read under the file's own column names, so errors say `rating`, not `label`
    columns = [Column("user_id", id_kind), Column("item_id", id_kind), Column("rating", "float")]
    if len(header) == 4:
        columns.append(Column("timestamp", "int"))
    frame = read_delimited(path, columns, sep=",", header=True, quoting=0)
    return frame.rename(columns={"user_id": "user", "item_id": "item", "rating": "label"})


def _ids_are_ints(path: Path) -> bool:
    sample = pd.read_csv(path, nrows=1000, usecols=[0, 1], dtype=str, keep_default_na=False)
    return bool(sample.apply(lambda s: s.str.fullmatch(r"-?\d+")).to_numpy().all())


def _from_frame(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Check a Parquet interactions frame: required columns, no missing or NaN values."""
    required = ["user_id", "item_id", "rating"]
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise ValueError(
            f"{path}: missing column(s) {absent}; need user_id,item_id,rating[,timestamp]"
        )
    names = {"user_id": "user", "item_id": "item", "rating": "label", "timestamp": "timestamp"}
    out = frame[[c for c in names if c in frame.columns]].rename(columns=names)
    for column in out.columns:
        bad = out[column].isna().to_numpy()
        if column == "label":
            values = pd.to_numeric(out[column], errors="coerce").to_numpy(np.float64)
            bad = bad | ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            field_name = {v: k for k, v in names.items()}[column]
            raise ValueError(
                f"{path}: row {row}: field {field_name!r} is missing or not a finite number"
            )
    return out.astype({"label": np.float64})


def read_feature_table(path: Path, list_sep: str = "|") -> RawFeatures:
    """A CSV (or Parquet) whose first column is the id and the others are features.

    A column is multi-hot when any of its values contains ``list_sep``; otherwise categorical
    (numbers are treated as category labels; bucket continuous values before loading).
    """
    require_file(path, "feature table")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path).astype(str)
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if frame.shape[1] < 2:
        raise ValueError(f"{path}: need an id column and at least one feature column")
    id_col = frame.columns[0]
    ids_text = frame[id_col].to_numpy(dtype=str)
    ids: np.ndarray = ids_text
    if all(t.lstrip("-").isdigit() for t in ids_text):
        ids = ids_text.astype(np.int64)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        row = int(np.argmax(dup))
        raise ValueError(f"{path}: line {row + 2}: field {id_col!r}: duplicate id {ids[row]!r}")
    raw = RawFeatures(ids, source=path)
    for column in frame.columns[1:]:
        values = frame[column].tolist()
        if any(list_sep in v for v in values):
            raw.multi_hot[column] = [split_list(v, list_sep) for v in values]
        else:
            raw.categorical[column] = values
    return raw


def load_table_dataset(
    interactions: Path,
    *,
    name: str = "custom",
    user_features: Path | None = None,
    item_features: Path | None = None,
    rating_range: tuple[float, float] | None = None,
) -> RecDataset:
    """Bring-your-own-data: a generic interactions table plus optional feature tables.

    Args:
        interactions: CSV with header ``user_id,item_id,rating[,timestamp]`` or Parquet with
            those columns.
        name: dataset name.
        user_features / item_features: optional feature tables (see ``read_feature_table``).
        rating_range: allowed label range; default: the observed ``(min, max)``.
    """
    ratings = read_interactions(interactions)
    if len(ratings) == 0:
        raise ValueError(f"{interactions}: no interaction rows")
    labels = ratings["label"].to_numpy()
    observed = (float(labels.min()), float(labels.max()))
    return assemble(
        name,
        ratings,
        source=interactions,
        first_line=2,
        rating_range=rating_range or observed,
        users=read_feature_table(user_features) if user_features else None,
        items=read_feature_table(item_features) if item_features else None,
    )


def feature_names(table: FeatureTable) -> Sequence[str]:
    """Names of a table's fields, in order."""
    return [f.name for f in table.fields]
