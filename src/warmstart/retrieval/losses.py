"""Contrastive losses of RocketQA (Qu et al., NAACL 2021, arXiv 2010.08191, section 4.2).

* in-batch negatives: each query is scored against every passage of the batch (all positives and
  all hard negatives) with softmax cross-entropy;
* cross-batch negatives: passages are all-gathered from every worker (``torch.distributed``), so a
  query sees A·B·(1 + n) − 1 negatives; the gradient flows back through every worker's own shard;
* gradient caching (GradCache, Gao et al. 2021): the exact large-batch gradient on one process by
  embedding in chunks without a graph, differentiating the loss wrt the embeddings, then re-running
  each chunk with a graph and back-propagating the cached embedding gradients.

The loss maths is pure tensor code (``loss_from_embeddings``); encoders stay outside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def loss_from_embeddings(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
    query_offset: int = 0,
) -> torch.Tensor:
    """Mean softmax cross-entropy of each query over all passages of the batch.

    Query ``i`` (global index ``query_offset + i``) has its positive at row ``query_offset + i``
    of ``positives``; every other positive and every hard negative is a negative for it.

    Args:
        queries: (B, H) query vectors (local queries).
        positives: (P, H) positive passage vectors, P ≥ query_offset + B.
        negatives: (M, H) hard-negative passage vectors, or None.
        scale: score multiplier (inverse temperature).
        query_offset: index of the first local query in the global positive list.

    Returns:
        () mean loss over the B queries.
    """
    passages = positives if negatives is None else torch.cat([positives, negatives])  # (P+M, H)
    scores = scale * queries @ passages.T  # (B, P+M)
    labels = torch.arange(queries.shape[0], device=queries.device) + query_offset
    return nn.functional.cross_entropy(scores, labels)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every worker's gradient for this worker's shard."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        shards = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(shards, tensor.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return torch.cat(shards)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        grad = grads[0].contiguous()
        dist.all_reduce(grad)  # d(sum of all workers' losses) / d(gathered)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, H) shards of all workers into (W·B, H), differentiable wrt the local shard.

    Every worker must pass the same number of rows. The backward all-reduces the gradient, so
    this worker's shard receives the gradient of the *sum* of all workers' losses; average
    parameter gradients over workers afterwards (as DDP does) to train on the global mean loss.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    if not tensor.requires_grad:
        shards = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, tensor.contiguous())
        return torch.cat(shards)
    out = _GatherWithGrad.apply(tensor)
    assert isinstance(out, torch.Tensor)
    return out


def cross_batch_loss(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
) -> torch.Tensor:
    """Local queries against the passages of *all* workers (RocketQA cross-batch negatives).

    Args:
        queries: (B, H) this worker's query vectors.
        positives: (B, H) this worker's positive passages (aligned with ``queries``).
        negatives: (B·n, H) this worker's hard negatives, or None.

    Returns:
        () mean loss over this worker's queries. On one process (or without an initialised
        process group) it equals :func:`loss_from_embeddings`.
    """
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    all_pos = gather_with_grad(positives)  # (W·B, H)
    all_neg = None if negatives is None else gather_with_grad(negatives)  # (W·B·n, H)
    offset = rank * queries.shape[0]
    return loss_from_embeddings(queries, all_pos, all_neg, scale=scale, query_offset=offset)


def average_gradients(parameters: Sequence[nn.Parameter]) -> None:
    """All-reduce and average ``.grad`` of parameters over workers (no-op on one process)."""
    if not dist.is_available() or not dist.is_initialized():
        return
    world = dist.get_world_size()
    for param in parameters:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world


Encode = Callable[[dict[str, torch.Tensor]], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _embed_no_grad(
    encode: Encode, chunks: Sequence[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Embed chunks without a graph, remembering the RNG state each chunk started from."""
    states: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    with torch.no_grad():
        for chunk in chunks:
            states.append(torch.get_rng_state())
            outs.append(encode(chunk))
    return torch.cat(outs), states


def _replay_backward(
    encode: Encode,
    chunks: Sequence[dict[str, torch.Tensor]],
    states: Sequence[torch.Tensor],
    grad: torch.Tensor,
) -> None:
    """Re-embed each chunk with a graph (same dropout masks) and push its cached gradient."""
    start = 0
    for chunk, state in zip(chunks, states, strict=True):
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state)
            out = encode(chunk)
        if out.requires_grad:  # a frozen tower has nothing to update
            out.backward(grad[start : start + out.shape[0]])
        start += out.shape[0]


def grad_cache_step(
    encode_queries: Encode,
    encode_passages: Encode,
    query_chunks: Sequence[dict[str, torch.Tensor]],
    positive_chunks: Sequence[dict[str, torch.Tensor]],
    negative_chunks: Sequence[dict[str, torch.Tensor]] | None,
    loss_fn: LossFn,
) -> torch.Tensor:
    """Accumulate the exact gradient of ``loss_fn`` over a batch too large for one graph.

    Args:
        encode_queries / encode_passages: tokenised chunk -> (b, H) vectors (with graph).
        query_chunks, positive_chunks: aligned chunks of the big batch.
        negative_chunks: chunks of the hard negatives, or None.
        loss_fn: ``(queries (B, H), positives (B, H), negatives (M, H) | None) -> ()``.

    Returns:
        () the loss value (detached); parameter ``.grad`` fields hold its gradient.
    """
    q, q_states = _embed_no_grad(encode_queries, query_chunks)
    p, p_states = _embed_no_grad(encode_passages, positive_chunks)
    n, n_states = (
        (None, []) if negative_chunks is None else _embed_no_grad(encode_passages, negative_chunks)
    )
    leaves = [t.detach().requires_grad_() for t in (q, p)]
    neg_leaf = None if n is None else n.detach().requires_grad_()
    loss = loss_fn(leaves[0], leaves[1], neg_leaf)
    loss.backward()
    grads = [leaf.grad for leaf in leaves]
    assert grads[0] is not None and grads[1] is not None
    _replay_backward(encode_queries, query_chunks, q_states, grads[0])
    _replay_backward(encode_passages, positive_chunks, p_states, grads[1])
    if negative_chunks is not None and neg_leaf is not None and neg_leaf.grad is not None:
        _replay_backward(encode_passages, negative_chunks, n_states, neg_leaf.grad)
    return loss.detach()
