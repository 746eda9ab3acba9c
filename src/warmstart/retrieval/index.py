"""Vector indexes for inner-product retrieval: exact (ours) and faiss (flat, IVF, HNSW).

RocketQA (Qu et al., NAACL 2021, arXiv 2010.08191) retrieves with exact inner-product search over
the passage embeddings; the ANN kinds trade a little recall for speed on large corpora.

One small interface for every kind::

    index = build_index("exact", dim=384)
    index.add(passages)                      # (N, D) float32
    scores, ids = index.search(queries, 10)  # (M, k) float32, (M, k) int64 row positions
    index.save(path); index = load_index(path)

Conventions:
    * Scores are inner products, best first; ids are row positions in insertion order.
    * ``k`` larger than ``ntotal`` is clipped: the result has ``min(k, ntotal)`` columns.
    * ANN kinds (``ivf``, ``hnsw``) can find fewer than ``k`` hits; missing slots hold id ``-1``
      and score ``-inf`` (``exact`` and ``flat`` always fill every slot).
    * Vectors must be finite; NaN or infinity raises ``ValueError``.
    * Threads: a constructor argument (``build_index(..., threads=n)``, ``load_index(path,
      threads=n)``), applied to that index's calls only; nothing process-wide is ever changed
      (``retrieval.threads`` says what is isolated how).
    * Saved indexes are a directory: ``index.json`` plus ``vectors.npy`` (exact) or
      ``index.faiss`` (faiss kinds). Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from warmstart.checkpoint import read_versioned_json
from warmstart.retrieval.threads import check_threads, intra_op_threads

__all__ = [
    "KINDS",
    "ExactConfig",
    "ExactIndex",
    "FaissIndex",
    "FlatConfig",
    "HNSWConfig",
    "IVFConfig",
    "VectorIndex",
    "build_index",
    "load_index",
]

_FORMAT_VERSION = 1
_META_FILE = "index.json"
_VECTORS_FILE = "vectors.npy"
_FAISS_FILE = "index.faiss"


class VectorIndex(Protocol):
    """What every index kind offers."""

    @property
    def ntotal(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def add(self, vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, path: Path) -> None: ...


# --------------------------------------------------------------------------- configs


def _check_positive(name: str, value: int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class ExactConfig:
    """Exact blocked inner-product search (ours).

    Attributes:
        dim: vector dimension.
        block_rows: corpus rows scored per matrix product. The default keeps a 256-query score
            block (256 x 8192 x 4 B = 8 MiB) inside the L3 cache of a small server.
        query_block: queries scored together against one corpus block.
    """

    kind: ClassVar[str] = "exact"
    dim: int
    block_rows: int = 8192
    query_block: int = 256

    def __post_init__(self) -> None:
        for name in ("dim", "block_rows", "query_block"):
            _check_positive(name, getattr(self, name))


MIN_QUERIES_PER_WORKER = 32
"""A batch is split across threads only when every thread gets at least this many queries."""


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, in_torch: bool) -> None:
    """``out[...] = a @ b`` in numpy's BLAS, or in torch (MKL) with ``in_torch``."""
    if in_torch:
        if a.ndim == 1:  # one query: a (1, D) @ (D, n) product into the (n,) slice, as a view
            a, out = a[None], out.reshape(1, -1)
        torch.matmul(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
    else:
        np.matmul(a, b, out=out)


@dataclass(frozen=True)
class FlatConfig:
    """faiss ``IndexFlatIP`` (exact, faiss's kernels)."""

    kind: ClassVar[str] = "flat"
    dim: int

    def __post_init__(self) -> None:
        _check_positive("dim", self.dim)


@dataclass(frozen=True)
class IVFConfig:
    """faiss ``IndexIVFFlat`` with inner-product metric; trained on the first ``add``.

    Attributes:
        dim: vector dimension.
        nlist: number of k-means cells; ``None`` picks ``4 * sqrt(N)`` (at most ``N // 39``, the
            faiss rule of thumb of >= 39 training points per cell) from the first ``add``.
        nprobe: cells visited per query (recall/speed knob).
    """

    kind: ClassVar[str] = "ivf"
    dim: int
    nlist: int | None = None
    nprobe: int = 8

    def __post_init__(self) -> None:
        _check_positive("dim", self.dim)
        _check_positive("nlist", self.nlist, allow_none=True)
        _check_positive("nprobe", self.nprobe)


@dataclass(frozen=True)
class HNSWConfig:
    """faiss ``IndexHNSWFlat`` with inner-product metric.

    Attributes:
        dim: vector dimension.
        m: graph neighbours per node (faiss ``M``).
        ef_construction: beam width while building (faiss ``efConstruction``).
        ef_search: beam width while searching (faiss ``efSearch``; recall/speed knob).
    """

    kind: ClassVar[str] = "hnsw"
    dim: int
    m: int = 32
    ef_construction: int = 40
    ef_search: int = 64

    def __post_init__(self) -> None:
        for name in ("dim", "m", "ef_construction", "ef_search"):
            _check_positive(name, getattr(self, name))


_CONFIGS: dict[str, type] = {c.kind: c for c in (ExactConfig, FlatConfig, IVFConfig, HNSWConfig)}
KINDS: tuple[str, ...] = tuple(_CONFIGS)

AnyConfig = ExactConfig | FlatConfig | IVFConfig | HNSWConfig


def _make_config(kind: str, dim: int, params: dict[str, Any]) -> AnyConfig:
    if kind not in _CONFIGS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    cls = _CONFIGS[kind]
    allowed = [f.name for f in dataclasses.fields(cls) if f.name != "dim"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for kind {kind!r}; allowed: {allowed}")
    config: AnyConfig = cls(dim=dim, **params)
    return config


# --------------------------------------------------------------------------- validation


def _as_matrix(x: np.ndarray, dim: int, name: str) -> np.ndarray:
    """Validate and return a C-contiguous, writable float32 (N, dim) array (copy if needed)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, {dim}), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise ValueError(f"{name} dimension mismatch: index dim is {dim}, got {arr.shape[1]}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr.flags.writeable:
        arr = arr.copy()
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise ValueError(f"{name} contain NaN or infinity (first bad row: {bad})")
    return arr


def _check_k(k: int, ntotal: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if ntotal == 0:
        raise ValueError("cannot search an empty index: add vectors first")
    return min(int(k), ntotal)


# --------------------------------------------------------------------------- exact (ours)


class ExactIndex:
    """Exact inner-product search by blocked matrix products and per-block top-k.

    The corpus is stored as blocks of ``block_rows`` rows (transposed, (D, rows)). Each corpus
    block is multiplied with each query block (one GEMM), ``torch.topk`` keeps the block's best
    ``k`` and a running merge keeps the overall best ``k``: no full sort, the corpus is read once,
    and the score block stays in cache. A single query uses matrix-vector products into one score
    vector and one ``np.argpartition``; so does each query of a corpus that fits one block
    (nothing to merge).

    Thread policy (``threads``, see ``retrieval.threads``): ``None`` (default) searches in the
    calling thread with the process's settings (numpy's BLAS for the products) and changes
    nothing. ``n`` runs each search with ``n`` threads and nothing else: a batch of at least
    ``2 * MIN_QUERIES_PER_WORKER`` queries is split across the index's own pool of ``n`` worker
    threads, each searching its share with one intra-op thread; smaller batches run in the
    calling thread limited to ``n``. With a policy the products run in torch (MKL), whose thread
    count can be limited per thread; numpy's OpenBLAS count is process-wide and never touched.
    """

    def __init__(self, config: ExactConfig, threads: int | None = None) -> None:
        self.config = config
        self.threads = check_threads(threads)
        # each block (D, <= block_rows) float32, C-contiguous: transposed, so that one query is
        # a row-vector x matrix product (BLAS gemv "N": streams the block once, accumulating the
        # block's scores in L1), measurably faster here than dot products row by row.
        self._blocks: list[np.ndarray] = []
        self._ntotal = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return self._ntotal

    @property
    def dim(self) -> int:
        return self.config.dim

    def with_threads(self, threads: int | None) -> ExactIndex:
        """The same vectors (shared, not copied) under another thread policy."""
        other = ExactIndex(self.config, threads)
        other._blocks, other._ntotal = list(self._blocks), self._ntotal
        return other

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors.

        Args:
            vectors: (N, D) float array; copied, so later changes to it do not leak in.
        """
        arr = _as_matrix(vectors, self.dim, "vectors")
        start = 0
        if self._blocks and self._blocks[-1].shape[1] < self.config.block_rows:
            room = self.config.block_rows - self._blocks[-1].shape[1]
            self._blocks[-1] = np.ascontiguousarray(np.hstack([self._blocks[-1], arr[:room].T]))
            start = room
        for s in range(start, len(arr), self.config.block_rows):
            self._blocks.append(np.ascontiguousarray(arr[s : s + self.config.block_rows].T))
        self._ntotal += len(arr)

    def search(
        self, queries: np.ndarray, k: int, ordered: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product.

        Args:
            queries: (M, D) float array.
            k: hits per query; clipped to ``ntotal``.
            ordered: ``False`` returns the same top-``k`` of each query in no particular order
                (no final sort: for a caller that re-ranks them anyway).

        Returns:
            scores (M, k') float32 and row positions (M, k') int64, best first, k' = min(k, ntotal).
        """
        q = _as_matrix(queries, self.dim, "queries")
        kk = _check_k(k, self._ntotal)
        if self.threads is None:  # the process's settings, numpy's BLAS
            if len(q) == 1:
                scores, ids = self._search_vector(q[0], kk, in_torch=False, ordered=ordered)
                return scores[None], ids[None]
            with torch.inference_mode():
                return self._search_blocked(q, kk, in_torch=False, ordered=ordered)
        workers = min(self.threads, len(q) // MIN_QUERIES_PER_WORKER)
        if workers >= 2:
            return self._search_parallel(q, kk, workers, ordered)
        with intra_op_threads(self.threads), torch.inference_mode():
            if len(q) == 1:
                scores, ids = self._search_vector(q[0], kk, in_torch=True, ordered=ordered)
                return scores[None], ids[None]
            return self._search_blocked(q, kk, in_torch=True, ordered=ordered)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="exact-index")
            return self._pool

    def _search_parallel(
        self, q: np.ndarray, k: int, workers: int, ordered: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries split into ``workers`` shares, each searched by ``_search_blocked`` in one of
        the index's own worker threads with one intra-op thread (GEMM and top-k in torch, which
        release the GIL); the calling thread waits.

        Why: with one multi-threaded search, the GEMM's BLAS threads and torch's OpenMP threads
        (``topk``) take turns and each pool's idle threads spin on the cores the other needs; on
        2 cores, 1M x 384 and 1,000 queries, that gave 122 queries/s with 2 threads (129 with
        1), a split into single-threaded shares 253 (faiss ``IndexFlatIP`` 260; measured when
        the shares still ran numpy's GEMM under process-wide limits, see docs/indexes.md). The
        limits here are per worker thread (``intra_op_threads``), so no other thread of the
        process sees them, and searches from several caller threads may share the pool.
        """
        parts = np.array_split(np.arange(len(q)), workers)

        def run(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with intra_op_threads(1), torch.inference_mode():
                return self._search_blocked(q[rows], k, in_torch=True, ordered=ordered)

        results = list(self._executor().map(run, parts))
        return (
            np.concatenate([r[0] for r in results]),
            np.concatenate([r[1] for r in results]),
        )

    def _search_vector(
        self, q: np.ndarray, k: int, *, in_torch: bool, ordered: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """One query (D,): matrix-vector products into one (N,) score vector, one partition."""
        scores = np.empty(self._ntotal, dtype=np.float32)
        offset = 0
        for block in self._blocks:
            n = block.shape[1]
            _matmul(q, block, scores[offset : offset + n], in_torch)
            offset += n
        ids = np.argpartition(scores, -k)[-k:] if k < self._ntotal else np.arange(self._ntotal)
        if ordered:
            ids = ids[np.argsort(-scores[ids], kind="stable")]
        return scores[ids], ids.astype(np.int64)

    def _search_blocked(
        self, q: np.ndarray, k: int, *, in_torch: bool, ordered: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries (M, D): each corpus block is read once and scored against every query block.

        The GEMM runs in numpy (OpenBLAS: faster than MKL's on AMD CPUs) into a reused score
        buffer, or in torch with ``in_torch`` (a thread policy: MKL's count is per thread). Each
        query keeps its best ``k`` so far and their minimum (``floor``); a query whose best score
        in the block does not beat its floor cannot gain a hit there, so only the other rows go
        through ``torch.topk`` and the (rows, 2k) merge. A row max costs a fraction of a top-k
        (1M x 384, 256 queries, one thread: GEMM alone 153 q/s, + topk of every row 130, + row
        max 149), and after the first blocks most rows are skipped.
        """
        if len(self._blocks) == 1:
            return self._search_one_block(q, k, in_torch=in_torch, ordered=ordered)
        qb = self.config.query_block
        best_v = torch.full((len(q), k), -math.inf)
        best_i = torch.full((len(q), k), -1, dtype=torch.int64)
        floor = torch.full((len(q),), -math.inf)  # k-th best so far (-inf until k hits exist)
        buf = np.empty(min(qb, len(q)) * self.config.block_rows, dtype=np.float32)
        offset = 0
        for block in self._blocks:
            n = block.shape[1]
            for s in range(0, len(q), qb):
                qs = q[s : s + qb]
                scores = buf[: len(qs) * n].reshape(len(qs), n)
                _matmul(qs, block, scores, in_torch)  # (m, D) @ (D, n)
                block_scores = torch.from_numpy(scores)
                rows = torch.nonzero(block_scores.amax(dim=1) > floor[s : s + qb]).squeeze(1)
                if rows.numel() == 0:
                    continue
                live = s + rows  # global query rows that can still gain a hit here
                v, i = torch.topk(block_scores[rows], min(k, n), dim=1, sorted=False)
                if offset == 0 and n >= k:  # the first block's k best are the best so far
                    best_v[live], best_i[live], floor[live] = v, i, v.amin(dim=1)
                    continue
                cand_v = torch.cat([best_v[live], v], dim=1)  # (r, k + k_block)
                cand_i = torch.cat([best_i[live], i + offset], dim=1)
                top_v, pos = torch.topk(cand_v, k, dim=1, sorted=False)
                best_v[live] = top_v
                best_i[live] = torch.gather(cand_i, 1, pos)
                floor[live] = top_v.amin(dim=1)
            offset += n
        if not ordered:
            return best_v.numpy(), best_i.numpy()
        best_v, order = torch.sort(best_v, dim=1, descending=True, stable=True)
        return best_v.numpy(), torch.gather(best_i, 1, order).numpy()

    def _search_one_block(
        self, q: np.ndarray, k: int, *, in_torch: bool, ordered: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries (M, D) over a corpus of one block: nothing to merge, so each query block's
        scores go through one row-wise ``np.argpartition``, not ``torch.topk``. With k a large
        share of the rows, topk is the slow part: 48 queries, 3,706 rows of 17 (the ML-1M MF
        candidates), k = 520, one thread: topk 34 us a query, argpartition 6 us."""
        (block,) = self._blocks
        n, qb = block.shape[1], self.config.query_block
        out_v = np.empty((len(q), k), dtype=np.float32)
        out_i = np.empty((len(q), k), dtype=np.int64)
        buf = np.empty(min(qb, len(q)) * n, dtype=np.float32)
        for s in range(0, len(q), qb):
            qs = q[s : s + qb]
            scores = buf[: len(qs) * n].reshape(len(qs), n)
            _matmul(qs, block, scores, in_torch)
            ids = np.argpartition(scores, n - k, axis=1)[:, n - k :]
            top = np.take_along_axis(scores, ids, 1)
            if ordered:
                order = np.argsort(-top, axis=1, kind="stable")
                ids, top = np.take_along_axis(ids, order, 1), np.take_along_axis(top, order, 1)
            out_v[s : s + len(qs)], out_i[s : s + len(qs)] = top, ids
        return out_v, out_i

    def save(self, path: Path) -> None:
        """Write ``index.json`` and ``vectors.npy`` (streamed block by block) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(
            path / _VECTORS_FILE, mode="w+", dtype=np.float32, shape=(self._ntotal, self.dim)
        )
        offset = 0
        for block in self._blocks:
            out[offset : offset + block.shape[1]] = block.T
            offset += block.shape[1]
        out.flush()
        del out
        _write_meta(path, self.config, ntotal=self._ntotal)

    @classmethod
    def _load(cls, path: Path, config: ExactConfig, threads: int | None = None) -> ExactIndex:
        vectors = np.load(path / _VECTORS_FILE, allow_pickle=False, mmap_mode="r")
        index = cls(config, threads)
        for s in range(0, len(vectors), config.block_rows):
            index.add(np.asarray(vectors[s : s + config.block_rows]))
        return index


# --------------------------------------------------------------------------- faiss kinds


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "faiss is needed for index kinds flat/ivf/hnsw: pip install 'warmstart[retrieval]'"
        ) from err
    return faiss


def _auto_nlist(n: int) -> int:
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


class FaissIndex:
    """faiss ``IndexFlatIP`` / ``IndexIVFFlat`` / ``IndexHNSWFlat`` behind the common interface.

    The IVF index is created and trained on the first ``add`` (so ``nlist`` can be chosen from
    the data size); later adds only assign vectors to the trained cells.
    """

    def __init__(
        self,
        config: FlatConfig | IVFConfig | HNSWConfig,
        raw: Any = None,
        threads: int | None = None,
    ) -> None:
        self.config = config
        self.threads = check_threads(threads)
        self._faiss = _faiss()
        self._raw = raw if raw is not None else self._create()

    def _create(self) -> Any:
        faiss, c = self._faiss, self.config
        if isinstance(c, FlatConfig):
            return faiss.IndexFlatIP(c.dim)
        if isinstance(c, HNSWConfig):
            raw = faiss.IndexHNSWFlat(c.dim, c.m, faiss.METRIC_INNER_PRODUCT)
            raw.hnsw.efConstruction = c.ef_construction
            raw.hnsw.efSearch = c.ef_search
            return raw
        return None  # IVF: built on first add

    @property
    def ntotal(self) -> int:
        return 0 if self._raw is None else int(self._raw.ntotal)

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def kind(self) -> str:
        return self.config.kind

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the recall/speed knob of an IVF (``nprobe``) or HNSW (``ef_search``) index."""
        if nprobe is not None:
            if not isinstance(self.config, IVFConfig):
                raise ValueError(f"nprobe applies to kind 'ivf' only, not {self.kind!r}")
            self.config = dataclasses.replace(self.config, nprobe=nprobe)
            if self._raw is not None:
                self._raw.nprobe = nprobe
        if ef_search is not None:
            if not isinstance(self.config, HNSWConfig):
                raise ValueError(f"ef_search applies to kind 'hnsw' only, not {self.kind!r}")
            self.config = dataclasses.replace(self.config, ef_search=ef_search)
            self._raw.hnsw.efSearch = ef_search

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors (N, D); the first ``add`` of an IVF index also trains it."""
        arr = _as_matrix(vectors, self.dim, "vectors")
        if self._raw is None:
            self._raw = self._train_ivf(arr)
        self._raw.add(arr)

    def _train_ivf(self, arr: np.ndarray) -> Any:
        faiss, c = self._faiss, self.config
        assert isinstance(c, IVFConfig)
        nlist = c.nlist if c.nlist is not None else _auto_nlist(len(arr))
        if len(arr) < nlist:
            raise ValueError(
                f"ivf needs at least nlist={nlist} vectors in its first add to train, got {len(arr)}"
            )
        self.config = dataclasses.replace(c, nlist=nlist)
        raw = faiss.IndexIVFFlat(faiss.IndexFlatIP(c.dim), c.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        raw.train(arr)
        raw.nprobe = c.nprobe
        return raw

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product; see the module docstring for clipping and padding."""
        q = _as_matrix(queries, self.dim, "queries")
        kk = _check_k(k, self.ntotal)
        if self.threads is None:
            scores, ids = self._raw.search(q, kk)
        else:  # faiss's OpenMP thread count, for the calling thread only, restored after
            before = self._faiss.omp_get_max_threads()
            self._faiss.omp_set_num_threads(self.threads)
            try:
                scores, ids = self._raw.search(q, kk)
            finally:
                self._faiss.omp_set_num_threads(before)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)

    def save(self, path: Path) -> None:
        """Write ``index.json`` and ``index.faiss`` (``faiss.write_index``) into ``path``."""
        if self._raw is None:
            raise ValueError("cannot save an ivf index before its first add (it is untrained)")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._faiss.write_index(self._raw, str(path / _FAISS_FILE))
        _write_meta(path, self.config, ntotal=self.ntotal)

    @classmethod
    def _load(
        cls, path: Path, config: FlatConfig | IVFConfig | HNSWConfig, threads: int | None = None
    ) -> FaissIndex:
        index = cls(config, raw=_faiss().read_index(str(path / _FAISS_FILE)), threads=threads)
        if isinstance(config, IVFConfig):
            index._raw.nprobe = config.nprobe
        if isinstance(config, HNSWConfig):
            index._raw.hnsw.efSearch = config.ef_search
        return index


# --------------------------------------------------------------------------- build / save / load


def build_index(
    kind: str, dim: int, *, threads: int | None = None, **params: Any
) -> ExactIndex | FaissIndex:
    """Create an empty index.

    Args:
        kind: ``exact`` (ours, blocked GEMM + top-k), ``flat`` (faiss IndexFlatIP), ``ivf``
            (faiss IndexIVFFlat) or ``hnsw`` (faiss IndexHNSWFlat).
        dim: vector dimension D.
        threads: thread policy of its searches (None: the process's settings, changed by
            nothing; n: n threads for this index's calls only, see ``retrieval.threads``).
        **params: kind-specific settings: exact ``block_rows``, ``query_block``; ivf ``nlist``,
            ``nprobe``; hnsw ``m``, ``ef_construction``, ``ef_search``.

    Raises:
        ValueError: unknown kind, unknown parameter for the kind, or an invalid value.
    """
    config = _make_config(kind, dim, params)
    if isinstance(config, ExactConfig):
        return ExactIndex(config, threads)
    return FaissIndex(config, threads=threads)


def _write_meta(path: Path, config: AnyConfig, *, ntotal: int) -> None:
    meta = {
        "format_version": _FORMAT_VERSION,
        "kind": config.kind,
        "ntotal": ntotal,
        "config": dataclasses.asdict(config),
    }
    (path / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_index(path: Path, threads: int | None = None) -> ExactIndex | FaissIndex:
    """Load an index written by ``save`` (``threads``: its thread policy, see ``build_index``).

    Raises:
        FileNotFoundError: ``path`` has no ``index.json``.
        ValueError: unsupported format version, unknown kind, or a size mismatch.
    """
    check_threads(threads)
    path = Path(path)
    meta_file = path / _META_FILE
    meta = read_versioned_json(
        meta_file, _FORMAT_VERSION, f"no saved index at {path} (missing {_META_FILE})"
    )
    params = dict(meta["config"])
    config = _make_config(meta["kind"], params.pop("dim"), params)
    index: ExactIndex | FaissIndex
    if isinstance(config, ExactConfig):
        index = ExactIndex._load(path, config, threads)
    else:
        index = FaissIndex._load(path, config, threads)
    if index.ntotal != meta["ntotal"]:
        raise ValueError(f"{meta_file}: ntotal {meta['ntotal']} but {index.ntotal} vectors found")
    return index
