"""RocketQA's denoised hard-negative mining and data augmentation as small pure steps
(Qu et al., NAACL 2021, arXiv 2010.08191, sections 4.3-4.4).

    retrieve (current retriever, top-k)  ->  score (cross-encoder logits)
      -> calibrate (Platt fit on labelled candidates)  ->  filter (P < low: negative,
         argmax P > high: pseudo-positive, never a labelled positive)  ->  format (TrainExample)
      -> write (jsonl)

Each step takes and returns plain arrays / dicts so it can be tested and reused on its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from warmstart.retrieval.encoders import CrossEncoder
from warmstart.retrieval.encoding import score_pairs
from warmstart.retrieval.index import VectorIndex
from warmstart.retrieval.training import TrainExample


@dataclass(frozen=True)
class MiningConfig:
    """Thresholds and depth of the mining chain.

    Attributes:
        top_k: candidates retrieved (and cross-encoder-scored) per query.
        low: a non-positive candidate with calibrated P(relevant) < low becomes a negative.
        high: the best candidate of an unlabelled query with P > high becomes its positive.
        max_negatives: cap on the negative pool per query (best-ranked first); None = all.
        pseudo_precision: if set, ``high`` is chosen from data instead (see
            ``choose_high_threshold``): the lowest threshold at which the CE's best candidate is a
            labelled positive for at least this share of held-out labelled queries; ``high`` is
            the fallback when no threshold reaches it.
    """

    top_k: int = 30
    low: float = 0.1
    high: float = 0.9
    max_negatives: int | None = None
    pseudo_precision: float | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k={self.top_k}: must be >= 1")
        if not 0.0 < self.low < self.high < 1.0:
            raise ValueError(f"low={self.low}, high={self.high}: need 0 < low < high < 1")
        if self.max_negatives is not None and self.max_negatives < 1:
            raise ValueError(f"max_negatives={self.max_negatives}: must be >= 1 or None")
        if self.pseudo_precision is not None and not 0.0 < self.pseudo_precision <= 1.0:
            raise ValueError(f"pseudo_precision={self.pseudo_precision}: must lie in (0, 1]")


@dataclass(frozen=True)
class Candidates:
    """Top-k retrieval results of M queries.

    Attributes:
        query_ids / queries: (M,) ids and texts.
        rows: (M, k) corpus row positions, best first.
        scores: (M, k) retriever scores.
    """

    query_ids: list[str]
    queries: list[str]
    rows: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        m = len(self.query_ids)
        if (
            len(self.queries) != m
            or self.rows.shape[0] != m
            or self.rows.shape != self.scores.shape
        ):
            raise ValueError(
                f"Candidates: {m} ids, {len(self.queries)} texts, rows {self.rows.shape}, "
                f"scores {self.scores.shape} disagree"
            )


def retrieve(
    query_ids: Sequence[str],
    queries: Sequence[str],
    query_embeddings: np.ndarray,
    index: VectorIndex,
    k: int,
) -> Candidates:
    """Step 1: top-k of each (M, H) query vector in the index."""
    scores, rows = index.search(np.ascontiguousarray(query_embeddings, dtype=np.float32), k)
    return Candidates(list(query_ids), list(queries), rows.astype(np.int64), scores)


def score_candidates(
    model: CrossEncoder,
    tokenizer: PreTrainedTokenizerBase,
    candidates: Candidates,
    passages: Sequence[str],
    *,
    batch_size: int = 32,
    desc: str | None = None,
) -> np.ndarray:
    """Step 2: cross-encoder logits of every (query, candidate) pair, (M, k)."""
    m, k = candidates.rows.shape
    qs = [q for q in candidates.queries for _ in range(k)]
    ps = [passages[int(r)] for r in candidates.rows.reshape(-1)]
    logits = score_pairs(model, tokenizer, qs, ps, batch_size=batch_size, desc=desc)
    return logits.reshape(m, k)


def positive_rows(
    query_ids: Sequence[str], qrels: Mapping[str, Mapping[str, int]], doc_row: Mapping[str, int]
) -> dict[str, set[int]]:
    """Labelled positive corpus rows of each query (relevance > 0)."""
    return {
        qid: {doc_row[d] for d, rel in qrels.get(qid, {}).items() if rel > 0 and d in doc_row}
        for qid in query_ids
    }


def with_positives(
    candidates: Candidates, positives: Mapping[str, set[int]], query_ids: Sequence[str]
) -> Candidates:
    """Force the labelled positives of ``query_ids`` into their candidate lists.

    A missing positive replaces the lowest-ranked non-positive candidate (its retriever score is
    set to NaN), so calibration data always holds both classes even when the retriever missed.
    """
    chosen = set(query_ids)
    rows, scores = candidates.rows.copy(), candidates.scores.astype(np.float32).copy()
    for i, qid in enumerate(candidates.query_ids):
        if qid not in chosen:
            continue
        missing = sorted(positives.get(qid, set()) - {int(r) for r in rows[i]})
        slots = [
            j for j in range(rows.shape[1]) if int(rows[i, j]) not in positives.get(qid, set())
        ]
        for pos, j in zip(missing, reversed(slots), strict=False):
            rows[i, j], scores[i, j] = pos, np.nan
    return Candidates(candidates.query_ids, candidates.queries, rows, scores)


def candidate_labels(candidates: Candidates, positives: Mapping[str, set[int]]) -> np.ndarray:
    """(M, k) 0/1 labels: is the candidate a labelled positive of its query?"""
    return np.array(
        [
            [int(r) in positives.get(qid, set()) for r in row]
            for qid, row in zip(candidates.query_ids, candidates.rows, strict=True)
        ],
        dtype=np.int64,
    )


def denoised_negatives(
    candidates: Candidates,
    probs: np.ndarray,
    positives: Mapping[str, set[int]],
    low: float,
    max_negatives: int | None = None,
) -> dict[str, list[int]]:
    """Step 4a: non-positive candidates with calibrated P(relevant) < ``low``, best-ranked first."""
    out: dict[str, list[int]] = {}
    for qid, rows, p in zip(candidates.query_ids, candidates.rows, probs, strict=True):
        pos = positives.get(qid, set())
        keep = [int(r) for r, pr in zip(rows, p, strict=True) if pr < low and int(r) not in pos]
        out[qid] = keep[:max_negatives]
    return out


def undenoised_negatives(
    candidates: Candidates, positives: Mapping[str, set[int]], max_negatives: int | None = None
) -> dict[str, list[int]]:
    """The ablation: every retrieved non-positive is a negative (no cross-encoder filter)."""
    out: dict[str, list[int]] = {}
    for qid, rows in zip(candidates.query_ids, candidates.rows, strict=True):
        pos = positives.get(qid, set())
        out[qid] = [int(r) for r in rows if int(r) not in pos][:max_negatives]
    return out


def pseudo_positives(candidates: Candidates, probs: np.ndarray, high: float) -> dict[str, int]:
    """Step 4b: the most probable candidate of each query when its P(relevant) > ``high``."""
    best = probs.argmax(axis=1)
    return {
        qid: int(candidates.rows[i, best[i]])
        for i, qid in enumerate(candidates.query_ids)
        if probs[i, best[i]] > high
    }


HIGH_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""Thresholds ``choose_high_threshold`` tries: 0.50, 0.55, ..., 0.95."""


def top1_precision_curve(
    probs: np.ndarray, labels: np.ndarray, grid: Sequence[float] = HIGH_GRID
) -> list[dict[str, float | None]]:
    """For each threshold t: how many queries' best candidate has P > t and what share of those
    best candidates are labelled positives (None when no query passes: JSON has no NaN).
    ``probs`` and ``labels`` (0/1) are (M, k)."""
    if probs.shape != labels.shape:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} differ")
    best = probs.argmax(axis=1)
    p_top = probs[np.arange(len(best)), best]
    y_top = labels[np.arange(len(best)), best]
    curve = []
    for t in grid:
        chosen = p_top > t
        n = int(chosen.sum())
        curve.append(
            {
                "threshold": float(t),
                "queries": n,
                "precision": float(y_top[chosen].mean()) if n else None,
            }
        )
    return curve


def choose_high_threshold(
    curve: Sequence[Mapping[str, float | None]], target: float, min_queries: int = 10
) -> float | None:
    """The lowest threshold of ``curve`` whose top-1 precision is >= ``target`` over at least
    ``min_queries`` queries, or None when none qualifies."""
    for point in sorted(curve, key=lambda p: float(p["threshold"] or 0.0)):
        n, precision = point["queries"] or 0, point["precision"]
        if n >= min_queries and precision is not None and precision >= target:
            return float(point["threshold"] or 0.0)
    return None


def labelled_examples(
    queries: Mapping[str, str],
    positives: Mapping[str, set[int]],
    negatives: Mapping[str, Sequence[int]] | None = None,
) -> list[TrainExample]:
    """Step 5: one example per (query, labelled positive), with the query's negative pool."""
    negs = negatives or {}
    return [
        TrainExample(qid, queries[qid], pos, tuple(negs.get(qid, ())))
        for qid in sorted(positives)
        for pos in sorted(positives[qid])
    ]


def pseudo_examples(
    queries: Mapping[str, str],
    pseudo: Mapping[str, int],
    negatives: Mapping[str, Sequence[int]],
) -> list[TrainExample]:
    """Step 5 for unlabelled questions: pseudo-positive plus its negatives."""
    return [
        TrainExample(qid, queries[qid], pos, tuple(n for n in negatives.get(qid, ()) if n != pos))
        for qid, pos in sorted(pseudo.items())
    ]


def write_training_set(path: Path, examples: Sequence[TrainExample]) -> None:
    """Step 6: one JSON object per line (written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json()) + "\n")
    tmp.replace(path)


def read_training_set(path: Path) -> list[TrainExample]:
    """Inverse of :func:`write_training_set`; errors name the file and line."""
    out: list[TrainExample] = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            try:
                out.append(TrainExample.from_json(json.loads(line)))
            except (ValueError, KeyError, AssertionError) as err:
                raise ValueError(f"{path}:{number}: bad training example ({err})") from err
    return out
