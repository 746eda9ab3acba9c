from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from warmstart.retrieval.distributed import spawn_workers
from warmstart.retrieval.losses import cross_batch_loss, grad_cache_step, loss_from_embeddings

WORLD, B, N_NEG, DIN, H = 2, 3, 2, 6, 4


def make_data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w_q": torch.randn(DIN, H, generator=g),
        "w_p": torch.randn(DIN, H, generator=g),
        "xq": torch.randn(WORLD * B, DIN, generator=g),
        "xp": torch.randn(WORLD * B, DIN, generator=g),
        "xn": torch.randn(WORLD * B * N_NEG, DIN, generator=g),
    }


def single_process(
    data: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and grads over the concatenated batch, with the negatives in worker order."""
    w_q = data["w_q"].clone().requires_grad_()
    w_p = data["w_p"].clone().requires_grad_()
    loss = loss_from_embeddings(data["xq"] @ w_q, data["xp"] @ w_p, data["xn"] @ w_p, scale=2.0)
    loss.backward()
    assert w_q.grad is not None and w_p.grad is not None
    return loss.detach(), w_q.grad, w_p.grad


def _worker(rank: int, world: int, data: dict[str, torch.Tensor], out: str) -> None:
    w_q = data["w_q"].clone().requires_grad_()
    w_p = data["w_p"].clone().requires_grad_()
    q = data["xq"][rank * B : (rank + 1) * B] @ w_q
    p = data["xp"][rank * B : (rank + 1) * B] @ w_p
    n = data["xn"][rank * B * N_NEG : (rank + 1) * B * N_NEG] @ w_p
    loss = cross_batch_loss(q, p, n, scale=2.0)
    loss.backward()
    assert w_q.grad is not None and w_p.grad is not None
    grads = torch.stack([w_q.grad, w_p.grad])
    torch.distributed.all_reduce(grads)  # average like DDP
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)
    save_file({"grads": grads / world, "loss": total / world}, f"{out}/rank{rank}.safetensors")


def test_loss_matches_manual_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    q, p, n = (
        torch.randn(3, 4, generator=g),
        torch.randn(3, 4, generator=g),
        torch.randn(5, 4, generator=g),
    )
    scores = 3.0 * q @ torch.cat([p, n]).T
    manual = -(scores.diagonal() - scores.logsumexp(1)).mean()
    assert torch.allclose(loss_from_embeddings(q, p, n, scale=3.0), manual)


def test_cross_batch_two_gloo_processes_equal_single_process(tmp_path: Path) -> None:
    data = make_data()
    spawn_workers(_worker, WORLD, (data, str(tmp_path)))
    loss, g_q, g_p = single_process(data)
    for rank in range(WORLD):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert torch.allclose(got["loss"], loss, atol=1e-5)
        assert torch.allclose(got["grads"][0], g_q, atol=1e-5)
        assert torch.allclose(got["grads"][1], g_p, atol=1e-5)


def test_cross_batch_without_process_group_is_in_batch() -> None:
    data = make_data(3)
    q, p, n = data["xq"] @ data["w_q"], data["xp"] @ data["w_p"], data["xn"] @ data["w_p"]
    assert torch.allclose(cross_batch_loss(q, p, n), loss_from_embeddings(q, p, n))


class Tower(nn.Module):
    """A tiny encoder with dropout, so GradCache must replay the same masks."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(DIN, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, H))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["x"])


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_grad_cache_equals_plain_large_batch(chunk: int) -> None:
    data = make_data(5)
    towers = [Tower(0), Tower(1)]
    plain = [Tower(0), Tower(1)]

    def chunks(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [{"x": x[i : i + chunk]} for i in range(0, len(x), chunk)]

    def loss_fn(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor | None) -> torch.Tensor:
        return loss_from_embeddings(q, p, n, scale=2.0)

    torch.manual_seed(42)
    cached = grad_cache_step(
        towers[0], towers[1], chunks(data["xq"]), chunks(data["xp"]), chunks(data["xn"]), loss_fn
    )
    # the plain pass must draw the same dropout masks: chunk by chunk, in the same order
    torch.manual_seed(42)
    q = torch.cat([plain[0](c) for c in chunks(data["xq"])])
    p = torch.cat([plain[1](c) for c in chunks(data["xp"])])
    n = torch.cat([plain[1](c) for c in chunks(data["xn"])])
    loss = loss_fn(q, p, n)
    loss.backward()
    assert torch.allclose(cached, loss.detach(), atol=1e-6)
    for a, b in zip(
        [*towers[0].parameters(), *towers[1].parameters()],
        [*plain[0].parameters(), *plain[1].parameters()],
        strict=True,
    ):
        assert a.grad is not None and b.grad is not None
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
