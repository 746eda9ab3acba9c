"""The RocketQA pipeline's step bodies, each declared next to its body with what it reads.

``@pipeline_step(name, fields=..., reads=...)`` registers a step: ``fields`` are the config
fields its artifacts depend on (dotted for ``mining``, whole sub-configs otherwise), ``reads`` the
other steps' artifacts it reads (``"<step>/<file or folder>"``). The orchestration
(``pipeline.run``) derives the dependency graph from ``reads``; a body that reads an artifact it
does not declare fails (``PipelineContext.artifact``), and the config fields a body reads are
checked against ``fields`` after it runs, so the declarations cannot drift from the code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from warmstart.retrieval.calibration import calibration_report, fit_platt
from warmstart.retrieval.distributed import spawn_workers
from warmstart.retrieval.encoders import (
    CrossEncoder,
    DualEncoder,
    DualEncoderConfig,
    head_input_spread,
    load_backbone,
    save_encoder,
)
from warmstart.retrieval.encoding import encode_corpus_cached, encode_texts
from warmstart.retrieval.evaluation import (
    choose_fusion_weight,
    evaluate_rows,
    exact_index,
    fuse_scores,
    rerank_rows,
)
from warmstart.retrieval.mining import (
    Candidates,
    candidate_labels,
    choose_high_threshold,
    denoised_negatives,
    labelled_examples,
    positive_rows,
    pseudo_examples,
    pseudo_positives,
    read_training_set,
    retrieve,
    top1_precision_curve,
    undenoised_negatives,
    with_positives,
    write_training_set,
)
from warmstart.retrieval.pipeline.artifacts import (
    PipelineContext,
    load_candidates,
    load_cross,
    load_dual,
    load_scaler,
    save_candidates,
    scored_blocks,
)
from warmstart.retrieval.pipeline.presets import (
    CE_DEV_DEPTH,
    EVAL_DEPTH,
    MIN_HEAD_SPREAD,
    PipelineConfig,
)
from warmstart.retrieval.text import tokenize
from warmstart.retrieval.training import (
    TrainConfig,
    TrainExample,
    train_cross_encoder,
    train_dual_encoder,
)

StepFunction = Callable[[PipelineContext], dict[str, Any]]


@dataclass(frozen=True)
class StepSpec:
    """A step: its body and what its artifacts depend on (declared next to the body)."""

    name: str
    run: StepFunction
    fields: tuple[str, ...]
    reads: tuple[str, ...]

    @property
    def upstream(self) -> tuple[str, ...]:
        """Steps whose artifacts this step reads, in declaration order."""
        return tuple(dict.fromkeys(r.split("/", 1)[0] for r in self.reads))


STEP_SPECS: dict[str, StepSpec] = {}


def pipeline_step(
    name: str, *, fields: tuple[str, ...], reads: tuple[str, ...] = ()
) -> Callable[[StepFunction], StepFunction]:
    """Register ``name``'s body with the config fields and artifacts it reads."""

    def register(fn: StepFunction) -> StepFunction:
        STEP_SPECS[name] = StepSpec(name, fn, fields, reads)
        return fn

    return register


def fresh_dual(ctx: PipelineContext) -> tuple[DualEncoder, PreTrainedTokenizerBase]:
    """A dual encoder initialised from the pre-trained backbone."""
    backbone, tokenizer = load_backbone(ctx.backbone_path)
    return DualEncoder(backbone, ctx.config.dual), tokenizer


def truncate_layers(backbone: nn.Module, layers: int | None) -> nn.Module:
    """Keep the first ``layers`` transformer layers of a BERT-style backbone."""
    if layers is None:
        return backbone
    encoder: Any = getattr(backbone, "encoder", None)
    if encoder is None or layers > len(encoder.layer):
        raise ValueError(f"cross_layers={layers}: backbone has no such layer stack")
    encoder.layer = nn.ModuleList(list(encoder.layer)[:layers])
    backbone.config.num_hidden_layers = layers  # type: ignore[union-attr]
    return backbone


def fresh_cross(ctx: PipelineContext) -> tuple[CrossEncoder, PreTrainedTokenizerBase]:
    backbone, tokenizer = load_backbone(ctx.backbone_path)
    return CrossEncoder(
        truncate_layers(backbone, ctx.config.cross_layers), ctx.config.cross
    ), tokenizer


def corpus_embeddings(
    ctx: PipelineContext, model: DualEncoder, tokenizer: PreTrainedTokenizerBase
) -> np.ndarray:
    return encode_corpus_cached(
        model,
        tokenizer,
        ctx.passages,
        ctx.cache_dir,
        batch_size=ctx.config.encode_batch_size,
        bf16=ctx.config.bf16,
        desc="encode corpus",
    )


def query_candidates(
    ctx: PipelineContext,
    model: DualEncoder,
    tokenizer: PreTrainedTokenizerBase,
    corpus: np.ndarray,
    queries: dict[str, str],
    k: int,
) -> Candidates:
    ids = sorted(queries)
    texts = [queries[q] for q in ids]
    vectors = encode_texts(model, tokenizer, texts, side="query", batch_size=64)
    return retrieve(ids, texts, vectors, exact_index(corpus), k)


def evaluate_dual(
    ctx: PipelineContext,
    model: DualEncoder,
    tokenizer: PreTrainedTokenizerBase,
    corpus: np.ndarray,
    split: str = "test",
) -> dict[str, float]:
    queries = ctx.collection.split_queries(split)
    c = query_candidates(ctx, model, tokenizer, corpus, queries, EVAL_DEPTH)
    return evaluate_rows(c.query_ids, c.rows, ctx.collection.doc_ids, ctx.collection.qrels[split])


def dev_split(ctx: PipelineContext) -> tuple[list[str], list[str]]:
    """(train-for-CE, dev-for-calibration) query ids from the labelled train split."""
    ids = sorted(ctx.collection.qrels["train"])
    rng = np.random.default_rng([ctx.config.seed, 11])
    n_dev = max(1, round(ctx.config.dev_fraction * len(ids)))
    dev = set(rng.choice(ids, size=n_dev, replace=False).tolist())
    return [q for q in ids if q not in dev], sorted(dev)


def train_positives(ctx: PipelineContext) -> dict[str, set[int]]:
    qrels = ctx.collection.qrels["train"]
    return positive_rows(sorted(qrels), qrels, ctx.doc_row)


def _queries(ctx: PipelineContext, ids: Sequence[str]) -> dict[str, str]:
    return {q: ctx.collection.queries[q] for q in ids}


def _dev_qrels(ctx: PipelineContext, dev_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Labels of the dev queries (a held-out part of the train split)."""
    return {q: ctx.collection.qrels["train"][q] for q in dev_ids}


def _train_and_save(
    ctx: PipelineContext, name: str, examples: Sequence[TrainExample]
) -> dict[str, Any]:
    folder = ctx.workdir / name
    model, tokenizer = fresh_dual(ctx)  # always from the pre-trained checkpoint
    corpus = corpus_embeddings(ctx, model, tokenizer)
    frozen = None if ctx.config.dual.train_passage_tower else corpus
    t0 = time.perf_counter()
    state = train_dual_encoder(
        model,
        tokenizer,
        examples,
        ctx.passages,
        ctx.config.dual_train,
        workdir=folder,
        passage_embeddings=frozen,
    )
    seconds = time.perf_counter() - t0
    save_encoder(model, tokenizer, folder / "model")
    corpus = corpus_embeddings(ctx, model, tokenizer)
    metrics = {
        "test": evaluate_dual(ctx, model, tokenizer, corpus),
        "train_examples": len(examples),
        "steps": state.step,
        "final_loss": state.losses[-1] if state.losses else None,
        "train_seconds": seconds,
    }
    return metrics


@pipeline_step(
    "zero_shot",
    fields=("dual", "bf16"),
    reads=(),
)
def step_zero_shot(ctx: PipelineContext) -> dict[str, Any]:
    model, tokenizer = fresh_dual(ctx)
    corpus = corpus_embeddings(ctx, model, tokenizer)
    return {"test": evaluate_dual(ctx, model, tokenizer, corpus)}


@pipeline_step(
    "md0",
    fields=("dual", "dual_train", "bf16", "mining.top_k"),
    reads=(),
)
def step_md0(ctx: PipelineContext) -> dict[str, Any]:
    qrels = ctx.collection.qrels["train"]
    examples = labelled_examples(ctx.collection.queries, train_positives(ctx))
    write_training_set(ctx.workdir / "md0" / "train.jsonl", examples)
    metrics = _train_and_save(ctx, "md0", examples)
    model, tokenizer = load_dual(ctx, "md0")
    corpus = corpus_embeddings(ctx, model, tokenizer)
    queries = {q: ctx.collection.queries[q] for q in qrels}
    c = query_candidates(ctx, model, tokenizer, corpus, queries, ctx.config.mining.top_k)
    save_candidates(ctx.workdir / "md0" / "candidates_train.safetensors", c)
    return metrics


def cross_batch_worker(
    rank: int,
    world: int,
    backbone_path: Path,
    dual: DualEncoderConfig,
    train: TrainConfig,
    examples: list[TrainExample],
    passages: list[str],
    frozen: np.ndarray | None,
    folder: Path,
) -> None:
    """One worker of MD0 with cross-batch negatives (spawned or torchrun); rank 0 saves."""
    backbone, tokenizer = load_backbone(backbone_path)
    model = DualEncoder(backbone, dual)
    train_dual_encoder(
        model,
        tokenizer,
        examples,
        passages,
        train,
        workdir=folder if rank == 0 else None,
        passage_embeddings=frozen,
        rank=rank,
        world_size=world,
    )
    if rank == 0:
        save_encoder(model, tokenizer, folder / "model")


def cross_batch_train(config: PipelineConfig, world: int) -> TrainConfig:
    """MD0's optimisation settings for ``world`` cross-batch workers (``world`` × the epochs when
    ``cross_batch_equal_steps``, so both make the same number of optimizer steps)."""
    train = config.dual_train
    if config.cross_batch_equal_steps:
        train = replace(train, epochs=train.epochs * world)
    return train


def cross_batch_args(
    ctx: PipelineContext,
    examples: list[TrainExample],
    frozen: np.ndarray | None,
    folder: Path,
    world: int,
) -> tuple[Any, ...]:
    """The arguments of ``cross_batch_worker`` after ``rank, world`` (spawned or torchrun)."""
    return (
        ctx.backbone_path,
        ctx.config.dual,
        cross_batch_train(ctx.config, world),
        examples,
        ctx.passages,
        frozen,
        folder,
    )


@pipeline_step(
    "md0_cross",
    fields=("dual", "dual_train", "bf16", "workers", "cross_batch_equal_steps"),
    reads=("md0/train.jsonl",),
)
def step_md0_cross(ctx: PipelineContext) -> dict[str, Any]:
    """MD0 with cross-batch negatives: ``workers`` processes, same per-worker batch size."""
    folder = ctx.workdir / "md0_cross"
    examples = read_training_set(ctx.artifact("md0", "train.jsonl"))
    model, tokenizer = fresh_dual(ctx)
    corpus = corpus_embeddings(ctx, model, tokenizer)
    frozen = None if ctx.config.dual.train_passage_tower else corpus
    t0 = time.perf_counter()
    spawn_workers(
        cross_batch_worker,
        ctx.config.workers,
        cross_batch_args(ctx, examples, frozen, folder, ctx.config.workers),
    )
    seconds = time.perf_counter() - t0
    model, tokenizer = load_dual(ctx, "md0_cross")
    corpus = corpus_embeddings(ctx, model, tokenizer)
    return {
        "test": evaluate_dual(ctx, model, tokenizer, corpus),
        "workers": ctx.config.workers,
        "epochs": cross_batch_train(ctx.config, ctx.config.workers).epochs,
        "train_seconds": seconds,
    }


def md0_train_candidates(ctx: PipelineContext, k: int) -> Candidates:
    """MD0's top ``k`` of every labelled train query: the stored candidates when deep enough,
    else retrieved again with the saved MD0 model (queries only; the corpus vectors are cached)."""
    queries = ctx.collection.queries
    stored = load_candidates(ctx.artifact("md0", "candidates_train.safetensors"), queries)
    if stored.rows.shape[1] >= k:
        return head_candidates(stored, k)
    model, tokenizer = load_dual(ctx, "md0")
    corpus = corpus_embeddings(ctx, model, tokenizer)
    train = _queries(ctx, list(ctx.collection.qrels["train"]))
    return query_candidates(ctx, model, tokenizer, corpus, train, k)


def head_candidates(c: Candidates, k: int, query_ids: Sequence[str] | None = None) -> Candidates:
    """The first ``k`` candidates of each query (of ``query_ids`` only, in their order, if given)."""
    keep: Sequence[int] = range(len(c.query_ids))
    if query_ids is not None:
        where = {q: i for i, q in enumerate(c.query_ids)}
        keep = [where[q] for q in query_ids]
    idx = np.asarray(list(keep), dtype=np.int64)
    return Candidates(
        [c.query_ids[i] for i in idx],
        [c.queries[i] for i in idx],
        c.rows[idx, :k],
        c.scores[idx, :k],
    )


def dev_rerank_metrics(
    ctx: PipelineContext,
    folder: Path,
    model: CrossEncoder,
    tokenizer: PreTrainedTokenizerBase,
    c: Candidates,
    dev_ids: Sequence[str],
) -> dict[str, Any]:
    """nDCG@10 / MRR@10 of MD0's own order vs the CE's order of MD0's top ``CE_DEV_DEPTH`` on
    the dev queries (held out of CE training; never the test split)."""
    head = head_candidates(c, CE_DEV_DEPTH, dev_ids)
    logits = scored_blocks(ctx, folder, model, tokenizer, head)
    qrels = _dev_qrels(ctx, dev_ids)
    doc_ids = ctx.collection.doc_ids
    keys = ("nDCG@10", "MRR@10")
    md0 = evaluate_rows(head.query_ids, head.rows, doc_ids, qrels)
    ce = evaluate_rows(head.query_ids, rerank_rows(head, logits), doc_ids, qrels)
    return {
        "queries": len(dev_ids),
        "depth": head.rows.shape[1],
        "md0": {k: md0[k] for k in keys},
        "ce_rerank": {k: ce[k] for k in keys},
    }


@pipeline_step(
    "ce",
    fields=(
        "cross",
        "cross_train",
        "cross_layers",
        "cross_negative_depth",
        "dev_fraction",
        "seed",
        "mining.top_k",
    ),
    reads=("md0/candidates_train.safetensors", "md0/model"),
)
def step_ce(ctx: PipelineContext) -> dict[str, Any]:
    folder = ctx.workdir / "ce"
    train_ids, dev_ids = dev_split(ctx)
    positives = train_positives(ctx)
    queries = ctx.collection.queries
    depth = ctx.config.cross_negative_depth or ctx.config.mining.top_k
    c = md0_train_candidates(ctx, max(depth, CE_DEV_DEPTH))
    # MD0's own mistakes (and unlabelled positives) in its top ``depth``
    pool = undenoised_negatives(head_candidates(c, depth), positives)
    train_set = set(train_ids)
    examples = [e for e in labelled_examples(queries, positives, pool) if e.query_id in train_set]
    write_training_set(folder / "train.jsonl", examples)
    model, tokenizer = fresh_cross(ctx)
    spread = check_head_input(ctx, model, tokenizer, examples)
    t0 = time.perf_counter()
    state = train_cross_encoder(
        model, tokenizer, examples, ctx.passages, ctx.config.cross_train, workdir=folder
    )
    seconds = time.perf_counter() - t0
    save_encoder(model, tokenizer, folder / "model")
    losses = state.losses
    tenth = max(1, len(losses) // 10)
    dev = dev_rerank_metrics(ctx, folder / "dev_scores", model, tokenizer, c, dev_ids)
    ctx.log(f"[ce] dev rerank of MD0 top {CE_DEV_DEPTH}: {json.dumps(dev)}")
    return {
        "train_examples": len(examples),
        "train_seconds": seconds,
        "steps": state.step,
        "loss_first_tenth": float(np.mean(losses[:tenth])) if losses else None,
        "loss_last_tenth": float(np.mean(losses[-tenth:])) if losses else None,
        "dev_queries": len(dev_ids),
        "dev": dev,
        "head_input_spread": spread,
    }


def check_head_input(
    ctx: PipelineContext,
    model: CrossEncoder,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainExample],
    n: int = 16,
) -> float:
    """Warn when the CE's head input is (nearly) the same for every pair: such a CE learns very
    slowly (the 3-layer [CLS] cross-encoder of the first SciFact run never left loss 0.69).

    Measured on the positive and first negative of the first ``n`` examples."""
    chosen = [(e.query, p) for e in examples[:n] for p in (e.positive, *e.negatives[:1])]
    if len(chosen) < 2:
        return float("nan")
    batch = tokenize(
        tokenizer,
        [q for q, _ in chosen],
        model.config.max_length,
        [ctx.passages[p] for _, p in chosen],
    )
    spread = head_input_spread(model, batch)
    ctx.log(f"[ce] head input spread {spread:.2e} ({model.config.pooling} pooling)")
    if spread < MIN_HEAD_SPREAD:
        ctx.log(
            f"[ce] WARNING: head input spread {spread:.2e} < {MIN_HEAD_SPREAD:g}: the "
            f"{model.config.pooling!r} vector is nearly the same for every pair, so the CE "
            "will learn very slowly; keep more layers (cross_layers) or use pooling='mean'"
        )
    return spread


def mine_candidates(ctx: PipelineContext) -> tuple[Candidates, dict[str, set[int]], list[str]]:
    """What ``mine`` scores: MD0's stored top-k of every train query, with each dev query's
    labelled positives forced in (the calibration needs both classes); also the train positives
    and the dev query ids."""
    positives = train_positives(ctx)
    _, dev_ids = dev_split(ctx)
    c = load_candidates(ctx.artifact("md0", "candidates_train.safetensors"), ctx.collection.queries)
    return with_positives(c, positives, dev_ids), positives, dev_ids


@pipeline_step(
    "mine",
    fields=("mining.low", "mining.max_negatives", "dev_fraction", "seed"),
    reads=("md0/candidates_train.safetensors", "ce/model"),
)
def step_mine(ctx: PipelineContext) -> dict[str, Any]:
    """Score MD0's train candidates, calibrate on the dev queries, write MD1 + ablation data."""
    folder = ctx.workdir / "mine"
    queries = ctx.collection.queries
    c, positives, dev_ids = mine_candidates(ctx)
    model, tokenizer = load_cross(ctx)
    logits = scored_blocks(ctx, folder / "scores", model, tokenizer, c)
    labels = candidate_labels(c, positives)
    dev = np.isin(np.asarray(c.query_ids), dev_ids)
    scaler = fit_platt(logits[dev].reshape(-1), labels[dev].reshape(-1))
    report = calibration_report(logits[dev].reshape(-1), labels[dev].reshape(-1), scaler)
    (folder / "calibration.json").write_text(json.dumps(report, indent=2))
    probs = scaler(logits)
    cfg = ctx.config.mining
    negs = denoised_negatives(c, probs, positives, cfg.low, cfg.max_negatives)
    md1 = labelled_examples(queries, positives, negs)
    raw = labelled_examples(
        queries, positives, undenoised_negatives(c, positives, cfg.max_negatives)
    )
    write_training_set(folder / "md1_train.jsonl", md1)
    write_training_set(folder / "no_denoise_train.jsonl", raw)
    non_pos = labels == 0
    return {
        "calibration": report,
        "candidates": int(labels.size),
        "non_positive_candidates": int(non_pos.sum()),
        "kept_negatives": int(sum(len(v) for v in negs.values())),
        "denoised_away": int(non_pos.sum() - sum(len(v) for v in negs.values())),
        "queries_without_negative": int(sum(1 for v in negs.values() if not v)),
    }


@pipeline_step(
    "md1",
    fields=("dual", "dual_train", "bf16"),
    reads=("mine/md1_train.jsonl",),
)
def step_md1(ctx: PipelineContext) -> dict[str, Any]:
    return _train_and_save(ctx, "md1", read_training_set(ctx.artifact("mine", "md1_train.jsonl")))


@pipeline_step(
    "no_denoise",
    fields=("dual", "dual_train", "bf16"),
    reads=("mine/no_denoise_train.jsonl",),
)
def step_no_denoise(ctx: PipelineContext) -> dict[str, Any]:
    examples = read_training_set(ctx.artifact("mine", "no_denoise_train.jsonl"))
    return _train_and_save(ctx, "no_denoise", examples)


@pipeline_step(
    "augment",
    fields=(
        "mining.top_k",
        "mining.low",
        "mining.high",
        "mining.max_negatives",
        "mining.pseudo_precision",
        "dev_fraction",
        "seed",
        "bf16",
    ),
    reads=(
        "md1/model",
        "ce/model",
        "mine/calibration.json",
        "mine/scores",
        "mine/md1_train.jsonl",
        "md0/candidates_train.safetensors",
    ),
)
def step_augment(ctx: PipelineContext) -> dict[str, Any]:
    """MD1 retrieves for unlabelled questions; the calibrated CE pseudo-labels them."""
    folder = ctx.workdir / "augment"
    unlabeled = ctx.collection.unlabeled_queries
    model, tokenizer = load_dual(ctx, "md1")
    corpus = corpus_embeddings(ctx, model, tokenizer)
    c = query_candidates(ctx, model, tokenizer, corpus, unlabeled, ctx.config.mining.top_k)
    ce, ce_tok = load_cross(ctx)
    probs = load_scaler(ctx)(scored_blocks(ctx, folder / "scores", ce, ce_tok, c))
    cfg = ctx.config.mining
    high, chosen = cfg.high, {}
    if cfg.pseudo_precision is not None:
        curve = top1_precision_curve(*dev_probs_labels(ctx, ce, ce_tok))
        picked = choose_high_threshold(curve, cfg.pseudo_precision)
        high = max(picked, cfg.low) if picked is not None else cfg.high
        chosen = {"dev_top1_curve": curve, "high_chosen_on_dev": picked}
        ctx.log(f"[augment] high threshold {high} (dev top-1 precision >= {cfg.pseudo_precision})")
    pseudo = pseudo_positives(c, probs, high)
    negs = denoised_negatives(
        c, probs, {q: {p} for q, p in pseudo.items()}, cfg.low, cfg.max_negatives
    )
    extra = pseudo_examples(unlabeled, pseudo, negs)
    md1 = read_training_set(ctx.artifact("mine", "md1_train.jsonl"))
    write_training_set(folder / "pseudo.jsonl", extra)
    write_training_set(folder / "md2_train.jsonl", [*md1, *extra])
    return {
        "unlabeled_queries": len(unlabeled),
        "high": high,
        "max_p": float(probs.max()) if probs.size else float("nan"),
        "pseudo_labelled": len(extra),
        "mean_negatives": float(np.mean([len(e.negatives) for e in extra])) if extra else 0.0,
        **chosen,
    }


def dev_probs_labels(
    ctx: PipelineContext, ce: CrossEncoder, tokenizer: PreTrainedTokenizerBase
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated P and 0/1 labels (M_dev, k) of the dev queries' candidates, as the mine step
    scored them (read from its score cache). Each dev query's labelled positives are in its
    candidates (the calibration needs both classes), so top-1 precision here is an upper bound
    of what unlabelled queries get."""
    c, positives, dev_ids = mine_candidates(ctx)
    logits = scored_blocks(ctx, ctx.artifact("mine", "scores"), ce, tokenizer, c)
    dev = np.isin(np.asarray(c.query_ids), dev_ids)
    probs = load_scaler(ctx)(logits)
    return probs[dev], candidate_labels(c, positives)[dev]


@pipeline_step(
    "md2",
    fields=("dual", "dual_train", "bf16"),
    reads=("augment/md2_train.jsonl",),
)
def step_md2(ctx: PipelineContext) -> dict[str, Any]:
    examples = read_training_set(ctx.artifact("augment", "md2_train.jsonl"))
    metrics = _train_and_save(ctx, "md2", examples)
    model, tokenizer = load_dual(ctx, "md2")
    exact_index(corpus_embeddings(ctx, model, tokenizer)).save(ctx.workdir / "md2" / "index")
    return metrics


@pipeline_step(
    "rerank",
    fields=("rerank_depth", "dev_fraction", "seed", "bf16"),
    reads=("md2/model", "ce/model"),
)
def step_rerank(ctx: PipelineContext) -> dict[str, Any]:
    folder = ctx.workdir / "rerank"
    model, tokenizer = load_dual(ctx, "md2")
    corpus = corpus_embeddings(ctx, model, tokenizer)
    queries = ctx.collection.split_queries("test")
    c = query_candidates(ctx, model, tokenizer, corpus, queries, EVAL_DEPTH)
    depth = min(ctx.config.rerank_depth, c.rows.shape[1])
    head = Candidates(c.query_ids, c.queries, c.rows[:, :depth], c.scores[:, :depth])
    ce, ce_tok = load_cross(ctx)
    logits = scored_blocks(ctx, folder / "scores", ce, ce_tok, head)
    rows = np.concatenate([rerank_rows(head, logits), c.rows[:, depth:]], axis=1)
    qrels = ctx.collection.qrels["test"]
    doc_ids = ctx.collection.doc_ids
    # Fusion of MD2's and the CE's scores, its weight chosen on the CE's dev queries (never test).
    _, dev_ids = dev_split(ctx)
    dev = query_candidates(ctx, model, tokenizer, corpus, _queries(ctx, dev_ids), depth)
    dev_logits = scored_blocks(ctx, folder / "dev_scores", ce, ce_tok, dev)
    weight, per_weight = choose_fusion_weight(dev, dev_logits, doc_ids, _dev_qrels(ctx, dev_ids))
    fused = rerank_rows(head, fuse_scores(head.scores, logits, weight))
    fused_rows = np.concatenate([fused, c.rows[:, depth:]], axis=1)
    ctx.log(f"[rerank] fusion weight {weight} (dev nDCG@10 per CE weight {per_weight})")
    return {
        "test": evaluate_rows(c.query_ids, rows, doc_ids, qrels),
        "test_fused": evaluate_rows(c.query_ids, fused_rows, doc_ids, qrels),
        "fusion_weight": weight,
        "dev_ndcg10_per_weight": {str(w): v for w, v in per_weight.items()},
        "depth": depth,
    }
