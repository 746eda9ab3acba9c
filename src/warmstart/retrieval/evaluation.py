"""Turning retriever / reranker outputs into runs and scoring them with
:func:`warmstart.metrics.evaluate_retrieval` (the same code for every row of the RocketQA table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from warmstart.metrics import evaluate_retrieval
from warmstart.retrieval.index import VectorIndex, build_index
from warmstart.retrieval.mining import Candidates

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from warmstart.data.retrieval import RetrievalCollection
    from warmstart.retrieval.encoders import DualEncoder

EVAL_DEPTH = 100
"""Hits kept per evaluated query (Recall@100 needs 100)."""


def exact_index(corpus_embeddings: np.ndarray) -> VectorIndex:
    """Exact inner-product index over (N, H) corpus vectors."""
    index = build_index("exact", int(corpus_embeddings.shape[1]))
    index.add(np.ascontiguousarray(corpus_embeddings, dtype=np.float32))
    return index


def run_from_rows(
    query_ids: Sequence[str], rows: np.ndarray, doc_ids: Sequence[str]
) -> dict[str, list[str]]:
    """(M, k) corpus rows, best first -> qid -> ranked doc ids."""
    return {qid: [doc_ids[int(r)] for r in row] for qid, row in zip(query_ids, rows, strict=True)}


def rerank_rows(candidates: Candidates, scores: np.ndarray) -> np.ndarray:
    """Reorder each query's (k,) candidates by descending ``scores`` (M, k); stable on ties."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(candidates.rows, order, axis=1)


def evaluate_rows(
    query_ids: Sequence[str],
    rows: np.ndarray,
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@100 of ranked rows against ``qrels``."""
    return evaluate_retrieval(run_from_rows(query_ids, rows, doc_ids), qrels)


FUSION_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
"""Grid of CE weights ``choose_fusion_weight`` tries (0 = retriever order, 1 = CE order)."""


def _zscore(x: np.ndarray) -> np.ndarray:
    """Standardise each row (one query's candidates); a constant row becomes zeros."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=1, keepdims=True)
    return (x - x.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


def fuse_scores(dense: np.ndarray, ce: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * z(dense) + weight * z(ce)`` per query, both (M, k).

    Each score is standardised within its query's candidates first: dual-encoder similarities and
    CE logits live on unrelated scales, so a raw sum would let one of them decide alone.
    """
    if dense.shape != ce.shape:
        raise ValueError(f"fuse_scores: dense {dense.shape} and ce {ce.shape} differ")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fuse_scores: weight={weight} must lie in [0, 1]")
    if not (np.isfinite(dense).all() and np.isfinite(ce).all()):
        raise ValueError("fuse_scores: scores must be finite (NaN or inf found)")
    return (1.0 - weight) * _zscore(dense) + weight * _zscore(ce)


def choose_fusion_weight(
    candidates: Candidates,
    ce: np.ndarray,
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    weights: Sequence[float] = FUSION_WEIGHTS,
) -> tuple[float, dict[float, float]]:
    """The CE weight whose fused order has the best nDCG@10 on labelled ``candidates`` (held-out
    queries, never test), and nDCG@10 per weight. Ties go to the smaller weight (closer to the
    retriever, which needs no CE call)."""
    table = {}
    for w in weights:
        rows = rerank_rows(candidates, fuse_scores(candidates.scores, ce, w))
        table[float(w)] = evaluate_rows(candidates.query_ids, rows, doc_ids, qrels)["nDCG@10"]
    best = max(table, key=lambda w: (table[w], -w))
    return best, table


def dense_run(
    model: DualEncoder,
    tokenizer: PreTrainedTokenizerBase,
    collection: RetrievalCollection,
    query_ids: Sequence[str],
    *,
    depth: int = EVAL_DEPTH,
    cache_dir: Path | None = None,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """A dual encoder's top ``depth`` over the collection for ``query_ids``, exact search.

    Returns:
        scores (M, k) and corpus rows (M, k), best first, k = min(depth, N).
    """
    from warmstart.retrieval.encoding import encode_corpus_cached, encode_texts

    corpus = encode_corpus_cached(
        model, tokenizer, collection.passages(), cache_dir, batch_size=batch_size
    )
    texts = [collection.queries[q] for q in query_ids]
    vectors = encode_texts(model, tokenizer, texts, side="query", batch_size=64)
    return exact_index(corpus).search(vectors, depth)
