"""Optimizer state as safetensors: the one implementation every trainer uses.

An optimizer's ``state_dict()`` is ``{"state": {param index: {slot: tensor or number}},
"param_groups": [...]}``. Its per-parameter slots (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``)
are flattened to safetensors entries named ``<prefix><param index>.<slot>``; the param groups
(learning rates, betas: plain JSON) either come from the optimizer being restored (the caller
rebuilt it with the same settings) or are kept by the caller in its own JSON.

Used by the RocketQA trainers (``retrieval.training``: ``optimizer.safetensors``, no prefix) and
the ColdNAS trainer (``coldstart.training``: entries ``opt.<i>.<slot>`` inside ``last.safetensors``
beside the weights), so checkpoints written before this module existed load unchanged.

Also the JSON side of every versioned artifact folder (index, MF and item-kNN serving artifacts):
:func:`read_versioned_json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = [
    "optimizer_state_tensors",
    "read_versioned_json",
    "restore_optimizer_state",
    "save_tensors_atomic",
]


def optimizer_state_tensors(
    opt: torch.optim.Optimizer, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter slots as ``{f"{prefix}{index}.{slot}": tensor}`` (copies;
    numbers such as Adam's ``step`` become 0-d tensors)."""
    out: dict[str, torch.Tensor] = {}
    for index, slots in opt.state_dict()["state"].items():
        for slot, value in slots.items():
            out[f"{prefix}{index}.{slot}"] = torch.as_tensor(value).detach().clone().contiguous()
    return out


def restore_optimizer_state(
    opt: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    prefix: str = "",
    param_groups: list[dict[str, Any]] | None = None,
) -> None:
    """Load slots written by :func:`optimizer_state_tensors` into ``opt``.

    Entries not starting with ``prefix`` are ignored (a file may hold weights too).
    ``param_groups``: the saved groups; None keeps the optimizer's own.
    """
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix):
            continue
        index, slot = name[len(prefix) :].split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    groups = opt.state_dict()["param_groups"] if param_groups is None else param_groups
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_tensors_atomic(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file through a temporary name, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_versioned_json(path: Path, version: int, missing: str) -> dict[str, Any]:
    """An artifact's JSON config, refused unless its ``format_version`` is ``version``.

    Raises:
        FileNotFoundError: ``path`` does not exist (``missing`` is the message).
        ValueError: another ``format_version``, naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(missing)
    config: dict[str, Any] = json.loads(path.read_text())
    if config.get("format_version") != version:
        raise ValueError(f"{path}: unsupported format_version {config.get('format_version')!r}")
    return config
