"""Training loops for the RocketQA dual encoder and cross-encoder (Qu et al., NAACL 2021,
arXiv 2010.08191).

Dual encoder: softmax cross-entropy of each query over all passages of the (global) batch,
i.e. in-batch negatives on one process, cross-batch negatives across workers, optionally exact
large batches on one process by gradient caching. Cross-encoder: either pointwise 2-class (or
1-logit) relevance classification of (query, passage) pairs, or listwise softmax cross-entropy over
one positive and ``negatives_per_query`` negatives of the same query; negatives are sampled from
the retriever's own top-k.

Both loops checkpoint model + optimizer + step to ``workdir/checkpoint`` (safetensors + JSON) and
resume from there; batch order and sampled negatives are derived from (seed, epoch, step), so a
resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, load_model, save_model
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from warmstart.checkpoint import (
    optimizer_state_tensors,
    restore_optimizer_state,
    save_tensors_atomic,
)
from warmstart.retrieval.encoders import CrossEncoder, DualEncoder
from warmstart.retrieval.losses import (
    average_gradients,
    cross_batch_loss,
    grad_cache_step,
    loss_from_embeddings,
)
from warmstart.retrieval.text import tokenize


@dataclass(frozen=True)
class TrainExample:
    """One (query, positive) pair with its pool of hard negatives (corpus row positions).

    An empty ``negatives`` pool means random negatives are drawn from the corpus.
    """

    query_id: str
    query: str
    positive: int
    negatives: tuple[int, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "query_id": self.query_id,
            "query": self.query,
            "positive": self.positive,
            "negatives": list(self.negatives),
        }

    @classmethod
    def from_json(cls, row: dict[str, object]) -> TrainExample:
        negatives = row.get("negatives", [])
        assert isinstance(negatives, list)
        return cls(
            str(row["query_id"]),
            str(row["query"]),
            int(str(row["positive"])),
            tuple(int(n) for n in negatives),
        )


CROSS_LOSSES = ("pointwise", "listwise")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by both loops.

    Attributes:
        epochs: passes over the examples.
        batch_size: queries per worker and step (dual encoder) / pairs per step (cross-encoder).
        lr: peak AdamW learning rate (linear warm-up then linear decay).
        warmup_ratio: fraction of steps spent warming up.
        weight_decay: AdamW weight decay.
        negatives_per_query: hard (or random) negatives per example.
        grad_cache_chunk: dual encoder on one process: embed the batch in chunks of this many
            texts and use gradient caching (exact large-batch gradient); None = plain backward.
        max_grad_norm: gradient clipping.
        checkpoint_every: steps between checkpoints.
        seed: batch order and negative sampling.
        cross_loss: cross-encoder only. ``pointwise``: each (query, passage) pair is classified
            on its own, ``batch_size`` pairs a step, negatives drawn once. ``listwise``: each
            query's positive competes with ``negatives_per_query`` negatives of the same query in
            one softmax (target: the positive), ``batch_size`` queries a step, negatives redrawn
            every step.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    negatives_per_query: int = 1
    grad_cache_chunk: int | None = None
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    cross_loss: str = "pointwise"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.negatives_per_query < 0:
            raise ValueError(f"negatives_per_query={self.negatives_per_query}: must be >= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be > 0")
        if self.grad_cache_chunk is not None and self.grad_cache_chunk < 1:
            raise ValueError(f"grad_cache_chunk={self.grad_cache_chunk}: must be >= 1 or None")
        if self.cross_loss not in CROSS_LOSSES:
            raise ValueError(
                f"cross_loss={self.cross_loss!r}: allowed values are {', '.join(CROSS_LOSSES)}"
            )
        if self.cross_loss == "listwise" and self.negatives_per_query < 1:
            raise ValueError("cross_loss='listwise' needs negatives_per_query >= 1")


@dataclass
class TrainState:
    """What a checkpoint records besides weights."""

    step: int = 0
    losses: list[float] = field(default_factory=list)


def sample_negatives(
    example: TrainExample, n: int, n_docs: int, rng: np.random.Generator
) -> list[int]:
    """``n`` negatives from the example's pool (with replacement if it is small) or at random."""
    if n == 0:
        return []
    if example.negatives:
        pool = np.asarray(example.negatives)
        picks = rng.choice(pool, size=n, replace=len(pool) < n)
        return [int(p) for p in picks]
    out: list[int] = []
    while len(out) < n:
        doc = int(rng.integers(n_docs))
        if doc != example.positive:
            out.append(doc)
    return out


def epoch_batches(n_examples: int, global_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Seeded shuffle of example positions cut into full global batches (the ragged end dropped,
    so every worker gets the same number of rows)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    n_full = n_examples // global_batch
    if n_full == 0:
        raise ValueError(
            f"{n_examples} examples cannot fill one batch of {global_batch} (batch_size × workers)"
        )
    return [order[i * global_batch : (i + 1) * global_batch] for i in range(n_full)]


def _schedule(total: int, warmup_ratio: float) -> Callable[[int], float]:
    warm = max(1, math.ceil(total * warmup_ratio))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def save_checkpoint(
    folder: Path, model: nn.Module, opt: torch.optim.Optimizer, state: TrainState
) -> None:
    """Weights, optimizer moments and step, written atomically (the JSON last)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "model.safetensors"))
    save_tensors_atomic(optimizer_state_tensors(opt), folder / "optimizer.safetensors")
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps({"step": state.step, "losses": state.losses}))
    tmp.replace(folder / "state.json")


def load_checkpoint(folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> TrainState:
    """Restore a checkpoint written by :func:`save_checkpoint`; a fresh state if there is none."""
    if not (folder / "state.json").is_file():
        return TrainState()
    load_model(model, str(folder / "model.safetensors"))
    restore_optimizer_state(opt, load_file(str(folder / "optimizer.safetensors")))
    raw = json.loads((folder / "state.json").read_text())
    return TrainState(step=int(raw["step"]), losses=[float(x) for x in raw["losses"]])


StepLoss = Callable[[int, int, np.ndarray], torch.Tensor]


def _run_loop(
    model: nn.Module,
    config: TrainConfig,
    batches_per_epoch: Callable[[int], list[np.ndarray]],
    step_loss: StepLoss,
    workdir: Path | None,
    *,
    rank: int = 0,
    desc: str = "train",
) -> TrainState:
    """Generic loop: ``step_loss(epoch, step, rows)`` backpropagates and returns the loss."""
    plans = [batches_per_epoch(e) for e in range(config.epochs)]
    total = sum(len(p) for p in plans)
    opt = _optimizer(model, config)
    ckpt = None if workdir is None else workdir / "checkpoint"
    state = TrainState() if ckpt is None else load_checkpoint(ckpt, model, opt)
    factor = _schedule(total, config.warmup_ratio)
    for group in opt.param_groups:
        group.setdefault("initial_lr", config.lr)
    # last_epoch = resumed step: the schedule continues where the checkpoint left it
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor, last_epoch=state.step - 1)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    bar = tqdm(total=total, initial=state.step, desc=desc, disable=rank != 0, leave=False)
    step = 0
    for epoch, plan in enumerate(plans):
        for rows in plan:
            step += 1
            if step <= state.step:
                continue
            opt.zero_grad(set_to_none=True)
            loss = step_loss(epoch, step, rows)
            average_gradients(params)
            nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            sched.step()
            state.step, bar.n = step, step
            state.losses.append(float(loss))
            bar.set_postfix(loss=f"{float(loss):.3f}")
            if ckpt is not None and rank == 0 and step % config.checkpoint_every == 0:
                save_checkpoint(ckpt, model, opt, state)
    bar.close()
    if ckpt is not None and rank == 0:
        save_checkpoint(ckpt, model, opt, state)
    return state


def _chunks(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = next(iter(batch.values())).shape[0]
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


@dataclass
class DualBatchEncoder:
    """Turns rows of examples into query/passage vectors for the dual-encoder loss."""

    model: DualEncoder
    tokenizer: PreTrainedTokenizerBase
    passages: Sequence[str]
    passage_embeddings: torch.Tensor | None = None  # (N, H) when the passage tower is frozen

    def queries(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.model.config.query_max_length)

    def passage_batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        texts = [self.passages[r] for r in rows]
        return tokenize(self.tokenizer, texts, self.model.config.passage_max_length)

    def embed_passages(self, rows: list[int]) -> torch.Tensor:
        """(len(rows), H) passage vectors: cached rows if frozen, else the tower (with graph)."""
        if self.passage_embeddings is not None and not self.model.config.train_passage_tower:
            return self.passage_embeddings[torch.tensor(rows, dtype=torch.long)]
        return self.model.encode_passages(self.passage_batch(rows))


def train_dual_encoder(
    model: DualEncoder,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainExample],
    passages: Sequence[str],
    config: TrainConfig,
    *,
    workdir: Path | None = None,
    passage_embeddings: np.ndarray | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> TrainState:
    """Train the dual encoder with in-batch (world 1) or cross-batch (world > 1) negatives.

    Args:
        examples: training pairs; every worker passes the same list and takes its slice.
        passages: corpus texts, indexed by ``TrainExample.positive`` / ``negatives``.
        passage_embeddings: (N, H) corpus vectors of the frozen passage tower (skips re-encoding).
        rank, world_size: this worker in an initialised process group (``world_size`` > 1).
    """
    if world_size > 1 and config.grad_cache_chunk is not None:
        raise ValueError("grad_cache_chunk is for one process; cross-batch workers use all_gather")
    frozen = None if passage_embeddings is None else torch.from_numpy(passage_embeddings)
    enc = DualBatchEncoder(model, tokenizer, passages, frozen)
    global_batch = config.batch_size * world_size
    scale = model.config.scale

    def step_loss(epoch: int, step: int, rows: np.ndarray) -> torch.Tensor:
        local = rows[rank * config.batch_size : (rank + 1) * config.batch_size]
        rng = np.random.default_rng([config.seed, epoch, step, rank])
        batch = [examples[int(i)] for i in local]
        pos = [ex.positive for ex in batch]
        neg = [
            n
            for ex in batch
            for n in sample_negatives(ex, config.negatives_per_query, len(passages), rng)
        ]
        if config.grad_cache_chunk is not None:
            return _grad_cache_loss(enc, batch, pos, neg, config.grad_cache_chunk, scale)
        q = model.encode_queries(enc.queries([ex.query for ex in batch]))  # (B, H)
        p = enc.embed_passages(pos)  # (B, H)
        n = enc.embed_passages(neg) if neg else None  # (B·n, H)
        loss = cross_batch_loss(q, p, n, scale=scale)
        loss.backward()
        return loss.detach()

    return _run_loop(
        model,
        config,
        lambda e: epoch_batches(len(examples), global_batch, config.seed, e),
        step_loss,
        workdir,
        rank=rank,
        desc="dual encoder",
    )


def _grad_cache_loss(
    enc: DualBatchEncoder,
    batch: list[TrainExample],
    pos: list[int],
    neg: list[int],
    chunk: int,
    scale: float,
) -> torch.Tensor:
    model = enc.model
    q_chunks = _chunks(enc.queries([ex.query for ex in batch]), chunk)
    frozen = enc.passage_embeddings is not None and not model.config.train_passage_tower
    encode_p: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    if frozen:
        # nothing to replay on the passage side: feed the cached rows through an identity tower
        assert enc.passage_embeddings is not None
        table = enc.passage_embeddings

        def lookup(b: dict[str, torch.Tensor]) -> torch.Tensor:
            return table[b["rows"]]

        encode_p = lookup
        p_chunks = [{"rows": torch.tensor(pos[i : i + chunk])} for i in range(0, len(pos), chunk)]
        n_chunks = [{"rows": torch.tensor(neg[i : i + chunk])} for i in range(0, len(neg), chunk)]
    else:
        encode_p = model.encode_passages
        p_chunks = _chunks(enc.passage_batch(pos), chunk)
        n_chunks = _chunks(enc.passage_batch(neg), chunk) if neg else []

    def loss_fn(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor | None) -> torch.Tensor:
        return loss_from_embeddings(q, p, n, scale=scale)

    return grad_cache_step(
        model.encode_queries, encode_p, q_chunks, p_chunks, n_chunks or None, loss_fn
    )


def _pair_loss(
    model: CrossEncoder, batch: dict[str, torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    out = model.class_logits(batch)  # (B, C)
    if out.shape[-1] == 2:
        return nn.functional.cross_entropy(out, labels)
    return nn.functional.binary_cross_entropy_with_logits(out[:, 0], labels.float())


def cross_encoder_pairs(
    examples: Sequence[TrainExample], n_negatives: int, n_docs: int, seed: int
) -> list[tuple[str, int, int]]:
    """(query, passage row, label) pairs: each positive plus ``n_negatives`` sampled negatives."""
    rng = np.random.default_rng([seed, 7])
    pairs: list[tuple[str, int, int]] = []
    for ex in examples:
        pairs.append((ex.query, ex.positive, 1))
        pairs.extend((ex.query, n, 0) for n in sample_negatives(ex, n_negatives, n_docs, rng))
    return pairs


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of (B, 1 + n) scores whose column 0 is each row's positive."""
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return nn.functional.cross_entropy(scores, target)


def cross_encoder_groups(
    examples: Sequence[TrainExample], n_negatives: int, n_docs: int, rng: np.random.Generator
) -> list[list[int]]:
    """Per example, ``[positive, n_negatives sampled negatives]`` (corpus rows)."""
    return [[ex.positive, *sample_negatives(ex, n_negatives, n_docs, rng)] for ex in examples]


def _train_cross_listwise(
    model: CrossEncoder,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainExample],
    passages: Sequence[str],
    config: TrainConfig,
    workdir: Path | None,
) -> TrainState:
    group = 1 + config.negatives_per_query

    def step_loss(epoch: int, step: int, rows: np.ndarray) -> torch.Tensor:
        rng = np.random.default_rng([config.seed, epoch, step])
        batch = [examples[int(i)] for i in rows]
        groups = cross_encoder_groups(batch, config.negatives_per_query, len(passages), rng)
        inputs = tokenize(
            tokenizer,
            [ex.query for ex in batch for _ in range(group)],
            model.config.max_length,
            [passages[p] for g in groups for p in g],
        )
        scores = model(inputs).view(len(batch), group)  # (B, 1 + n), column 0 = positive
        loss = listwise_loss(scores)
        loss.backward()
        return loss.detach()

    return _cross_loop(model, config, len(examples), step_loss, workdir, "cross-encoder (listwise)")


def _cross_loop(
    model: CrossEncoder,
    config: TrainConfig,
    n_rows: int,
    step_loss: StepLoss,
    workdir: Path | None,
    desc: str,
) -> TrainState:
    """The cross-encoder's loop over ``n_rows`` training rows (pairs or query groups)."""
    batch = min(config.batch_size, n_rows)
    return _run_loop(
        model,
        config,
        lambda e: epoch_batches(n_rows, batch, config.seed, e),
        step_loss,
        workdir,
        desc=desc,
    )


def train_cross_encoder(
    model: CrossEncoder,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainExample],
    passages: Sequence[str],
    config: TrainConfig,
    *,
    workdir: Path | None = None,
) -> TrainState:
    """Train the cross-encoder on positives + ``negatives_per_query`` negatives per example,
    pointwise or listwise (``config.cross_loss``)."""
    if dist.is_available() and dist.is_initialized():
        raise ValueError("train_cross_encoder runs on one process")
    if config.cross_loss == "listwise":
        return _train_cross_listwise(model, tokenizer, examples, passages, config, workdir)
    pairs = cross_encoder_pairs(examples, config.negatives_per_query, len(passages), config.seed)

    def step_loss(epoch: int, step: int, rows: np.ndarray) -> torch.Tensor:
        chosen = [pairs[int(i)] for i in rows]
        batch = tokenize(
            tokenizer,
            [q for q, _, _ in chosen],
            model.config.max_length,
            [passages[p] for _, p, _ in chosen],
        )
        loss = _pair_loss(model, batch, torch.tensor([y for _, _, y in chosen]))
        loss.backward()
        return loss.detach()

    return _cross_loop(model, config, len(pairs), step_loss, workdir, "cross-encoder")
