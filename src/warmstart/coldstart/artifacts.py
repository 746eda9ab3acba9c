"""Saving and loading trained ColdNAS models: safetensors weights + JSON config.

A model directory holds ``config.json`` (architecture, structure, seed, git SHA, anything the
trainer records), ``model.safetensors`` (weights) and ``features.safetensors`` (the user/item
feature index matrices), so a model can be loaded and served without the dataset or the trainer.
Nothing here is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from warmstart.coldstart.model import ColdNAS, ColdNASConfig, TableLike
from warmstart.coldstart.structure import Structure

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FEATURES_FILE = "features.safetensors"


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


def save_model(
    directory: Path, model: ColdNAS, users: TableLike, items: TableLike, meta: dict[str, Any]
) -> None:
    """Write ``model`` (fixed structure) with its feature tables and ``meta`` into ``directory``."""
    if model.searching:
        raise ValueError("save_model: save a derived (fixed-structure) model, not the supernet")
    directory.mkdir(parents=True, exist_ok=True)
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


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ColdNAS model config (expected {CONFIG_FILE})")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_model(directory: Path) -> tuple[ColdNAS, dict[str, Any]]:
    """Load a model written by :func:`save_model`; returns it in eval mode with its config dict."""
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
