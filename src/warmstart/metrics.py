"""Pure metric functions for cold-start recommendation and passage retrieval.

Cold-start metrics follow the ColdNAS protocol (Wu et al., WWW 2023, arXiv 2306.03387): each user
is one task; MSE, MAE and nDCG@k are computed per user over that user's query set, then averaged
over users. nDCG ranks the user's own query items by prediction with gain ``2^y - 1`` and
discount ``log2(rank + 1)``; ``k`` is truncated to the query size and nDCG is 1 when the ideal DCG
is 0 (a user whose query labels are all 0 cannot be ranked badly).

Tie rule: items are ordered by a *stable* sort on descending prediction, so items with equal
predictions keep their order in the query set. This matters for predictors that emit many equal
scores (a constant, or popularity falling back to the global mean for unseen items).

Retrieval metrics (``evaluate_retrieval``) follow trec_eval conventions: linear gain ``rel`` for
nDCG (identical to ``2^rel - 1`` for binary relevance), ideal DCG from all judged documents of
the query, documents absent from the qrels count as non-relevant.

All functions take numpy arrays (or sequences convertible to them) and return Python floats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

COLDSTART_KEYS = ("MSE", "MAE", "nDCG@3", "nDCG@5")
"""Keys of ``coldstart_report``, in table order."""


def _pair(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(N,)`` prediction / label pair and return float64 copies."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"pred has {p.size} values, labels has {y.size}")
    if p.size == 0:
        raise ValueError("pred and labels are empty")
    if np.isnan(p).any():
        raise ValueError("pred contains NaN")
    return p, y


def mse(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error of ``(N,)`` predictions against ``(N,)`` labels."""
    p, y = _pair(pred, labels)
    return float(np.mean((p - y) ** 2))


def mae(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean absolute error of ``(N,)`` predictions against ``(N,)`` labels."""
    p, y = _pair(pred, labels)
    return float(np.mean(np.abs(p - y)))


def rank_order(pred: np.ndarray) -> np.ndarray:
    """Positions of ``pred`` best first: stable sort on descending score (ties keep input order).

    Args:
        pred: ``(N,)`` scores.

    Returns:
        ``(N,)`` int64 positions into ``pred``.
    """
    return np.argsort(-np.asarray(pred, dtype=np.float64), kind="stable")


def _dcg(gains: np.ndarray) -> float:
    """DCG of ``(k,)`` gains already in rank order, discount ``log2(rank + 1)`` with rank from 1."""
    discounts = np.log2(np.arange(2, gains.size + 2, dtype=np.float64))
    return float(np.sum(gains / discounts))


def ndcg_at_k(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    """nDCG@k of one user's query set ranked by prediction.

    Gain ``2^y - 1``; ``k`` is truncated to ``N``; returns 1.0 when the ideal DCG is 0.
    Ties in ``pred`` are broken by a stable sort: equal scores keep their order in the input.

    Args:
        pred: ``(N,)`` predicted scores for the user's query items.
        labels: ``(N,)`` true labels (ratings or 0/1).
        k: cut-off, ``k >= 1``.

    Returns:
        nDCG@k in ``[0, 1]``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p, y = _pair(pred, labels)
    gains = np.exp2(y) - 1.0
    cut = min(k, y.size)
    ideal = _dcg(np.sort(gains)[::-1][:cut])
    if ideal == 0.0:
        return 1.0
    return _dcg(gains[rank_order(p)][:cut]) / ideal


def _binary(labels: np.ndarray) -> np.ndarray:
    """Relevance ``labels > 0`` as a bool array."""
    return np.asarray(labels, dtype=np.float64).reshape(-1) > 0


def mrr_at_k(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Reciprocal rank of the first relevant item (label > 0) within the top ``k``, else 0.

    Args:
        pred: ``(N,)`` scores; ranked with the stable tie rule of ``rank_order``.
        labels: ``(N,)`` relevance; an item is relevant when its label is > 0.
        k: cut-off, ``k >= 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p, y = _pair(pred, labels)
    hits = np.flatnonzero(_binary(y)[rank_order(p)][:k])
    return 0.0 if hits.size == 0 else 1.0 / float(hits[0] + 1)


def hit_rate_at_k(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    """1.0 when at least one relevant item (label > 0) is ranked within the top ``k``, else 0.

    Args:
        pred: ``(N,)`` scores; ranked with the stable tie rule of ``rank_order``.
        labels: ``(N,)`` relevance over all candidates.
        k: cut-off, ``k >= 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p, y = _pair(pred, labels)
    return float(_binary(y)[rank_order(p)][:k].any())


def recall_at_k(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of the relevant items (label > 0) ranked within the top ``k``.

    Args:
        pred: ``(N,)`` scores; ranked with the stable tie rule of ``rank_order``.
        labels: ``(N,)`` relevance over *all* candidates (so misses outside the top k count).
        k: cut-off, ``k >= 1``.

    Raises:
        ValueError: when no item is relevant (recall is undefined).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p, y = _pair(pred, labels)
    rel = _binary(y)
    if not rel.any():
        raise ValueError("recall_at_k: labels hold no relevant item")
    return float(rel[rank_order(p)][:k].sum() / rel.sum())


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve for binary labels (label > 0 is positive).

    Computed as the Mann-Whitney statistic with average ranks, so tied scores count 1/2.

    Args:
        scores: ``(N,)`` scores, higher means more likely positive.
        labels: ``(N,)`` binary labels.

    Raises:
        ValueError: when only one class is present.
    """
    s, y = _pair(scores, labels)
    pos = _binary(y)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auc needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = _average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``(N,)`` values in ascending order, ties given their mean rank."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    # start index of each run of equal values, and the mean 1-based rank of that run
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], values.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def coldstart_per_user(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> np.ndarray:
    """Cold-start metrics of each user (one array pair per user's query set).

    Args:
        preds: per user, ``(Q_u,)`` predictions for the query items.
        labels: per user, ``(Q_u,)`` true query labels.

    Returns:
        ``(U, 4)`` float64, columns in ``COLDSTART_KEYS`` order (MSE, MAE, nDCG@3, nDCG@5).
    """
    if len(preds) != len(labels):
        raise ValueError(f"got predictions for {len(preds)} users and labels for {len(labels)}")
    if len(preds) == 0:
        raise ValueError("coldstart_report: no users")
    return np.array(
        [
            [mse(p, y), mae(p, y), ndcg_at_k(p, y, 3), ndcg_at_k(p, y, 5)]
            for p, y in zip(preds, labels, strict=True)
        ],
        dtype=np.float64,
    )


def coldstart_report(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict[str, float]:
    """Cold-start metrics averaged over users (one array pair per user's query set).

    Args:
        preds: per user, ``(Q_u,)`` predictions for the query items.
        labels: per user, ``(Q_u,)`` true query labels.

    Returns:
        ``{"MSE", "MAE", "nDCG@3", "nDCG@5"}``: each computed per user, then the mean over users.
    """
    return coldstart_means(coldstart_per_user(preds, labels))


def coldstart_means(per_user: np.ndarray) -> dict[str, float]:
    """``coldstart_report`` from ``coldstart_per_user``'s ``(U, 4)`` array: means over users."""
    return dict(zip(COLDSTART_KEYS, (float(v) for v in per_user.mean(axis=0)), strict=True))


def paired_bootstrap(
    diffs: Sequence[np.ndarray],
    shared_users: bool,
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Confidence interval of a mean paired difference, resampling users.

    Two methods scored on the same test users give one difference per user (method A's metric
    minus method B's). With several training seeds there is one such array per seed; the
    statistic is the mean over seeds of the mean over users.

    Args:
        diffs: per seed, ``(U_s,)`` per-user differences A - B.
        shared_users: the seeds scored the same users in the same order (e.g. Last.fm's official
            tasks): users are resampled jointly, i.e. the per-user differences are first averaged
            over seeds. Otherwise (a seeded user split per seed) each seed's users are resampled
            independently.
        n_boot: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``delta`` (the statistic), ``lo`` / ``hi`` (2.5 % / 97.5 % bootstrap percentiles),
        ``se`` (bootstrap standard error) and ``frac_below_zero`` (share of resamples with a
        negative statistic: near 1 means A is reliably lower).
    """
    arrays = [np.asarray(d, dtype=np.float64) for d in diffs]
    if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError("paired_bootstrap: need one non-empty 1-d array per seed")
    if any(not np.isfinite(a).all() for a in arrays):
        raise ValueError("paired_bootstrap: differences contain NaN or inf")
    if shared_users:
        if len({a.size for a in arrays}) != 1:
            raise ValueError("paired_bootstrap: shared_users needs equally long arrays")
        arrays = [np.mean(arrays, axis=0)]
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_boot)
    for a in arrays:
        for start in range(0, n_boot, 1000):  # (chunk, U) index blocks keep memory small
            n = min(1000, n_boot - start)
            idx = rng.integers(0, a.size, size=(n, a.size))
            stats[start : start + n] += a[idx].mean(axis=1)
    stats /= len(arrays)
    delta = float(np.mean([a.mean() for a in arrays]))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return {
        "delta": delta,
        "lo": float(lo),
        "hi": float(hi),
        "se": float(stats.std(ddof=1)),
        "frac_below_zero": float((stats < 0).mean()),
    }


def _query_scores(
    qid: str,
    ranked: Sequence[str],
    judged: Mapping[str, int],
    k_ndcg: int,
    k_mrr: int,
    k_recall: int,
) -> tuple[float, float, float]:
    """(nDCG@k_ndcg, MRR@k_mrr, Recall@k_recall) of one query's ranked doc ids."""
    if len(set(ranked)) != len(ranked):
        raise ValueError(f"run for query {qid!r} lists a document more than once")
    rel = np.array([max(judged.get(d, 0), 0) for d in ranked], dtype=np.float64)  # (R,)
    all_rel = np.array([r for r in judged.values() if r > 0], dtype=np.float64)
    ideal = _dcg(np.sort(all_rel)[::-1][:k_ndcg])
    ndcg = _dcg(rel[:k_ndcg]) / ideal
    hits = np.flatnonzero(rel[:k_mrr] > 0)
    mrr = 0.0 if hits.size == 0 else 1.0 / float(hits[0] + 1)
    recall = float((rel[:k_recall] > 0).sum() / all_rel.size)
    return ndcg, mrr, recall


def retrieval_per_query(
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    k_ndcg: int = 10,
    k_mrr: int = 10,
    k_recall: int = 100,
) -> dict[str, tuple[float, float, float]]:
    """Per-query (nDCG@k_ndcg, MRR@k_mrr, Recall@k_recall), for paired comparisons of two runs.

    Same conventions as ``evaluate_retrieval`` (whose means these are): queries without a
    relevant document are left out, a query missing from ``run`` scores 0.
    """
    for name, k in (("k_ndcg", k_ndcg), ("k_mrr", k_mrr), ("k_recall", k_recall)):
        if k < 1:
            raise ValueError(f"{name} must be >= 1, got {k}")
    scores = {
        qid: _query_scores(qid, list(run.get(qid, ())), judged, k_ndcg, k_mrr, k_recall)
        for qid, judged in qrels.items()
        if any(r > 0 for r in judged.values())
    }
    if not scores:
        raise ValueError("evaluate_retrieval: qrels hold no query with a relevant document")
    return scores


def evaluate_retrieval(
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    k_ndcg: int = 10,
    k_mrr: int = 10,
    k_recall: int = 100,
) -> dict[str, float]:
    """Mean nDCG, MRR and Recall over the queries of ``qrels``.

    Args:
        run: query id → ranked document ids, best first. A query missing from ``run`` scores 0.
        qrels: query id → document id → relevance (> 0 relevant). Queries with no relevant
            document are skipped (every measure is undefined for them).
        k_ndcg / k_mrr / k_recall: cut-offs.

    Returns:
        ``{f"nDCG@{k_ndcg}", f"MRR@{k_mrr}", f"Recall@{k_recall}"}``.
    """
    per_query = retrieval_per_query(run, qrels, k_ndcg, k_mrr, k_recall)
    mean = np.mean(np.array(list(per_query.values())), axis=0)  # (3,)
    return {
        f"nDCG@{k_ndcg}": float(mean[0]),
        f"MRR@{k_mrr}": float(mean[1]),
        f"Recall@{k_recall}": float(mean[2]),
    }
