"""Last.fm loaders: the TaNP/ColdNAS cold-start benchmark and HetRec 2011 Last.fm.

- ``lastfm-coldnas`` is the benchmark of TaNP (Lin et al., WWW 2021) reused by ColdNAS (Wu et al.,
  WWW 2023): implicit 0/1 feedback with sampled negatives, an official user split and official
  episodes (support 20, query 10..36).
- ``lastfm-2k`` is HetRec 2011 (Cantador et al., RecSys 2011): ``user_artists.dat`` with listening
  counts. The label is ``log10(1 + weight)``: raw counts span 1..352,698, so the log keeps an MSE
  loss from being dominated by a handful of heavy listeners.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from warmstart.data.parsing import (
    Column,
    check_header,
    iter_jsonl,
    json_field,
    read_delimited,
    read_header,
    read_text,
)
from warmstart.data.types import FeatureTable, RecDataset, Task

SPLITS = ("train", "valid", "test")
COLDNAS_COLUMNS = (Column("user"), Column("item"), Column("label", "float"))
HETREC_COLUMNS = (Column("user"), Column("item"), Column("weight", "float"))


def dense_index(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions of ``values`` in the sorted id array ``ids`` (all values must be present)."""
    return np.searchsorted(ids, values).astype(np.int64)


def load_lastfm_coldnas(root: Path) -> RecDataset:
    """Read ``interactions.tsv`` (``user item label``) and ``user_split.json`` of the benchmark.

    Users are every id of the split file (each must have interactions); items are every item id
    of ``interactions.tsv``. Both get one-hot ``id`` features, as in TaNP/ColdNAS.
    """
    path = root / "interactions.tsv"
    table = read_delimited(path, COLDNAS_COLUMNS, sep="\t", header=False)
    bad = ~np.isin(table["label"].to_numpy(), (0.0, 1.0))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{path}: line {row + 1}: field 'label' must be 0 or 1, got {table['label'].iloc[row]}"
        )
    split = read_user_split(root / "user_split.json")
    user_ids = np.unique(np.concatenate([*split.values(), table["user"].to_numpy()]))
    missing = np.setdiff1d(user_ids, table["user"].to_numpy())
    if missing.size:
        raise ValueError(
            f"{root / 'user_split.json'}: user {int(missing[0])} has no rows in {path.name}"
        )
    item_ids = np.unique(table["item"].to_numpy())
    interactions = pd.DataFrame(
        {
            "user": dense_index(user_ids, table["user"].to_numpy()),
            "item": dense_index(item_ids, table["item"].to_numpy()),
            "label": table["label"].to_numpy(np.float32),
        }
    )
    return RecDataset(
        "lastfm-coldnas",
        interactions,
        FeatureTable.one_hot_ids(user_ids),
        FeatureTable.one_hot_ids(item_ids),
        (0.0, 1.0),
    )


def read_user_split(path: Path) -> dict[str, np.ndarray]:
    """``{"train"|"valid"|"test": (n,) int64 original user ids}``; splits must be disjoint."""
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(raw, dict) or set(raw) != set(SPLITS):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: expected an object with keys {list(SPLITS)}, got {found}")
    out: dict[str, np.ndarray] = {}
    for name in SPLITS:
        values = raw[name]
        if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(f"{path}: field {name!r} must be a list of integer user ids")
        out[name] = np.asarray(sorted(values), dtype=np.int64)
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        both = np.intersect1d(out[a], out[b])
        if both.size:
            raise ValueError(f"{path}: user {int(both[0])} is in both {a!r} and {b!r}")
    return out


def load_coldnas_tasks(
    root: Path, dataset: RecDataset
) -> tuple[dict[str, list[Task]], list[np.ndarray]]:
    """Read ``tasks.jsonl`` into tasks per split, checked against the dataset and user split.

    Every task's user must belong to the split it names, and every ``[item, label]`` pair must be
    a row of ``interactions.tsv`` with the same label.

    Returns:
        ``({"train": [...], "valid": [...], "test": [...]}, [train, valid, test dense user ids])``.
    """
    path = root / "tasks.jsonl"
    split = read_user_split(root / "user_split.json")
    user_ids, item_ids = dataset.users.ids, dataset.items.ids
    member = {name: set(split[name].tolist()) for name in SPLITS}
    known = _pair_labels(dataset)
    tasks: dict[str, list[Task]] = {name: [] for name in SPLITS}
    for lineno, obj in iter_jsonl(path):
        name = json_field(path, lineno, obj, "split", str)
        if name not in SPLITS:
            raise ValueError(
                f"{path}: line {lineno}: field 'split' must be one of {SPLITS}, got {name!r}"
            )
        user = json_field(path, lineno, obj, "user", int)
        if user not in member[name]:
            raise ValueError(
                f"{path}: line {lineno}: field 'user': user {user} is not a {name!r} user "
                f"in user_split.json"
            )
        parts = [_pairs(path, lineno, obj, key, user, known) for key in ("support", "query")]
        (s_items, s_labels), (q_items, q_labels) = parts
        u = int(dense_index(user_ids, np.array([user]))[0])
        tasks[name].append(
            Task(
                u,
                dense_index(item_ids, s_items),
                s_labels,
                dense_index(item_ids, q_items),
                q_labels,
            )
        )
    users = [dense_index(user_ids, split[name]) for name in SPLITS]
    return tasks, users


def _pair_labels(dataset: RecDataset) -> dict[tuple[int, int], float]:
    """``(original user id, original item id) -> label`` for every interaction."""
    inter = dataset.interactions
    users = dataset.users.ids[inter["user"].to_numpy()].tolist()
    items = dataset.items.ids[inter["item"].to_numpy()].tolist()
    return dict(zip(zip(users, items, strict=True), inter["label"].tolist(), strict=True))


def _pairs(
    path: Path, lineno: int, obj: dict, key: str, user: int, known: dict[tuple[int, int], float]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one ``[[item, label], ...]`` list; returns original item ids and labels."""
    pairs = json_field(path, lineno, obj, key, list)
    if not pairs:
        raise ValueError(f"{path}: line {lineno}: field {key!r} is empty")
    items, labels = [], []
    for j, pair in enumerate(pairs):
        ok = isinstance(pair, list) and len(pair) == 2
        if not ok or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair):
            raise ValueError(
                f"{path}: line {lineno}: field {key!r}[{j}] must be [item, label], got {pair!r}"
            )
        item, label = int(pair[0]), float(pair[1])
        if (user, item) not in known:
            raise ValueError(
                f"{path}: line {lineno}: field {key!r}[{j}]: item {item} of user {user} "
                f"is not in interactions.tsv"
            )
        if known[(user, item)] != label:
            raise ValueError(
                f"{path}: line {lineno}: field {key!r}[{j}]: label {label} differs from "
                f"interactions.tsv ({known[(user, item)]})"
            )
        items.append(item)
        labels.append(label)
    return np.asarray(items, dtype=np.int64), np.asarray(labels, dtype=np.float32)


def load_lastfm_hetrec(root: Path) -> RecDataset:
    """Read HetRec 2011 ``user_artists.dat``; label = ``log10(1 + weight)``, one-hot id features."""
    path = root / "user_artists.dat"
    check_header(path, read_header(path, "\t"), [("userID", "artistID", "weight")])
    table = read_delimited(path, HETREC_COLUMNS, sep="\t", header=True)
    weight = table["weight"].to_numpy()
    if (weight < 0).any():
        row = int(np.argmax(weight < 0))
        raise ValueError(f"{path}: line {row + 2}: field 'weight' must be >= 0, got {weight[row]}")
    user_ids = np.unique(table["user"].to_numpy())
    item_ids = np.unique(table["item"].to_numpy())
    labels = np.log10(1.0 + weight).astype(np.float32)
    interactions = pd.DataFrame(
        {
            "user": dense_index(user_ids, table["user"].to_numpy()),
            "item": dense_index(item_ids, table["item"].to_numpy()),
            "label": labels,
        }
    )
    return RecDataset(
        "lastfm-2k",
        interactions,
        FeatureTable.one_hot_ids(user_ids),
        FeatureTable.one_hot_ids(item_ids),
        (0.0, float(labels.max())),
    )
