"""Metric functions against hand-computed values and reference libraries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.metrics import (
    auc,
    coldstart_report,
    evaluate_retrieval,
    mae,
    mrr_at_k,
    mse,
    ndcg_at_k,
    paired_bootstrap,
    rank_order,
    recall_at_k,
    retrieval_per_query,
)

LOG3 = math.log2(3)


def test_mse_mae_hand_values() -> None:
    pred, labels = np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0])
    assert mse(pred, labels) == pytest.approx((0 + 1 + 4) / 3)
    assert mae(pred, labels) == pytest.approx((0 + 1 + 2) / 3)


def test_ndcg_hand_value() -> None:
    # gains 2^y - 1 = [7, 0, 1]; ranked by pred: items 1, 2, 0 -> gains 0, 1, 7
    pred, labels = np.array([0.1, 0.9, 0.5]), np.array([3.0, 0.0, 1.0])
    dcg, ideal = 1 / LOG3 + 7 / 2, 7 + 1 / LOG3
    assert ndcg_at_k(pred, labels, 3) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(pred, labels, 2) == pytest.approx((1 / LOG3) / ideal)
    assert ndcg_at_k(pred, labels, 1) == 0.0


def test_ndcg_k_truncated_to_query_size() -> None:
    pred, labels = np.array([0.3, 0.2, 0.9]), np.array([1.0, 2.0, 0.0])
    assert ndcg_at_k(pred, labels, 50) == ndcg_at_k(pred, labels, 3)


def test_ndcg_is_one_when_ideal_dcg_is_zero() -> None:
    assert ndcg_at_k(np.array([0.2, 0.8]), np.zeros(2), 3) == 1.0


def test_ndcg_ties_keep_query_order() -> None:
    labels = np.array([0.0, 1.0, 1.0, 0.0])
    # all predictions equal: ranking is the query order, so gains 0, 1, 1
    tied = ndcg_at_k(np.full(4, 0.5), labels, 3)
    assert tied == pytest.approx((1 / LOG3 + 1 / 2) / (1 + 1 / LOG3))
    np.testing.assert_array_equal(rank_order(np.array([0.5, 0.7, 0.5, 0.7])), [1, 3, 0, 2])


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=2, max_size=12).filter(lambda y: max(y) > 0),
    st.integers(1, 12),
    st.integers(0, 2**31 - 1),
)
def test_ndcg_matches_sklearn_with_exponential_gains(labels: list[int], k: int, seed: int) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    y = np.array(labels, dtype=np.float64)
    pred = np.random.default_rng(seed).permutation(y.size).astype(np.float64)  # no ties
    ours = ndcg_at_k(pred, y, k)
    ref = sklearn_metrics.ndcg_score((np.exp2(y) - 1)[None, :], pred[None, :], k=k)
    assert ours == pytest.approx(ref)
    assert 0.0 <= ours <= 1.0 + 1e-12


def test_ndcg_perfect_ranking_is_one() -> None:
    labels = np.array([5.0, 1.0, 3.0, 4.0])
    assert ndcg_at_k(labels, labels, 3) == pytest.approx(1.0)


def test_auc_hand_value_and_ties() -> None:
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4), (0.8>0.1), (0.4=0.4 -> 1/2), (0.4>0.1)
    scores, labels = np.array([0.8, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])
    assert auc(scores, labels) == pytest.approx(3.5 / 4)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=30))
def test_auc_matches_sklearn(rows: list[tuple[int, bool]]) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    scores = np.array([r[0] for r in rows], dtype=np.float64)  # few values: many ties
    labels = np.array([r[1] for r in rows], dtype=np.int64)
    if labels.min() == labels.max():
        with pytest.raises(ValueError, match="both classes"):
            auc(scores, labels)
        return
    assert auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores))


def test_mrr_and_recall_hand_values() -> None:
    pred = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([0, 0, 1, 0, 1])
    assert mrr_at_k(pred, labels, 5) == pytest.approx(1 / 3)
    assert mrr_at_k(pred, labels, 2) == 0.0
    assert recall_at_k(pred, labels, 3) == pytest.approx(1 / 2)
    assert recall_at_k(pred, labels, 5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no relevant"):
        recall_at_k(pred, np.zeros(5), 3)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="labels has 2"):
        mse(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="k must be >= 1"):
        ndcg_at_k(np.zeros(3), np.zeros(3), 0)
    with pytest.raises(ValueError, match="NaN"):
        mae(np.array([np.nan]), np.array([1.0]))


def test_coldstart_report_averages_per_user() -> None:
    preds = [np.array([1.0, 2.0]), np.array([3.0, 3.0, 3.0, 3.0])]
    labels = [np.array([1.0, 4.0]), np.array([3.0, 3.0, 3.0, 5.0])]
    report = coldstart_report(preds, labels)
    # per-user MSE 2.0 and 1.0 -> 1.5 (not the pooled 10/6)
    assert report["MSE"] == pytest.approx(1.5)
    assert report["MAE"] == pytest.approx((1.0 + 0.5) / 2)
    assert report["nDCG@3"] == pytest.approx(
        np.mean([ndcg_at_k(p, y, 3) for p, y in zip(preds, labels, strict=True)])
    )
    assert list(report) == ["MSE", "MAE", "nDCG@3", "nDCG@5"]


def _random_retrieval(seed: int) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(40)]
    run, qrels = {}, {}
    for q in range(15):
        judged = rng.choice(40, size=int(rng.integers(1, 6)), replace=False)
        qrels[f"q{q}"] = {docs[j]: int(rng.integers(1, 3)) for j in judged}
        run[f"q{q}"] = [docs[j] for j in rng.permutation(40)[: int(rng.integers(5, 40))]]
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_retrieval_matches_pytrec_eval(seed: int) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    run, qrels = _random_retrieval(seed)
    ours = evaluate_retrieval(run, qrels, k_ndcg=10, k_mrr=40, k_recall=20)
    scored = {q: {d: float(len(ds) - r) for r, d in enumerate(ds)} for q, ds in run.items()}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recip_rank", "recall_20"})
    per_query = ref.evaluate(scored).values()
    assert ours["nDCG@10"] == pytest.approx(np.mean([m["ndcg_cut_10"] for m in per_query]))
    assert ours["MRR@40"] == pytest.approx(np.mean([m["recip_rank"] for m in per_query]))
    assert ours["Recall@20"] == pytest.approx(np.mean([m["recall_20"] for m in per_query]))


def test_evaluate_retrieval_hand_value_and_missing_query() -> None:
    qrels = {"a": {"d1": 1, "d2": 1}, "b": {"d9": 1}, "c": {"d5": 0}}
    run = {"a": ["d3", "d1", "d4"]}  # "b" has no run -> 0; "c" has no relevant doc -> skipped
    out = evaluate_retrieval(run, qrels, k_ndcg=3, k_mrr=3, k_recall=3)
    ideal = 1 + 1 / LOG3
    assert out["nDCG@3"] == pytest.approx((1 / LOG3) / ideal / 2)
    assert out["MRR@3"] == pytest.approx(0.5 / 2)
    assert out["Recall@3"] == pytest.approx(0.5 / 2)
    with pytest.raises(ValueError, match="more than once"):
        evaluate_retrieval({"a": ["d1", "d1"]}, qrels)
    per_query = retrieval_per_query(run, qrels, k_ndcg=3, k_mrr=3, k_recall=3)
    assert list(per_query) == ["a", "b"]
    assert per_query["a"] == pytest.approx(((1 / LOG3) / ideal, 0.5, 0.5))
    assert per_query["b"] == (0.0, 0.0, 0.0)


def test_paired_bootstrap_interval_matches_normal_theory() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(0.01, 0.05, size=400)
    r = paired_bootstrap([d], shared_users=True, n_boot=4000)
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert r["delta"] == pytest.approx(d.mean())
    assert r["se"] == pytest.approx(se, rel=0.1)
    assert r["lo"] == pytest.approx(d.mean() - 1.96 * se, abs=0.3 * se)
    assert r["hi"] == pytest.approx(d.mean() + 1.96 * se, abs=0.3 * se)
    assert r["frac_below_zero"] < 0.01  # mean 0.01 is > 4 standard errors above 0


def test_paired_bootstrap_shared_users_average_seeds_first() -> None:
    rng = np.random.default_rng(1)
    user_effect = rng.normal(0.0, 0.1, size=200)
    seeds = [user_effect + rng.normal(0.0, 0.01, size=200) for _ in range(3)]
    shared = paired_bootstrap(seeds, shared_users=True, n_boot=3000)
    independent = paired_bootstrap(seeds, shared_users=False, n_boot=3000)
    assert shared["delta"] == pytest.approx(independent["delta"])
    # the same users in every seed: resampling them jointly keeps the full user variance, while
    # independent resampling per seed wrongly averages it down by about sqrt(3)
    assert shared["se"] == pytest.approx(independent["se"] * np.sqrt(3), rel=0.15)


def test_paired_bootstrap_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([np.array([0.1, np.nan])], shared_users=True)
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([np.zeros(3), np.zeros(4)], shared_users=True)
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap([], shared_users=False)
