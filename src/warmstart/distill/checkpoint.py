"""Student checkpoints: weights + optimizer moments + step (``retrieval.training``'s checkpoint
helpers over ``warmstart.checkpoint``, safetensors + JSON) plus the sample ledger, so a resumed run's exactly-once accounting
continues where the killed one stopped.

Each checkpoint is written into its own ``step-<n>/`` folder; ``latest.json`` is replaced
atomically last, so a student killed while writing resumes from the previous complete one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from warmstart.checkpoint import save_tensors_atomic
from warmstart.distill.dispatch import SampleLedger
from warmstart.retrieval.training import TrainState, load_checkpoint, save_checkpoint

LATEST = "latest.json"


@dataclass
class StudentState:
    """What a checkpoint records besides weights and optimizer moments."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def save_student(
    folder: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    state: StudentState,
    ledger: SampleLedger,
) -> Path:
    """Write ``folder/step-<n>/`` and point ``latest.json`` at it; older steps are removed."""
    target = folder / f"step-{state.step:08d}"
    if target.exists():
        shutil.rmtree(target)
    save_checkpoint(target, model, opt, TrainState(step=state.step, losses=list(state.losses)))
    save_tensors_atomic({"counts": torch.from_numpy(ledger.counts)}, target / "ledger.safetensors")
    (target / "student.json").write_text(json.dumps({"step": state.step, "extra": state.extra}))
    tmp = folder / (LATEST + ".tmp")
    tmp.write_text(json.dumps({"dir": target.name, "step": state.step}))
    tmp.replace(folder / LATEST)
    for old in folder.glob("step-*"):
        if old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_student(
    folder: Path, model: nn.Module, opt: torch.optim.Optimizer, ledger_shape: tuple[int, int]
) -> tuple[StudentState, SampleLedger]:
    """Restore the latest checkpoint of ``folder`` (a fresh state and ledger if none)."""
    latest = folder / LATEST
    if not latest.is_file():
        return StudentState(), SampleLedger(*ledger_shape)
    target = folder / json.loads(latest.read_text())["dir"]
    train = load_checkpoint(target, model, opt)
    counts = load_file(str(target / "ledger.safetensors"))["counts"].numpy()
    meta = json.loads((target / "student.json").read_text())
    if int(meta["step"]) != train.step:
        raise ValueError(f"{target}: student.json step {meta['step']} != state.json {train.step}")
    state = StudentState(train.step, list(train.losses), dict(meta.get("extra", {})))
    return state, SampleLedger(*ledger_shape, counts=counts)
