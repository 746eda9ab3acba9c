"""Thread policy of the retrieval inference objects: per call, per thread, never process-wide."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import threadpoolctl
import torch

from warmstart.retrieval.index import build_index
from warmstart.retrieval.threads import check_threads, intra_op_threads, per_thread_limits


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture
def two_torch_threads():
    """A process-wide count of 2 (the session runs with 1), so a leaked limit of 1 shows."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_check_threads_names_the_argument() -> None:
    assert check_threads(None) is None and check_threads(3) == 3
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads="):
            check_threads(bad)  # type: ignore[arg-type]


def test_intra_op_limit_applies_to_the_calling_thread_only(two_torch_threads: int) -> None:
    if not per_thread_limits()["openmp"]:
        pytest.skip("this torch build exposes no per-thread OpenMP control")
    seen: dict[str, int] = {}

    def other() -> None:
        seen["other"] = torch.get_num_threads()

    with intra_op_threads(1):
        seen["inside"] = torch.get_num_threads()
        t = threading.Thread(target=other)  # started while the limit holds
        t.start()
        t.join()
    seen["after"] = torch.get_num_threads()
    assert seen == {"inside": 1, "other": two_torch_threads, "after": two_torch_threads}


def test_one_index_policy_does_not_leak_into_another_threads_calls(
    two_torch_threads: int,
) -> None:
    """Thread A searches an index with a 2-thread policy (split across its own workers, each
    limited to 1 thread) in a loop; thread B, meanwhile, searches an index with no policy and
    records the thread settings it runs under: always the process's, never A's limits."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    q = rng.standard_normal((256, 32)).astype(np.float32)
    policy = build_index("exact", 32, threads=2, block_rows=256, query_block=32)
    policy.add(x)
    plain = build_index("exact", 32, block_rows=256)
    plain.add(x)
    expected = plain.search(q[:8], 5)
    blas = _blas_threads()
    started, stop = threading.Event(), threading.Event()
    searches = {"a": 0}
    observed: list[tuple[int, list[int]]] = []
    results: list[tuple[np.ndarray, np.ndarray]] = []

    def thread_a() -> None:
        while not stop.is_set():
            policy.search(q, 10)
            searches["a"] += 1
            started.set()

    def thread_b() -> None:
        started.wait(10)
        for _ in range(40):
            observed.append((torch.get_num_threads(), _blas_threads()))
            results.append(plain.search(q[:8], 5))
        stop.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert searches["a"] >= 1 and len(observed) == 40
    assert all(o == (two_torch_threads, blas) for o in observed), observed
    for scores, ids in results:
        np.testing.assert_array_equal(ids, expected[1])
        np.testing.assert_array_equal(scores, expected[0])
    # nothing changed for the process either, nor for a thread started now
    fresh: list[int] = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh == [two_torch_threads] and torch.get_num_threads() == two_torch_threads
    assert _blas_threads() == blas


def test_faiss_index_policy_is_restored_for_the_calling_thread() -> None:
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    q = rng.standard_normal((40, 16)).astype(np.float32)
    plain = build_index("flat", 16)
    plain.add(x)
    limited = build_index("flat", 16, threads=1)
    limited.add(x)
    before = faiss.omp_get_max_threads()
    np.testing.assert_array_equal(limited.search(q, 5)[1], plain.search(q, 5)[1])
    assert faiss.omp_get_max_threads() == before
