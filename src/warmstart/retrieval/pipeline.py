"""RocketQA's four-step training pipeline (Qu et al., NAACL 2021, arXiv 2010.08191, section 4.5).

    zero_shot  the pre-trained encoder, no training (reference row)
    md0        dual encoder, in-batch negatives (random negatives)
    md0_cross  MD0 with cross-batch negatives over ``workers`` processes (ablation)
    ce         cross-encoder trained on positives + MD0's own retrieved non-positives,
               then calibrated (Platt) on held-out labelled queries
    mine       CE scores MD0's top-k of every train query -> denoised negatives (P < low)
    md1        dual encoder retrained from the pre-trained checkpoint on denoised hard negatives
    no_denoise same, every retrieved non-positive a negative (ablation)
    augment    MD1 retrieves for the unlabelled questions, the CE pseudo-labels them
    md2        dual encoder retrained on labelled + pseudo-labelled data
    rerank     MD2's top ``rerank_depth`` reordered by the CE

Every step writes its artifacts into ``workdir/<step>/`` (model.safetensors + encoder.json,
data jsonl, metrics.json, config.json) and a ``done.json`` last; a step whose ``done.json`` exists
is skipped, a training step resumes from ``<step>/checkpoint``, and cross-encoder scoring resumes
block by block.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from warmstart.data.retrieval import RetrievalCollection
from warmstart.retrieval.calibration import PlattScaler, calibration_report, fit_platt
from warmstart.retrieval.distributed import spawn_workers
from warmstart.retrieval.encoders import (
    CrossEncoder,
    CrossEncoderConfig,
    DualEncoder,
    DualEncoderConfig,
    head_input_spread,
    load_backbone,
    load_encoder,
    save_encoder,
    tokenize,
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
    MiningConfig,
    candidate_labels,
    choose_high_threshold,
    denoised_negatives,
    labelled_examples,
    positive_rows,
    pseudo_examples,
    pseudo_positives,
    read_training_set,
    retrieve,
    score_candidates,
    top1_precision_curve,
    undenoised_negatives,
    with_positives,
    write_training_set,
)
from warmstart.retrieval.training import (
    TrainConfig,
    TrainExample,
    train_cross_encoder,
    train_dual_encoder,
)

STEPS = (
    "zero_shot",
    "md0",
    "md0_cross",
    "ce",
    "mine",
    "md1",
    "no_denoise",
    "augment",
    "md2",
    "rerank",
)
OPTIONAL_STEPS = ("md0_cross", "no_denoise", "rerank")
EVAL_DEPTH = 100  # Recall@100 needs 100 hits
CE_DEV_DEPTH = 20  # the ce step reports how the CE reorders MD0's top 20 of the dev queries
MIN_HEAD_SPREAD = 0.01  # below this the CE head sees ~one vector for every pair (warned)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the four steps need besides data and the pre-trained backbone.

    Attributes:
        dual / cross: encoder settings.
        dual_train / cross_train: optimisation of each model.
        mining: candidate depth and the two probability thresholds.
        cross_layers: keep only the first N backbone layers in the cross-encoder (None = all).
        cross_negative_depth: MD0 candidates per train query whose non-positives are the CE's
            hard negatives (None = ``mining.top_k``, the candidates the md0 step stored).
        dev_fraction: share of train queries held out of CE training to calibrate its scores.
        workers: processes of the cross-batch step (gloo on 127.0.0.1).
        cross_batch_equal_steps: the cross-batch step runs ``workers`` times MD0's epochs, so it
            makes as many optimizer steps as MD0 (each step sees ``workers`` × the batch); with
            False it runs MD0's epochs, i.e. ``1 / workers`` of MD0's steps.
        rerank_depth: MD2 candidates the CE reorders.
        steps: steps to run, in pipeline order (optional ones may be left out).
        encode_batch_size / score_batch_size: inference batch sizes.
        bf16: bf16 autocast for inference (only faster on CPUs with native bf16).
        seed: dev split and all sampling.
    """

    dual: DualEncoderConfig = field(default_factory=DualEncoderConfig.minilm)
    cross: CrossEncoderConfig = field(default_factory=CrossEncoderConfig)
    dual_train: TrainConfig = field(default_factory=TrainConfig)
    cross_train: TrainConfig = field(default_factory=TrainConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    cross_layers: int | None = None
    cross_negative_depth: int | None = None
    dev_fraction: float = 0.1
    workers: int = 2
    cross_batch_equal_steps: bool = True
    rerank_depth: int = 50
    steps: tuple[str, ...] = STEPS
    encode_batch_size: int = 32
    score_batch_size: int = 32
    bf16: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise ValueError(f"steps={unknown}: allowed values are {', '.join(STEPS)}")
        missing = [s for s in STEPS if s not in OPTIONAL_STEPS and s not in self.steps]
        if missing:
            raise ValueError(f"steps: {missing} are required (optional: {OPTIONAL_STEPS})")
        if not 0.0 < self.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction={self.dev_fraction}: must be in (0, 1)")
        if self.workers < 1 or self.rerank_depth < 1:
            raise ValueError(f"workers={self.workers}, rerank_depth={self.rerank_depth}: >= 1")
        if self.cross_layers is not None and self.cross_layers < 1:
            raise ValueError(f"cross_layers={self.cross_layers}: must be >= 1 or None")
        if self.cross_negative_depth is not None and self.cross_negative_depth < 2:
            raise ValueError(f"cross_negative_depth={self.cross_negative_depth}: >= 2 or None")

    @classmethod
    def tiny(cls) -> PipelineConfig:
        """Seconds on a tiny random BERT + ``synthetic_collection`` (tests)."""
        return cls(
            dual=DualEncoderConfig(
                pooling="mean", similarity="cosine", scale=20.0, passage_max_length=48
            ),
            cross=CrossEncoderConfig(max_length=64),
            dual_train=TrainConfig(epochs=2, batch_size=8, lr=1e-3, checkpoint_every=2),
            cross_train=TrainConfig(epochs=1, batch_size=16, lr=1e-3, checkpoint_every=2),
            # pseudo_precision set so that the tests exercise the dev-chosen threshold
            mining=MiningConfig(top_k=5, pseudo_precision=0.5),
            rerank_depth=10,
            encode_batch_size=16,
            score_batch_size=16,
        )

    @classmethod
    def scifact_cpu(cls) -> PipelineConfig:
        """SciFact on a shared 2-core CPU (see docs/retrieval.md for the measured costs)."""
        return cls(
            dual=DualEncoderConfig.minilm(),
            cross=CrossEncoderConfig(max_length=128),  # query + title + ~90 abstract tokens
            # all 6 layers: after the first 3 the [CLS] state is the same for every pair (the
            # checkpoint was trained with mean pooling), so a 3-layer CE could not learn
            cross_layers=None,
            # negatives from MD0's whole top 50, the depth the CE later reranks: chosen on the
            # dev queries (top 10: CE alone on MD2's top 50 0.708, MD0's top 20 0.822; top 50:
            # 0.793 and 0.830)
            cross_negative_depth=50,
            dual_train=TrainConfig(
                epochs=2,  # query tower only, but ~4 min an epoch on the shared CPU
                batch_size=32,
                lr=5e-5,  # few steps (56): a higher peak rate
                negatives_per_query=1,
            ),
            cross_train=TrainConfig(
                epochs=3,  # 1 epoch: dev rerank 0.741 < MD0 0.790; 3 epochs: 0.822 > 0.793
                batch_size=4,  # queries a step: 4 x (1 positive + 7 negatives) = 32 pairs
                lr=1e-4,  # 4e-5: loss only fell late (2.08 -> 1.33), dev rerank 0.562 < MD0 0.790
                negatives_per_query=7,
                cross_loss="listwise",
            ),
            # CE-scores 6 MD0 candidates per train query; pseudo-label threshold chosen on the
            # dev queries (the fixed 0.9 let no SciFact question through: max P 0.888)
            mining=MiningConfig(top_k=6, pseudo_precision=0.85),
            rerank_depth=50,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PipelineContext:
    """Inputs shared by every step."""

    collection: RetrievalCollection
    backbone_path: Path
    workdir: Path
    config: PipelineConfig
    log: Callable[[str], None] = print
    passages: list[str] = field(init=False)
    doc_row: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.passages = self.collection.passages()
        self.doc_row = {d: i for i, d in enumerate(self.collection.doc_ids)}

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"


# ---------------------------------------------------------------- small helpers


def _step_done(folder: Path) -> dict[str, Any] | None:
    done = folder / "done.json"
    return json.loads(done.read_text()) if done.is_file() else None


def _finish(folder: Path, metrics: dict[str, Any], config: Any) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (folder / "done.json").write_text(json.dumps(metrics))
    return metrics


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


def save_candidates(path: Path, c: Candidates) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"rows": torch.from_numpy(c.rows), "scores": torch.from_numpy(c.scores)}
    save_file(tensors, str(path), metadata={"query_ids": json.dumps(c.query_ids)})


def load_candidates(path: Path, queries: dict[str, str]) -> Candidates:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        ids = json.loads(f.metadata()["query_ids"])
    t = load_file(str(path))
    return Candidates(ids, [queries[q] for q in ids], t["rows"].numpy(), t["scores"].numpy())


def scored_blocks(
    ctx: PipelineContext,
    folder: Path,
    model: CrossEncoder,
    tokenizer: PreTrainedTokenizerBase,
    c: Candidates,
    block: int = 50,
) -> np.ndarray:
    """CE logits (M, k) computed ``block`` queries at a time, each block cached in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for start in range(0, len(c.query_ids), block):
        path = folder / f"block-{start:06d}.safetensors"
        if path.is_file():
            out.append(load_file(str(path))["logits"].numpy())
            continue
        part = Candidates(
            c.query_ids[start : start + block],
            c.queries[start : start + block],
            c.rows[start : start + block],
            c.scores[start : start + block],
        )
        logits = score_candidates(
            model,
            tokenizer,
            part,
            ctx.passages,
            batch_size=ctx.config.score_batch_size,
            desc=f"CE {folder.name} {start}/{len(c.query_ids)}",
        )
        save_file({"logits": torch.from_numpy(logits)}, str(path))
        out.append(logits)
    return np.concatenate(out) if out else np.zeros((0, c.rows.shape[1]), dtype=np.float32)


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


# ---------------------------------------------------------------- dual-encoder training steps


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


def step_zero_shot(ctx: PipelineContext) -> dict[str, Any]:
    model, tokenizer = fresh_dual(ctx)
    corpus = corpus_embeddings(ctx, model, tokenizer)
    return {"test": evaluate_dual(ctx, model, tokenizer, corpus)}


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


def load_dual(ctx: PipelineContext, name: str) -> tuple[DualEncoder, PreTrainedTokenizerBase]:
    model, tokenizer = load_encoder(ctx.workdir / name / "model")
    assert isinstance(model, DualEncoder)
    return model, tokenizer


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


def step_md0_cross(ctx: PipelineContext) -> dict[str, Any]:
    """MD0 with cross-batch negatives: ``workers`` processes, same per-worker batch size."""
    folder = ctx.workdir / "md0_cross"
    examples = read_training_set(ctx.workdir / "md0" / "train.jsonl")
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


# ---------------------------------------------------------------- cross-encoder and mining


def md0_train_candidates(ctx: PipelineContext, k: int) -> Candidates:
    """MD0's top ``k`` of every labelled train query: the stored candidates when deep enough,
    else retrieved again with the saved MD0 model (queries only; the corpus vectors are cached)."""
    queries = ctx.collection.queries
    stored = load_candidates(ctx.workdir / "md0" / "candidates_train.safetensors", queries)
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


def load_cross(ctx: PipelineContext) -> tuple[CrossEncoder, PreTrainedTokenizerBase]:
    model, tokenizer = load_encoder(ctx.workdir / "ce" / "model")
    assert isinstance(model, CrossEncoder)
    return model, tokenizer


def load_scaler(ctx: PipelineContext) -> PlattScaler:
    raw = json.loads((ctx.workdir / "mine" / "calibration.json").read_text())
    return PlattScaler(raw["a"], raw["b"])


def mine_candidates(ctx: PipelineContext) -> tuple[Candidates, dict[str, set[int]], list[str]]:
    """What ``mine`` scores: MD0's stored top-k of every train query, with each dev query's
    labelled positives forced in (the calibration needs both classes); also the train positives
    and the dev query ids."""
    positives = train_positives(ctx)
    _, dev_ids = dev_split(ctx)
    c = load_candidates(
        ctx.workdir / "md0" / "candidates_train.safetensors", ctx.collection.queries
    )
    return with_positives(c, positives, dev_ids), positives, dev_ids


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


def step_md1(ctx: PipelineContext) -> dict[str, Any]:
    return _train_and_save(ctx, "md1", read_training_set(ctx.workdir / "mine" / "md1_train.jsonl"))


def step_no_denoise(ctx: PipelineContext) -> dict[str, Any]:
    examples = read_training_set(ctx.workdir / "mine" / "no_denoise_train.jsonl")
    return _train_and_save(ctx, "no_denoise", examples)


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
    md1 = read_training_set(ctx.workdir / "mine" / "md1_train.jsonl")
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
    logits = scored_blocks(ctx, ctx.workdir / "mine" / "scores", ce, tokenizer, c)
    dev = np.isin(np.asarray(c.query_ids), dev_ids)
    probs = load_scaler(ctx)(logits)
    return probs[dev], candidate_labels(c, positives)[dev]


def step_md2(ctx: PipelineContext) -> dict[str, Any]:
    examples = read_training_set(ctx.workdir / "augment" / "md2_train.jsonl")
    metrics = _train_and_save(ctx, "md2", examples)
    model, tokenizer = load_dual(ctx, "md2")
    exact_index(corpus_embeddings(ctx, model, tokenizer)).save(ctx.workdir / "md2" / "index")
    return metrics


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


def _queries(ctx: PipelineContext, ids: Sequence[str]) -> dict[str, str]:
    return {q: ctx.collection.queries[q] for q in ids}


def _dev_qrels(ctx: PipelineContext, dev_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Labels of the dev queries (a held-out part of the train split)."""
    return {q: ctx.collection.qrels["train"][q] for q in dev_ids}


STEP_FUNCTIONS: dict[str, Callable[[PipelineContext], dict[str, Any]]] = {
    "zero_shot": step_zero_shot,
    "md0": step_md0,
    "md0_cross": step_md0_cross,
    "ce": step_ce,
    "mine": step_mine,
    "md1": step_md1,
    "no_denoise": step_no_denoise,
    "augment": step_augment,
    "md2": step_md2,
    "rerank": step_rerank,
}


STEP_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # step: (config fields it reads, steps whose artifacts it reads)
    "zero_shot": (("dual", "bf16"), ()),
    "md0": (("dual", "dual_train", "bf16", "mining.top_k"), ()),  # + its stored top-k
    "md0_cross": (("dual", "dual_train", "bf16", "workers", "cross_batch_equal_steps"), ()),
    "ce": (
        # (mining.top_k, its negatives' depth when cross_negative_depth is None, via md0)
        ("cross", "cross_train", "cross_layers", "cross_negative_depth", "dev_fraction", "seed"),
        ("md0",),
    ),
    "mine": (("mining.top_k", "mining.low", "mining.max_negatives"), ("ce",)),
    "md1": (("dual", "dual_train", "bf16"), ("mine",)),
    # its data (MD0's top-k non-positives, written by mine) does not depend on the CE
    "no_denoise": (
        ("dual", "dual_train", "bf16", "mining.top_k", "mining.max_negatives"),
        ("md0",),
    ),
    "augment": (("mining.high", "mining.pseudo_precision"), ("md1", "mine")),
    "md2": (("dual", "dual_train", "bf16"), ("augment",)),
    "rerank": (("rerank_depth",), ("md2", "ce")),
}
"""What a finished step's artifacts depend on: a done step is only reused while these agree."""


def step_fields(name: str) -> set[str]:
    """Config fields (dotted paths) a step's artifacts depend on, through its upstream steps."""
    fields, upstream = STEP_INPUTS[name]
    out = set(fields)
    for step in upstream:
        out |= step_fields(step)
    return out


def _field(config: dict[str, Any], path: str) -> Any:
    value: Any = config
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def check_done_steps(ctx: PipelineContext, steps: Sequence[str]) -> None:
    """Refuse to reuse a finished step (or its finished inputs) made under another config.

    Each step's ``config.json`` holds the pipeline config it ran with; a step that would be
    skipped, or whose artifacts a step that runs would read, must agree with the current config
    on ``step_fields``. Raises ValueError naming the step and the fields that differ.
    """
    current = ctx.config.to_json()
    needed: set[str] = set()
    todo = list(steps)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(STEP_INPUTS[name][1])
    for name in (s for s in STEPS if s in needed):  # pipeline order: the earliest culprit first
        saved = ctx.workdir / name / "config.json"
        if _step_done(ctx.workdir / name) is None or not saved.is_file():
            continue
        old = json.loads(saved.read_text())
        diffs = sorted(
            f"{f}: {_field(old, f)!r} -> {_field(current, f)!r}"
            for f in step_fields(name)
            if _field(old, f) != _field(current, f)
        )
        if diffs:
            raise ValueError(
                f"step {name!r} in {ctx.workdir} was finished under another config "
                f"({'; '.join(diffs)}), so its artifacts do not match this run; use another "
                f"--workdir, or delete {ctx.workdir / name} and the steps that read it"
            )


def run_pipeline(ctx: PipelineContext, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or skip, when done) each configured step; returns step -> metrics.

    A step already done under a config that differs in what it depends on (``STEP_INPUTS``) is
    an error, not a silent reuse (``check_done_steps``).

    Args:
        only: run just these steps (their inputs must exist); None = all configured steps.
    """
    selected = [n for n in ctx.config.steps if only is None or n in only]
    check_done_steps(ctx, selected)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    (ctx.workdir / "pipeline_config.json").write_text(json.dumps(ctx.config.to_json(), indent=2))
    results: dict[str, Any] = {}
    for name in selected:
        folder = ctx.workdir / name
        done = _step_done(folder)
        if done is not None:
            ctx.log(f"[{name}] done, skipped")
            results[name] = done
            continue
        ctx.log(f"[{name}] running")
        t0 = time.perf_counter()
        metrics = STEP_FUNCTIONS[name](ctx)
        metrics["step_seconds"] = time.perf_counter() - t0
        results[name] = _finish(folder, metrics, _step_config(ctx.config, name))
        ctx.log(f"[{name}] {json.dumps(metrics.get('test', metrics))}")
    summary = ctx.workdir / "summary.json"
    summary.write_text(json.dumps(results, indent=2))
    return results


def _step_config(config: PipelineConfig, name: str) -> dict[str, Any]:
    out = config.to_json()
    out["step"] = name
    return out


def with_steps(config: PipelineConfig, steps: Sequence[str]) -> PipelineConfig:
    """The same config restricted to ``steps`` (kept in pipeline order)."""
    return replace(config, steps=tuple(s for s in STEPS if s in steps))
