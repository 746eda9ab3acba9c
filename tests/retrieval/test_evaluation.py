"""Score fusion of retriever and cross-encoder, and choosing its weight on held-out queries."""

from __future__ import annotations

import numpy as np
import pytest

from warmstart.retrieval.evaluation import choose_fusion_weight, fuse_scores, rerank_rows
from warmstart.retrieval.mining import Candidates


def test_fuse_endpoints_are_each_order() -> None:
    rng = np.random.default_rng(0)
    dense, ce = rng.normal(size=(5, 8)), 100.0 * rng.normal(size=(5, 8))
    c = Candidates([f"q{i}" for i in range(5)], ["x"] * 5, np.arange(40).reshape(5, 8), dense)
    np.testing.assert_array_equal(
        rerank_rows(c, fuse_scores(dense, ce, 0.0)), rerank_rows(c, dense)
    )
    np.testing.assert_array_equal(rerank_rows(c, fuse_scores(dense, ce, 1.0)), rerank_rows(c, ce))
    # scale-free: multiplying the CE logits by 1000 does not change the fused order
    np.testing.assert_allclose(fuse_scores(dense, ce, 0.3), fuse_scores(dense, 1000.0 * ce, 0.3))


def test_fuse_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ"):
        fuse_scores(np.zeros((2, 3)), np.zeros((2, 4)), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fuse_scores(np.zeros((2, 3)), np.zeros((2, 3)), 1.5)
    with pytest.raises(ValueError, match="finite"):
        fuse_scores(np.zeros((2, 3)), np.array([[0.0, np.nan, 1.0], [0, 0, 0]]), 0.5)
    # a query whose scores are all equal does not divide by zero
    assert np.isfinite(fuse_scores(np.ones((1, 3)), np.arange(3.0)[None], 0.5)).all()


def test_choose_weight_follows_the_better_scorer() -> None:
    """Relevant doc per query at a random slot; the CE ranks it first, the retriever last: the
    chosen weight must move to the CE side; with the roles swapped, weight 0 wins (tie rule)."""
    rng = np.random.default_rng(1)
    n, k = 20, 6
    rows = np.arange(n * k).reshape(n, k)
    good = rng.integers(0, k, size=n)
    doc_ids = [f"d{i}" for i in range(n * k)]
    qids = [f"q{i}" for i in range(n)]
    qrels = {q: {doc_ids[rows[i, good[i]]]: 1} for i, q in enumerate(qids)}
    right = np.zeros((n, k))
    right[np.arange(n), good] = 1.0
    wrong = -right + 0.01 * rng.normal(size=(n, k))
    c = Candidates(qids, ["x"] * n, rows, wrong)
    w, table = choose_fusion_weight(c, right, doc_ids, qrels)
    assert w > 0.5 and table[w] == pytest.approx(1.0) and table[0.0] < 0.5
    c2 = Candidates(qids, ["x"] * n, rows, right)
    w2, table2 = choose_fusion_weight(c2, wrong, doc_ids, qrels)
    assert w2 == 0.0 and table2[0.0] == pytest.approx(1.0)
