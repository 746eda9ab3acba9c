"""Tests for warmstart.retrieval.bm25 on tiny inline texts (and SciFact when present)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from warmstart.data.synthetic import synthetic_collection
from warmstart.retrieval.bm25 import BM25Config, BM25Retriever, bm25_run, evaluate_bm25

DOCS = [
    "The cat sat on the mat.",
    "Dogs chase cats around the garden.",
    "Vitamin C deficiency causes scurvy in sailors.",
    "Quantum computers use qubits for computation.",
    "The stock market fell sharply on Monday.",
    "Running marathons requires endurance training.",
]


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever().fit(DOCS)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("scurvy vitamin deficiency", 2),
        ("qubits quantum", 3),
        ("stock market monday", 4),
        ("marathon endurance", 5),
    ],
)
def test_document_with_the_query_words_ranks_first(
    bm25: BM25Retriever, query: str, expected: int
) -> None:
    scores, positions = bm25.search([query], k=3)
    assert positions[0, 0] == expected
    assert scores[0, 0] > scores[0, 1]


def test_shapes_order_and_clipping(bm25: BM25Retriever) -> None:
    scores, positions = bm25.search(["cat garden", "training"], k=100)
    assert scores.shape == positions.shape == (2, len(DOCS))
    assert scores.dtype == np.float32 and positions.dtype == np.int64
    assert (np.diff(scores, axis=1) <= 0).all()
    assert all(sorted(row) == list(range(len(DOCS))) for row in positions)


def test_batched_equals_single(bm25: BM25Retriever) -> None:
    queries = ["cat mat", "vitamin", "computation qubits", "market"]
    scores, positions = bm25.search(queries, k=2)
    for i, q in enumerate(queries):
        s1, p1 = bm25.search([q], k=2)
        np.testing.assert_allclose(s1[0], scores[i], rtol=1e-6)
        assert p1[0, 0] == positions[i, 0]


def test_unknown_words_score_zero(bm25: BM25Retriever) -> None:
    scores, _ = bm25.search(["zyzzyva xylograph"], k=3)
    np.testing.assert_array_equal(scores, 0.0)


def test_stemming_matches_inflections() -> None:
    pytest.importorskip("Stemmer")
    stemmed = BM25Retriever(BM25Config(stemmer="english")).fit(DOCS)
    plain = BM25Retriever(BM25Config(stemmer=None)).fit(DOCS)
    assert stemmed.stemming and not plain.stemming
    # "run" only matches "Running" once both are stemmed
    assert stemmed.search(["run"], k=1)[0][0, 0] > 0
    assert plain.search(["run"], k=1)[0][0, 0] == 0


def test_stopwords_are_ignored_when_configured() -> None:
    with_stop = BM25Retriever(BM25Config(stopwords="english")).fit(DOCS)
    scores, _ = with_stop.search(["the on"], k=2)
    np.testing.assert_array_equal(scores, 0.0)
    without = BM25Retriever(BM25Config(stopwords=None)).fit(DOCS)
    assert without.search(["the on"], k=1)[0][0, 0] > 0


def test_validation() -> None:
    with pytest.raises(ValueError, match="b must be in"):
        BM25Config(b=2.0)
    with pytest.raises(ValueError, match="stemmer must be one of"):
        BM25Config(stemmer="porter")
    with pytest.raises(ValueError, match="before fit"):
        BM25Retriever().search(["x"], 1)
    retriever = BM25Retriever().fit(DOCS)
    with pytest.raises(ValueError, match="k must be a positive int"):
        retriever.search(["cat"], 0)
    with pytest.raises(ValueError, match="not one string"):
        retriever.search("cat", 1)
    with pytest.raises(ValueError, match="non-empty"):
        BM25Retriever().fit([])
    with pytest.raises(ValueError, match="6 documents"):
        bm25_run(retriever, ["a"], {"q": "cat"})


def test_evaluate_on_synthetic_collection_beats_random() -> None:
    collection = synthetic_collection(n_docs=200, n_queries=40, seed=0)
    metrics = evaluate_bm25(collection, "test")
    assert set(metrics) == {"nDCG@10", "MRR@10", "Recall@100"}
    # a random ranking of 200 documents finds a relevant one in its top 10 about 5% of the time
    assert metrics["MRR@10"] > 0.3


@pytest.mark.integration
def test_scifact_bm25_is_near_published() -> None:
    data_dir = Path(os.environ.get("WARMSTART_DATA", "data"))
    if not (data_dir / "scifact" / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found under {data_dir}")
    from warmstart.data.retrieval import load_scifact

    metrics = evaluate_bm25(load_scifact(data_dir), "test")
    # published BM25 nDCG@10 on SciFact is 0.665 (BEIR) to 0.679 (Anserini)
    assert 0.64 <= metrics["nDCG@10"] <= 0.70, metrics


def test_thread_policy_gives_the_same_results() -> None:
    queries = ["cat garden", "scurvy vitamin", "stock market", "training"] * 5
    serial = BM25Retriever().fit(DOCS).search(queries, 3)
    threaded = BM25Retriever(threads=2).fit(DOCS).search(queries, 3)
    np.testing.assert_array_equal(serial[1], threaded[1])
    np.testing.assert_array_equal(serial[0], threaded[0])
    with pytest.raises(ValueError, match="threads=0"):
        BM25Retriever(threads=0)
