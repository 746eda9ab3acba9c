"""The SciFact example of EDL-Dist (Liu et al., CCPE 2022, arXiv 2207.06667): distil the 6-layer
MiniLM cross-encoder (the teacher, trained briefly by the RocketQA cross-encoder loop) into a
2-layer student, and rerank BM25's top 50 of the SciFact test queries with each model.

Candidates come from BM25 (seconds on CPU; a dense retriever would first need a ~40-minute corpus
encode on the shared 2 cores). Every model is saved in the cross-encoder folder format of
``retrieval.encoders.save_encoder``, the ``cross/`` folder a retriever loads, and reranks through
``Retriever.rerank_many`` / ``Retriever.rerank``: the code that serves it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from warmstart.data.retrieval import RetrievalCollection
from warmstart.distill.data import GroupDataset
from warmstart.metrics import retrieval_per_query
from warmstart.retrieval.bm25 import BM25Retriever
from warmstart.retrieval.encoders import (
    CrossEncoder,
    CrossEncoderConfig,
    DualEncoder,
    DualEncoderConfig,
    load_backbone,
    load_encoder,
    save_encoder,
)
from warmstart.retrieval.evaluation import exact_index, run_from_rows
from warmstart.retrieval.inference import Document, Hit, Retriever
from warmstart.retrieval.mining import (
    Candidates,
    labelled_examples,
    positive_rows,
    undenoised_negatives,
)
from warmstart.retrieval.pipeline import truncate_layers
from warmstart.retrieval.training import (
    TrainConfig,
    TrainExample,
    sample_negatives,
    train_cross_encoder,
)


@dataclass(frozen=True)
class ExampleConfig:
    """The SciFact distillation example.

    Attributes:
        depth: BM25 candidates per query (negatives are drawn from them; test reranks them).
        max_length: tokens of a (query, passage) pair, for teacher and student.
        teacher_examples: train examples the teacher sees at most (1 epoch, listwise 1 + 7
            negatives, 4 queries a step; SciFact has 900 with a BM25 negative, 225 steps, about
            5 minutes on one idle core in bf16; 100 steps at lr 1e-4 or 2e-4 left the loss at
            the uniform ln 8, the RocketQA CE also needed ~200 steps to leave it).
        teacher_lr: the teacher's peak learning rate.
        teacher_pooling: what the teacher's head reads (``cls``: the RocketQA ``scifact_cpu``
            cross-encoder's recipe, as are the learning rate and the listwise loss).
        student_layers: MiniLM layers the student keeps.
        student_pooling: ``mean`` (all-MiniLM-L6-v2's [CLS] state is constant for every pair
            after its first layers, see docs/retrieval.md).
        group_negatives: negatives per student sample (a sample = 1 positive + these).
    """

    depth: int = 50
    max_length: int = 128
    teacher_examples: int = 1000
    teacher_lr: float = 1e-4
    teacher_pooling: str = "cls"
    student_layers: int = 2
    student_pooling: str = "mean"
    group_negatives: int = 3

    def __post_init__(self) -> None:
        for name in ("depth", "max_length", "teacher_examples", "student_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.group_negatives < 1:
            raise ValueError(f"group_negatives={self.group_negatives}: must be >= 1")


def bm25_candidates(
    collection: RetrievalCollection, queries: Mapping[str, str], k: int
) -> Candidates:
    """BM25's top ``k`` corpus rows of each query (ids sorted)."""
    ids = sorted(queries)
    texts = [queries[q] for q in ids]
    scores, rows = BM25Retriever().fit(collection.passages()).search(texts, k)
    return Candidates(ids, texts, rows, scores)


def train_examples(collection: RetrievalCollection, k: int) -> list[TrainExample]:
    """One example per labelled train (query, positive), negatives = BM25's top-k non-positives."""
    doc_row = {d: i for i, d in enumerate(collection.doc_ids)}
    qrels = collection.qrels["train"]
    positives = positive_rows(sorted(qrels), qrels, doc_row)
    c = bm25_candidates(collection, {q: collection.queries[q] for q in qrels}, k)
    pool = undenoised_negatives(c, positives)
    return [e for e in labelled_examples(collection.queries, positives, pool) if e.negatives]


def groups_from_examples(
    examples: Sequence[TrainExample], passages: Sequence[str], n_negatives: int, seed: int
) -> GroupDataset:
    """Each example's positive plus ``n_negatives`` negatives of its pool, drawn once."""
    rng = np.random.default_rng([seed, 5])
    queries, groups = [], []
    for ex in examples:
        rows = [ex.positive, *sample_negatives(ex, n_negatives, len(passages), rng)]
        queries.append(ex.query)
        groups.append(tuple(passages[r] for r in rows))
    return GroupDataset(tuple(queries), tuple(groups))


def student_dataset(
    collection: RetrievalCollection, config: ExampleConfig, seed: int = 0
) -> GroupDataset:
    """The distillation samples: each train example's positive plus ``group_negatives`` BM25
    negatives (drawn once from ``seed``)."""
    examples = train_examples(collection, config.depth)
    return groups_from_examples(examples, collection.passages(), config.group_negatives, seed)


def fresh_cross(
    backbone_path: Path, layers: int | None, config: CrossEncoderConfig
) -> tuple[CrossEncoder, PreTrainedTokenizerBase]:
    """A cross-encoder on the first ``layers`` layers of a pre-trained backbone."""
    backbone, tokenizer = load_backbone(backbone_path)
    return CrossEncoder(truncate_layers(backbone, layers), config), tokenizer


def fresh_student(
    backbone_path: Path, config: ExampleConfig
) -> tuple[CrossEncoder, PreTrainedTokenizerBase]:
    cross = CrossEncoderConfig(max_length=config.max_length, pooling=config.student_pooling)
    return fresh_cross(backbone_path, config.student_layers, cross)


def train_teacher(
    collection: RetrievalCollection,
    backbone_path: Path,
    folder: Path,
    config: ExampleConfig,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Path:
    """The 6-layer teacher, trained once (bf16 autocast) and cached in ``folder``."""
    if (folder / "encoder.json").is_file():
        log(f"teacher: cached in {folder}")
        return folder
    examples = train_examples(collection, config.depth)
    rng = np.random.default_rng([seed, 3])
    chosen = [examples[int(i)] for i in rng.permutation(len(examples))[: config.teacher_examples]]
    model, tokenizer = fresh_cross(
        backbone_path,
        None,
        CrossEncoderConfig(max_length=config.max_length, pooling=config.teacher_pooling),
    )
    train = TrainConfig(
        epochs=1,
        batch_size=4,  # queries a step: 4 x (1 + 7) = 32 pairs
        lr=config.teacher_lr,
        negatives_per_query=7,
        cross_loss="listwise",
        checkpoint_every=25,
        seed=seed,
    )
    log(f"teacher: training on {len(chosen)} examples ({len(chosen) // 4} steps) into {folder}")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = train_cross_encoder(
            model, tokenizer, chosen, collection.passages(), train, workdir=folder / "train"
        )
    save_encoder(model, tokenizer, folder)
    meta = {"example": asdict(config), "train": asdict(train), "steps": state.step}
    (folder / "teacher.json").write_text(json.dumps(meta, indent=2))
    return folder


def reranker(cross_dir: Path, collection: RetrievalCollection, batch_size: int = 64) -> Retriever:
    """A :class:`Retriever` that serves ``cross_dir`` (a cross-encoder folder) for ``rerank``.

    Its query tower and index are placeholders (candidates come from BM25 here): only the rerank
    path is used, the same code that serves a retriever folder's ``cross/``.
    """
    cross, tokenizer = load_encoder(cross_dir)
    if not isinstance(cross, CrossEncoder):
        raise ValueError(f"{cross_dir}: not a cross-encoder folder")
    backbone: object = cross.backbone
    dual = DualEncoder(backbone, DualEncoderConfig(towers="shared"))  # type: ignore[arg-type]
    docs = [
        Document(d, t, x)
        for d, t, x in zip(collection.doc_ids, collection.titles, collection.texts, strict=True)
    ]
    index = exact_index(np.zeros((len(docs), dual.dim), dtype=np.float32))
    return Retriever(dual, tokenizer, index, docs, (cross, tokenizer), batch_size)


def rerank_per_query(
    model: Retriever,
    collection: RetrievalCollection,
    candidates: Candidates,
    split: str = "test",
    bf16: bool = True,
) -> dict[str, tuple[float, float, float]]:
    """Per-query (nDCG@10, MRR@10, Recall@100) of ``candidates`` reordered by
    ``model.rerank_many`` (bf16 autocast when ``bf16``: 3x faster on this CPU)."""
    hits = [[_hit(collection, int(r)) for r in row] for row in candidates.rows]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        reranked = model.rerank_many(candidates.queries, hits)
    where = {d: i for i, d in enumerate(collection.doc_ids)}
    rows = [[where[h.doc_id] for h in hit_list] for hit_list in reranked]
    run = run_from_rows(candidates.query_ids, np.asarray(rows), collection.doc_ids)
    return retrieval_per_query(run, collection.qrels[split])


def _hit(collection: RetrievalCollection, row: int) -> Hit:
    return Hit(collection.doc_ids[row], 0.0, collection.titles[row], collection.texts[row])


def mean_ndcg(per_query: Mapping[str, tuple[float, float, float]]) -> float:
    return float(np.mean([v[0] for v in per_query.values()]))


def paired_ndcg_diffs(
    a: Mapping[str, tuple[float, float, float]], b: Mapping[str, tuple[float, float, float]]
) -> np.ndarray:
    """(Q,) per-query nDCG@10 differences a - b over the queries both scored (sorted ids)."""
    ids: Sequence[str] = sorted(set(a) & set(b))
    return np.array([a[q][0] - b[q][0] for q in ids])
