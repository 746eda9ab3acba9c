"""Benchmark: exact inner-product search, ours (``exact``) versus faiss ``IndexFlatIP``; ANN recall.

Corpus: N x 384 float32 synthetic embeddings (a mixture of Gaussian clusters, L2-normalised, so
ANN recall means something), generated chunk by chunk (N = 1M needs 1.5 GB per index copy; ours
and faiss's are alive together: about 3 GB). Queries come from the same distribution.

Exact search is timed for single queries, batches of 100 and batches of 1,000, each side at its
best of 1 and 2 threads (torch intra-op, OpenMP and BLAS pools are all limited together with
threadpoolctl). Each timing is the best of a few repeats, ours and faiss interleaved, because
the machine is shared. ANN: recall@10 against exact results and queries/s (batch of 1,000, best
of 1/2 threads) for ``ivf`` (faiss IndexIVFFlat) and ``hnsw`` (faiss IndexHNSWFlat) at a couple
of settings; HNSW is built on the first ``--hnsw-n`` rows (building it over 1M rows on two cores
takes too long), with its own exact ground truth.

Usage:
    python benchmarks/bench_index.py [--quick] [--n N] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import faiss
import numpy as np
import torch
from tqdm import tqdm

from common import add_common_args, print_table, ratio, write_result
from warmstart.retrieval.index import FaissIndex, build_index

DIM = 384
K = 10
CHUNK = 50_000
N_CLUSTERS = 1_000
SINGLE_QUERIES = 10  # single-query calls timed (each on a different query)


# ----------------------------------------------------------------------------- data


def _centres(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N_CLUSTERS, DIM), dtype=np.float32)


def _sample(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)]
    x += rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def corpus_chunks(n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The same N x DIM corpus every time, in chunks of CHUNK rows."""
    centres = _centres(seed)
    for i, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, i])
        yield _sample(rng, centres, min(CHUNK, n - start))


def make_queries(n: int, seed: int = 0) -> np.ndarray:
    return _sample(np.random.default_rng([seed, 10**6]), _centres(seed), n)


def fill(index: Any, n: int, desc: str) -> Any:
    for chunk in tqdm(corpus_chunks(n), total=-(-n // CHUNK), desc=desc, leave=False):
        index.add(chunk)
    return index


# ----------------------------------------------------------------------------- timing


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Limit torch, faiss's OpenMP and every BLAS/OpenMP pool in the process to ``n`` threads."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def qps_case(index: Any, queries: np.ndarray, nq: int, repeats: int) -> float:
    """Queries/s: batches of ``nq`` queries (nq = 1: SINGLE_QUERIES distinct single calls)."""
    if nq == 1:
        rows = [queries[i : i + 1] for i in range(SINGLE_QUERIES)]
        index.search(rows[0], K)  # warm-up
        return 1.0 / min(best_time(functools.partial(index.search, r, K), 1) for r in rows)
    batch = queries[:nq]
    index.search(batch[: min(nq, 10)], K)
    return nq / best_time(lambda: index.search(batch, K), repeats)


def exact_rows(
    ours: Any, flat: Any, queries: np.ndarray, thread_counts: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for nq, repeats in ((1, 1), (100, 3), (1000, 2)):
        row: dict[str, Any] = {"case": "single query" if nq == 1 else f"batch of {nq}"}
        for t in thread_counts:
            with threads(t):  # interleave: ours then faiss at the same thread count
                # ours takes its thread count as a policy (t >= 2: split across its own workers)
                row[f"ours_t{t}"] = qps_case(ours.with_threads(t), queries, nq, repeats)
                row[f"faiss_t{t}"] = qps_case(flat, queries, nq, repeats)
        for side in ("ours", "faiss"):
            by_threads = {t: row[f"{side}_t{t}"] for t in thread_counts}
            t_best = max(by_threads, key=by_threads.__getitem__)
            row[f"{side} q/s"], row[f"{side} threads"] = by_threads[t_best], t_best
        row["ours/faiss"] = ratio(row["ours q/s"], row["faiss q/s"])
        rows.append(row)
        print(f"  {row['case']}: ours {row['ours q/s']:.1f} q/s, faiss {row['faiss q/s']:.1f} q/s")
    return rows


# ----------------------------------------------------------------------------- ANN


def recall_at_k(ids: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(a) & set(b)) for a, b in zip(ids, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


def ann_rows(
    index: FaissIndex,
    settings: list[dict[str, int]],
    queries: np.ndarray,
    truth: np.ndarray,
    thread_counts: list[int],
    label: str,
) -> list[dict[str, Any]]:
    rows = []
    for setting in settings:
        index.set_search_params(**setting)
        qps = {}
        for t in thread_counts:
            with threads(t):
                qps[t] = qps_case(index, queries, len(queries), 2)
        t_best = max(qps, key=lambda t: qps[t])
        recall = recall_at_k(index.search(queries, K)[1], truth)
        name = ", ".join(f"{k}={v}" for k, v in setting.items())
        rows.append(
            {
                "index": label,
                "setting": name,
                "recall@10": recall,
                "q/s": qps[t_best],
                "threads": t_best,
            }
        )
        print(f"  {label} {name}: recall@10 {recall:.3f}, {qps[t_best]:.0f} q/s")
    return rows


def run_ann(
    n: int, hnsw_n: int, queries: np.ndarray, truth: np.ndarray, thread_counts: list[int]
) -> list[dict[str, Any]]:
    nlist = max(16, round(np.sqrt(n)))  # ~1k cells at 1M: k-means stays affordable on 2 cores
    rows = []
    start = time.perf_counter()
    with threads(max(thread_counts)):
        ivf = fill(build_index("ivf", DIM, nlist=nlist), n, "ivf add")
    print(f"  ivf nlist={nlist}: trained + added {n} rows in {time.perf_counter() - start:.0f} s")
    assert isinstance(ivf, FaissIndex)
    settings = [{"nprobe": 4}, {"nprobe": 16}, {"nprobe": 64}]
    rows += ann_rows(ivf, settings, queries, truth, thread_counts, f"ivf nlist={nlist}, N={n}")
    del ivf
    with threads(max(thread_counts)):
        exact_small = fill(build_index("exact", DIM), hnsw_n, "exact (hnsw truth)")
        truth_small = exact_small.search(queries, K)[1]
        del exact_small
        start = time.perf_counter()
        hnsw = fill(build_index("hnsw", DIM, m=32, ef_construction=40), hnsw_n, "hnsw add")
    print(f"  hnsw M=32: built on {hnsw_n} rows in {time.perf_counter() - start:.0f} s")
    assert isinstance(hnsw, FaissIndex)
    settings = [{"ef_search": 16}, {"ef_search": 64}, {"ef_search": 256}]
    rows += ann_rows(hnsw, settings, queries, truth_small, thread_counts, f"hnsw M=32, N={hnsw_n}")
    return rows


# ----------------------------------------------------------------------------- main


def plot(rows: list[dict[str, Any]]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["ours q/s"] for r in rows], 0.4, label="ours (exact)")
        ax.bar(x + 0.2, [r["faiss q/s"] for r in rows], 0.4, label="faiss IndexFlatIP")
        ax.set_xticks(x, [r["case"] for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("queries / s (best of 1/2 threads)")
        ax.set_title("Exact inner-product search, synthetic 384-d corpus")
        ax.legend()

    return draw


def main() -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--n", type=int, default=None, help="corpus rows (1M; --quick 200k)")
    parser.add_argument("--hnsw-n", type=int, default=200_000, help="rows the HNSW graph holds")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-ann", action="store_true")
    args = parser.parse_args()
    n = args.n or (200_000 if args.quick else 1_000_000)
    hnsw_n = min(args.hnsw_n, n, 50_000 if args.quick else n)
    queries = make_queries(1000)
    print(f"corpus {n} x {DIM} float32 ({n * DIM * 4 / 2**30:.2f} GiB per copy), k={K}")
    ours = fill(build_index("exact", DIM), n, "ours add")
    flat = fill(build_index("flat", DIM), n, "faiss add")
    rows = exact_rows(ours, flat, queries, args.threads)
    with threads(max(args.threads)):
        truth = ours.search(queries, K)[1]
        agreement = recall_at_k(flat.search(queries, K)[1], truth)
    print(f"  top-{K} agreement ours vs faiss flat: {agreement:.4f}")
    del ours, flat
    print_table(
        rows, ["case", "ours q/s", "ours threads", "faiss q/s", "faiss threads", "ours/faiss"]
    )
    ann = [] if args.skip_ann else run_ann(n, hnsw_n, queries, truth, args.threads)
    if ann:
        print_table(ann, ["index", "setting", "recall@10", "q/s", "threads"])
    payload = {"n": n, "dim": DIM, "k": K, "exact": rows, "agreement_with_flat": agreement}
    payload["ann"] = ann
    payload["load_average"] = list(os.getloadavg())
    write_result("index_quick" if args.quick else "index", payload, plot(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
