"""warmstart.checkpoint: optimizer state through safetensors, shared by every trainer."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from warmstart.checkpoint import (
    optimizer_state_tensors,
    restore_optimizer_state,
    save_tensors_atomic,
)


def _trained_adam(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def _same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa["param_groups"] != sb["param_groups"] or sa["state"].keys() != sb["state"].keys():
        return False
    return all(
        torch.equal(torch.as_tensor(sa["state"][i][k]), torch.as_tensor(sb["state"][i][k]))
        for i in sa["state"]
        for k in sa["state"][i]
    )


def test_round_trip_through_a_file_restores_every_slot(tmp_path: Path) -> None:
    model, opt = _trained_adam(0)
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    # the retrieval layout (a file of its own) and the ColdNAS one (beside the weights)
    for prefix, extra in (("", {}), ("opt.", weights)):
        save_tensors_atomic({**extra, **optimizer_state_tensors(opt, prefix)}, tmp_path / "c")
        assert not list(tmp_path.glob("*.tmp"))
        _, fresh = _trained_adam(1)  # other moments, same layout
        assert not _same_state(opt, fresh)
        restore_optimizer_state(fresh, load_file(str(tmp_path / "c")), prefix=prefix)
        assert _same_state(opt, fresh)
    # a resumed step equals an uninterrupted one
    x = torch.randn(8, 4)
    twin_model, twin = _trained_adam(1)
    twin_model.load_state_dict(model.state_dict())
    restore_optimizer_state(twin, optimizer_state_tensors(opt))
    for m, o in ((model, opt), (twin_model, twin)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_both_trainers_use_this_module() -> None:
    import warmstart.coldstart.training as coldstart
    import warmstart.retrieval.training as retrieval

    for module in (coldstart, retrieval):
        source = Path(module.__file__).read_text()
        assert "optimizer_state_tensors(" in source and "restore_optimizer_state(" in source
        assert 'opt.state_dict()["state"].items()' not in source  # no second copy
