"""Tests for warmstart.retrieval.index: exact search against brute force, faiss kinds, I/O."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.retrieval.index import KINDS, ExactIndex, FaissIndex, build_index, load_index


def _random(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _clustered(n: int, d: int, n_clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32) * 3.0
    labels = rng.integers(0, n_clusters, n)
    return (centres[labels] + rng.standard_normal((n, d)).astype(np.float32) * 0.5).astype(
        np.float32
    )


def _brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids


def _assert_matches_reference(x: np.ndarray, q: np.ndarray, scores, ids, k: int) -> None:
    """Scores equal the reference; ids equal where the k-th score is not tied."""
    ref_s, ref_i = _brute_force(x, q, k)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-4, atol=1e-4)
    # the returned ids really have the returned scores
    recomputed = np.einsum("md,mkd->mk", q.astype(np.float64), x[ids].astype(np.float64))
    np.testing.assert_allclose(scores, recomputed, rtol=1e-4, atol=1e-4)
    full = np.sort(q.astype(np.float64) @ x.astype(np.float64).T, axis=1)[:, ::-1]
    gaps = np.diff(full[:, : k + 1], axis=1) if full.shape[1] > k else np.diff(full, axis=1)
    distinct = (np.abs(gaps) > 1e-3).all(axis=1)
    np.testing.assert_array_equal(ids[distinct], ref_i[distinct])


def _recall(ids: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, ref, strict=True)]))


# ----------------------------------------------------------------------------- exact


@pytest.mark.parametrize("n_queries", [1, 2, 7, 33])
@pytest.mark.parametrize("k", [1, 5, 16])
def test_exact_matches_brute_force_across_blocks(n_queries: int, k: int) -> None:
    x, q = _random(203, 12, 0), _random(n_queries, 12, 1)
    index = build_index("exact", 12, block_rows=16, query_block=8)  # many corpus/query blocks
    index.add(x)
    scores, ids = index.search(q, k)
    assert scores.shape == ids.shape == (n_queries, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    _assert_matches_reference(x, q, scores, ids, k)


@pytest.mark.parametrize("threads", [None, 1])
@pytest.mark.parametrize("k", [1, 150, 202, 203])  # up to the whole corpus
def test_exact_one_block_matches_brute_force(k: int, threads: int | None) -> None:
    """A corpus of one block (no merge: one partition per query, ``_search_one_block``),
    ordered and not, over several query blocks, in numpy's GEMM and in torch's."""
    x, q = _random(203, 12, 5), _random(20, 12, 6)
    index = ExactIndex(build_index("exact", 12, block_rows=256, query_block=8).config, threads)
    index.add(x)
    assert len(index._blocks) == 1
    scores, ids = index.search(q, k)
    _assert_matches_reference(x, q, scores, ids, k)
    loose_s, loose_i = index.search(q, k, ordered=False)
    assert loose_i.dtype == np.int64 and loose_s.dtype == np.float32
    for row in range(len(q)):
        assert set(loose_i[row]) == set(ids[row])
        np.testing.assert_allclose(np.sort(loose_s[row]), np.sort(scores[row]), rtol=1e-6)


@pytest.mark.parametrize("block_rows", [16, 1024])  # many corpus blocks, and one
@pytest.mark.parametrize("n_queries", [1, 9])
def test_exact_unordered_returns_the_same_top_k(block_rows: int, n_queries: int) -> None:
    x, q = _random(203, 12, 3), _random(n_queries, 12, 4)
    index = build_index("exact", 12, block_rows=block_rows, query_block=8)
    index.add(x)
    scores, ids = index.search(q, 20)
    loose_s, loose_i = index.search(q, 20, ordered=False)
    for qi, a, b, sa, sb in zip(q, ids, loose_i, scores, loose_s, strict=True):
        assert set(a) == set(b)
        np.testing.assert_allclose(np.sort(sb)[::-1], sa, rtol=1e-6)
        np.testing.assert_allclose(sb, x[b] @ qi, rtol=1e-4, atol=1e-4)  # each row's score


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 70),
    m=st.integers(1, 6),
    k=st.integers(1, 80),
    block_rows=st.integers(1, 20),
    query_block=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_exact_property_any_blocking(
    n: int, m: int, k: int, block_rows: int, query_block: int, seed: int
) -> None:
    x, q = _random(n, 5, seed), _random(m, 5, seed + 1)
    index = build_index("exact", 5, block_rows=block_rows, query_block=query_block)
    index.add(x)
    scores, ids = index.search(q, k)
    kk = min(k, n)
    assert scores.shape == (m, kk)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert all(len(set(row)) == kk for row in ids)  # no duplicates, all valid
    _assert_matches_reference(x, q, scores, ids, kk)


def test_exact_incremental_adds_equal_one_add() -> None:
    x, q = _random(100, 8, 2), _random(9, 8, 3)
    one = build_index("exact", 8, block_rows=16)
    one.add(x)
    many = build_index("exact", 8, block_rows=16)
    for s in (0, 3, 20, 21, 64, 100):
        many.add(x[s : s + {0: 3, 3: 17, 20: 1, 21: 43, 64: 36, 100: 0}[s]])
    assert many.ntotal == one.ntotal == 100
    for a, b in zip(one.search(q, 10), many.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_exact_batched_equals_single_queries() -> None:
    x, q = _random(300, 16, 4), _random(20, 16, 5)
    index = build_index("exact", 16, block_rows=64, query_block=6)
    index.add(x)
    scores, ids = index.search(q, 7)
    for row in range(len(q)):
        s1, i1 = index.search(q[row : row + 1], 7)
        np.testing.assert_allclose(s1[0], scores[row], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(i1[0], ids[row])


def test_exact_ties_return_tied_scores() -> None:
    x = np.ones((40, 4), dtype=np.float32)
    x[7] *= 2.0
    index = build_index("exact", 4, block_rows=6)
    index.add(x)
    scores, ids = index.search(np.ones((2, 4), dtype=np.float32), 5)
    assert (ids[:, 0] == 7).all()
    np.testing.assert_allclose(scores[:, 1:], 4.0)
    assert all(len(set(row)) == 5 for row in ids)


def test_add_copies_input() -> None:
    x = _random(10, 4, 6)
    index = build_index("exact", 4)
    index.add(x)
    before = index.search(x[:1], 3)
    x[:] = 0.0
    np.testing.assert_array_equal(index.search(_random(10, 4, 6)[:1], 3)[1], before[1])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kind", KINDS)
def test_dim_mismatch_is_rejected(kind: str) -> None:
    index = build_index(kind, 8, **({"nlist": 2} if kind == "ivf" else {}))
    with pytest.raises(ValueError, match="dimension mismatch"):
        index.add(_random(50, 7, 0))
    index.add(_random(100, 8, 0))
    with pytest.raises(ValueError, match="dimension mismatch"):
        index.search(_random(2, 9, 0), 3)
    with pytest.raises(ValueError, match="2-D"):
        index.search(_random(1, 8, 0)[0], 3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_vectors_are_rejected(kind: str, bad: float) -> None:
    x = _random(100, 4, 0)
    x[13, 2] = bad
    index = build_index(kind, 4, **({"nlist": 2} if kind == "ivf" else {}))
    with pytest.raises(ValueError, match="row: 13"):
        index.add(x)
    index.add(_random(100, 4, 1))
    with pytest.raises(ValueError, match="NaN"):
        index.search(x[13:14], 1)


@pytest.mark.parametrize("kind", KINDS)
def test_k_is_clipped_to_ntotal_and_validated(kind: str) -> None:
    x = _random(30, 4, 0)
    index = build_index(kind, 4, **({"nlist": 1} if kind == "ivf" else {}))
    with pytest.raises(ValueError, match="empty index"):
        index.search(x[:1], 1)
    index.add(x)
    scores, ids = index.search(x[:3], 50)
    assert scores.shape == ids.shape == (3, 30)
    for bad_k in (0, -1):
        with pytest.raises(ValueError, match="k must be a positive int"):
            index.search(x[:1], bad_k)


def test_build_index_rejects_bad_kind_and_params() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        build_index("annoy", 4)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nprobe'\]"):
        build_index("hnsw", 4, nprobe=3)
    with pytest.raises(ValueError, match="block_rows must be a positive int"):
        build_index("exact", 4, block_rows=0)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        build_index("flat", 0)


def test_ivf_first_add_must_cover_nlist() -> None:
    index = build_index("ivf", 4, nlist=64)
    with pytest.raises(ValueError, match="nlist=64"):
        index.add(_random(10, 4, 0))


# ----------------------------------------------------------------------------- faiss kinds


def test_flat_equals_exact() -> None:
    x, q = _random(500, 24, 7), _random(40, 24, 8)
    exact, flat = build_index("exact", 24, block_rows=100), build_index("flat", 24)
    exact.add(x)
    flat.add(x)
    (se, _), (sf, if_) = exact.search(q, 10), flat.search(q, 10)
    np.testing.assert_allclose(se, sf, rtol=1e-4, atol=1e-4)
    _assert_matches_reference(x, q, sf, if_, 10)


@pytest.mark.parametrize(
    ("kind", "params"), [("ivf", {"nlist": 16, "nprobe": 4}), ("hnsw", {"m": 16})]
)
def test_ann_recall_on_clustered_data(kind: str, params: dict[str, int]) -> None:
    x = _clustered(3000, 32, n_clusters=16, seed=9)
    q = _clustered(100, 32, n_clusters=16, seed=9)[:100] + 0.01
    exact, ann = build_index("exact", 32), build_index(kind, 32, **params)
    exact.add(x)
    ann.add(x)
    recall = _recall(ann.search(q, 10)[1], exact.search(q, 10)[1])
    assert recall >= 0.9, recall


def test_search_knobs_raise_recall() -> None:
    x, q = _random(2000, 16, 10), _random(50, 16, 11)
    exact = build_index("exact", 16)
    exact.add(x)
    ref = exact.search(q, 10)[1]
    ivf = build_index("ivf", 16, nlist=32, nprobe=1)
    ivf.add(x)
    assert isinstance(ivf, FaissIndex)
    low = _recall(ivf.search(q, 10)[1], ref)
    ivf.set_search_params(nprobe=32)  # every cell: exhaustive
    assert _recall(ivf.search(q, 10)[1], ref) == 1.0 > low
    with pytest.raises(ValueError, match=r"applies to kind .hnsw. only"):
        ivf.set_search_params(ef_search=10)


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    params = {
        "exact": {"block_rows": 32},
        "ivf": {"nlist": 8, "nprobe": 3},
        "hnsw": {"ef_search": 20},
    }
    x, q = _random(200, 6, 12), _random(5, 6, 13)
    index = build_index(kind, 6, **params.get(kind, {}))
    index.add(x)
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert type(loaded) is type(index)
    assert loaded.ntotal == 200 and loaded.dim == 6
    assert loaded.config == index.config
    for a, b in zip(index.search(q, 8), loaded.search(q, 8), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not list((tmp_path / "idx").glob("*.pkl"))


def test_exact_save_is_plain_npy(tmp_path: Path) -> None:
    x = _random(50, 3, 14)
    index = build_index("exact", 3, block_rows=7)
    index.add(x)
    index.save(tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "vectors.npy", allow_pickle=False), x)
    assert isinstance(load_index(tmp_path), ExactIndex)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing index\.json"):
        load_index(tmp_path)
    index = build_index("exact", 3)
    index.add(_random(5, 3, 0))
    index.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps({**meta, "ntotal": 6}))
    with pytest.raises(ValueError, match="ntotal 6"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        load_index(tmp_path)


def test_exact_threaded_split_equals_serial_and_brute_force() -> None:
    """An index with a thread policy splits large batches across its own worker threads; same
    results as the serial path and the float64 reference, and no thread setting changes."""
    import threadpoolctl
    import torch

    from warmstart.retrieval import index as index_module

    x, q = _random(500, 16, 6), _random(5 * index_module.MIN_QUERIES_PER_WORKER + 3, 16, 7)
    serial = build_index("exact", 16, block_rows=64, query_block=20)
    serial.add(x)
    assert isinstance(serial, ExactIndex) and serial.threads is None
    before = (torch.get_num_threads(), threadpoolctl.threadpool_info())
    for threads in (1, 3):
        index = serial.with_threads(threads)
        scores, ids = index.search(q, 9)  # 3: split in 3 worker threads; 1: serial in torch
        serial_scores, serial_ids = serial.search(q, 9)
        np.testing.assert_array_equal(ids, serial_ids)
        np.testing.assert_allclose(scores, serial_scores, rtol=1e-6, atol=1e-6)
        _assert_matches_reference(x, q, scores, ids, 9)
        _, one_i = index.search(q[:1], 9)  # the single-query path under a policy
        np.testing.assert_array_equal(one_i, serial_ids[:1])
    assert (torch.get_num_threads(), threadpoolctl.threadpool_info()) == before


def test_thread_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="threads=0"):
        build_index("exact", 4, threads=0)
    with pytest.raises(ValueError, match="threads"):
        load_index(Path("."), threads=-1)
