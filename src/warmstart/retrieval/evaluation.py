"""Turning retriever / reranker outputs into runs and scoring them with
:func:`warmstart.metrics.evaluate_retrieval` (the same code for every row of the RocketQA table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from warmstart.metrics import evaluate_retrieval
from warmstart.retrieval.index import VectorIndex, build_index
from warmstart.retrieval.mining import Candidates


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
