"""Saving and loading trained ColdNAS models: safetensors weights + JSON config.

A model directory holds ``config.json`` (architecture, structure, seed, git SHA, anything the
trainer records), ``model.safetensors`` (weights), ``features.safetensors`` (the user/item
feature index matrices), ``ids.json`` (the raw user and item ids of every dense row, int or str)
and, when the dataset has them, ``items.json`` (item titles, years, genres for display), so a
model can be loaded and served without the dataset or the trainer. Nothing here is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from warmstart.coldstart.catalog import IdMap, ItemInfo
from warmstart.coldstart.model import ColdNAS, ColdNASConfig, TableLike
from warmstart.coldstart.structure import Structure

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FEATURES_FILE = "features.safetensors"
IDS_FILE = "ids.json"
ITEM_INFO_FILE = "items.json"


@dataclass(frozen=True)
class StoredField:
    """A feature field read back from ``features.safetensors`` (no data-package import needed)."""

    name: str
    cardinality: int
    index: np.ndarray


@dataclass(frozen=True)
class StoredTable:
    """A feature table read back from ``features.safetensors``."""

    ids: np.ndarray
    fields: tuple[StoredField, ...]

    def __len__(self) -> int:
        return len(self.ids)


def state_to_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of a module's state (safe to keep as a 'best' snapshot)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}


def _table_tensors(
    prefix: str, table: TableLike
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors, fields = {}, []
    for f in table.fields:
        tensors[f"{prefix}.{f.name}"] = torch.as_tensor(
            np.ascontiguousarray(f.index), dtype=torch.int64
        )
        fields.append({"name": f.name, "cardinality": f.cardinality})
    ids = np.asarray(getattr(table, "ids", []))
    if ids.size and np.issubdtype(ids.dtype, np.integer):
        tensors[f"{prefix}.__ids__"] = torch.as_tensor(ids.astype(np.int64))
    return tensors, fields


def _table_from(
    prefix: str, fields: list[dict[str, Any]], tensors: dict[str, torch.Tensor]
) -> StoredTable:
    built = tuple(
        StoredField(f["name"], int(f["cardinality"]), tensors[f"{prefix}.{f['name']}"].numpy())
        for f in fields
    )
    n = built[0].index.shape[0] if built else 0
    ids_key = f"{prefix}.__ids__"
    ids = tensors[ids_key].numpy() if ids_key in tensors else np.arange(n)
    return StoredTable(ids=ids, fields=built)


def id_maps_of(users: TableLike, items: TableLike) -> tuple[IdMap, IdMap]:
    """The raw-id maps of two feature tables (their ``ids``; rows ``0..N-1`` when absent)."""

    def one(table: TableLike, entity: str) -> IdMap:
        ids = getattr(table, "ids", None)
        n = int(table.fields[0].index.shape[0]) if table.fields else 0
        return IdMap(range(n) if ids is None else np.asarray(ids).tolist(), entity)

    return one(users, "user"), one(items, "item")


def save_model(
    directory: Path,
    model: ColdNAS,
    users: TableLike,
    items: TableLike,
    meta: dict[str, Any],
    item_info: ItemInfo | None = None,
) -> None:
    """Write ``model`` (fixed structure) with its feature tables and ``meta`` into ``directory``.

    The tables' raw ids go to ``ids.json``; ``item_info`` (one row per item) to ``items.json``.
    """
    if model.searching:
        raise ValueError("save_model: save a derived (fixed-structure) model, not the supernet")
    user_ids, item_ids = id_maps_of(users, items)
    if item_info is not None and len(item_info) != len(item_ids):
        raise ValueError(
            f"save_model: item_info has {len(item_info)} rows, the item table {len(item_ids)}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    ids = {"users": user_ids.to_json(), "items": item_ids.to_json()}
    (directory / IDS_FILE).write_text(json.dumps(ids))
    info_path = directory / ITEM_INFO_FILE
    if item_info is not None:
        info_path.write_text(json.dumps(item_info.to_json()))
    elif info_path.exists():
        info_path.unlink()  # a stale file from an earlier model in this folder
    user_t, user_fields = _table_tensors("users", users)
    item_t, item_fields = _table_tensors("items", items)
    save_file({**user_t, **item_t}, str(directory / FEATURES_FILE))
    save_file(state_to_cpu(model), str(directory / WEIGHTS_FILE))
    config = {
        **meta,
        "model": model.config.to_dict(),
        "structure": model.structure.to_dict(),
        "user_fields": user_fields,
        "item_fields": item_fields,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))


def model_directory(directory: Path) -> Path:
    """``directory`` if it holds a model, else its ``model/`` subfolder (what ``compare`` and
    ``search`` write beside their checkpoints); the error lists the model folders found below."""
    for candidate in (directory, directory / "model"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    found = sorted(str(p.parent) for p in directory.glob(f"**/{CONFIG_FILE}"))[:6]
    hint = f"; model folders below it: {', '.join(found)}" if found else ""
    if (directory / "last.json").is_file() or (directory / "best.safetensors").is_file():
        hint += "; this is a training checkpoint folder, the exported model is the run's model/"
    raise FileNotFoundError(
        f"{directory / CONFIG_FILE}: no ColdNAS model config (expected {CONFIG_FILE}){hint}"
    )


def read_config(directory: Path) -> dict[str, Any]:
    path = model_directory(directory) / CONFIG_FILE
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_id_maps(directory: Path) -> tuple[IdMap, IdMap]:
    """``(user ids, item ids)`` of a model directory; models saved before ``ids.json`` existed
    fall back to the integer ids kept in ``features.safetensors`` (rows when there are none)."""
    directory = model_directory(directory)
    path = directory / IDS_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        return IdMap.from_json(data["users"]), IdMap.from_json(data["items"])
    config = read_config(directory)
    tensors = load_file(str(directory / FEATURES_FILE))
    users = _table_from("users", config["user_fields"], tensors)
    items = _table_from("items", config["item_fields"], tensors)
    return id_maps_of(users, items)


def load_item_info(directory: Path) -> ItemInfo | None:
    """The ``items.json`` display metadata, or None when the dataset had none."""
    path = model_directory(directory) / ITEM_INFO_FILE
    return ItemInfo.from_json(json.loads(path.read_text())) if path.is_file() else None


def load_model(directory: Path) -> tuple[ColdNAS, dict[str, Any]]:
    """Load a model written by :func:`save_model`; returns it in eval mode with its config dict.

    ``directory`` may also be the folder above it (a run folder whose ``model/`` holds it).
    """
    directory = model_directory(directory)
    config = read_config(directory)
    tensors = load_file(str(directory / FEATURES_FILE))
    users = _table_from("users", config["user_fields"], tensors)
    items = _table_from("items", config["item_fields"], tensors)
    model = ColdNAS(
        ColdNASConfig.from_dict(config["model"]),
        users,
        items,
        Structure.from_dict(config["structure"]),
    )
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    model.eval()
    return model, config
