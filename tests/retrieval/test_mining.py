from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.retrieval.mining import (
    Candidates,
    MiningConfig,
    candidate_labels,
    denoised_negatives,
    labelled_examples,
    pseudo_examples,
    pseudo_positives,
    read_training_set,
    undenoised_negatives,
    with_positives,
    write_training_set,
)


@st.composite
def mined(draw: st.DrawFn) -> tuple[Candidates, np.ndarray, dict[str, set[int]], float]:
    m, k, n_docs = draw(st.integers(1, 6)), draw(st.integers(1, 8)), 30
    seed = draw(st.integers(0, 10**6))
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.choice(n_docs, size=k, replace=False) for _ in range(m)])
    probs = rng.random((m, k))
    ids = [f"q{i}" for i in range(m)]
    positives = {q: set(rng.choice(n_docs, size=2, replace=False).tolist()) for q in ids}
    c = Candidates(ids, [f"text {q}" for q in ids], rows, -np.sort(-rng.random((m, k)), axis=1))
    return c, probs, positives, draw(st.floats(0.01, 0.5))


@settings(max_examples=60, deadline=None)
@given(mined())
def test_denoised_negatives_are_below_threshold_and_never_positive(case) -> None:
    c, probs, positives, low = case
    prob = {
        (q, int(r)): p
        for q, rows, ps in zip(c.query_ids, c.rows, probs, strict=True)
        for r, p in zip(rows, ps, strict=True)
    }
    negs = denoised_negatives(c, probs, positives, low)
    for qid, rows in negs.items():
        for r in rows:
            assert prob[(qid, r)] < low
            assert r not in positives[qid]
    # every candidate that passes the filter is kept: nothing below the threshold is lost
    kept = sum(len(v) for v in negs.values())
    expected = sum(1 for (q, r), p in prob.items() if p < low and r not in positives[q])
    assert kept == expected


@settings(max_examples=40, deadline=None)
@given(mined())
def test_undenoised_keeps_every_non_positive(case) -> None:
    c, _, positives, _ = case
    negs = undenoised_negatives(c, positives)
    labels = candidate_labels(c, positives)
    assert sum(len(v) for v in negs.values()) == int((labels == 0).sum())


@settings(max_examples=40, deadline=None)
@given(mined(), st.floats(0.5, 0.99))
def test_pseudo_positive_is_argmax_above_high(case, high: float) -> None:
    c, probs, _, _ = case
    pseudo = pseudo_positives(c, probs, high)
    for i, qid in enumerate(c.query_ids):
        if qid in pseudo:
            j = int(np.argmax(probs[i]))
            assert pseudo[qid] == int(c.rows[i, j]) and probs[i, j] > high
        else:
            assert probs[i].max() <= high


@settings(max_examples=40, deadline=None)
@given(mined())
def test_with_positives_inserts_every_missing_positive(case) -> None:
    c, _, positives, _ = case
    forced = with_positives(c, positives, c.query_ids[:1])
    first = {int(r) for r in forced.rows[0]}
    k = c.rows.shape[1]
    assert len(positives[c.query_ids[0]] & first) == min(k, len(positives[c.query_ids[0]]))
    assert np.array_equal(forced.rows[1:], c.rows[1:])


def test_config_validates_thresholds() -> None:
    with pytest.raises(ValueError, match="low"):
        MiningConfig(low=0.95, high=0.9)
    with pytest.raises(ValueError, match="top_k"):
        MiningConfig(top_k=0)


def test_training_set_round_trip(tmp_path: Path) -> None:
    queries = {"a": "query a", "b": "query b", "u1": "unlabelled"}
    examples = labelled_examples(queries, {"a": {1, 2}, "b": {3}}, {"a": [5, 6]})
    examples += pseudo_examples(queries, {"u1": 7}, {"u1": [7, 8]})
    assert [e.negatives for e in examples] == [(5, 6), (5, 6), (), (8,)]
    write_training_set(tmp_path / "t.jsonl", examples)
    assert read_training_set(tmp_path / "t.jsonl") == examples
    (tmp_path / "bad.jsonl").write_text('{"query_id": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_training_set(tmp_path / "bad.jsonl")


def test_top1_precision_curve_and_threshold_choice() -> None:
    from warmstart.retrieval.mining import choose_high_threshold, top1_precision_curve

    # 4 queries; the best candidate's P and whether it is a positive:
    # q0 0.95 yes, q1 0.85 yes, q2 0.75 no, q3 0.55 yes
    probs = np.array([[0.95, 0.1], [0.2, 0.85], [0.75, 0.3], [0.55, 0.5]])
    labels = np.array([[1, 0], [0, 1], [0, 1], [1, 0]])
    curve = top1_precision_curve(probs, labels, grid=(0.5, 0.7, 0.8, 0.9, 0.96))
    assert [p["queries"] for p in curve] == [4, 3, 2, 1, 0]
    assert [p["precision"] for p in curve[:4]] == pytest.approx([0.75, 2 / 3, 1.0, 1.0])
    assert curve[4]["precision"] is None
    assert choose_high_threshold(curve, 0.7, min_queries=1) == 0.5
    assert choose_high_threshold(curve, 0.9, min_queries=1) == 0.8
    assert choose_high_threshold(curve, 0.9, min_queries=3) is None  # too few queries
    with pytest.raises(ValueError, match="differ"):
        top1_precision_curve(probs, labels[:1])
    with pytest.raises(ValueError, match="pseudo_precision"):
        MiningConfig(pseudo_precision=1.5)
