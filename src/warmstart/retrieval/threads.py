"""Thread policy of the retrieval inference objects, applied per call and per thread.

``torch.set_num_threads`` and ``threadpoolctl`` limits are process-wide: a library call that
changes them for its own work changes them for every other thread of a server too (and
``torch.set_num_threads`` also sets the count that threads started later begin with). The
inference objects (``ExactIndex``, ``FaissIndex``, ``Retriever``) therefore take their thread
policy as a constructor argument, ``threads``:

* ``None`` (the default): the object changes nothing; its calls run with whatever the process
  uses (what the entry point chose, e.g. ``--threads``).
* ``n >= 1``: the object's calls run with ``n`` intra-op threads, set with
  :func:`intra_op_threads` for the calling thread only and restored when the call returns.

What :func:`intra_op_threads` changes, and so what is isolated:

* torch's OpenMP kernels (``topk``, elementwise ops, layer norm, attention softmax, ...):
  ``omp_set_num_threads`` on torch's ``libgomp``, whose thread-count setting is per thread;
* MKL, which runs torch's CPU matrix products (``nn.Linear``, ``torch.matmul``):
  ``MKL_Set_Num_Threads_Local``, MKL's per-thread count.

What it does not change (and the objects never set): numpy's OpenBLAS (its thread count is one
process-wide number in the pthreads build numpy ships, and ``openblas_set_num_threads_local``
is process-wide there too), so an object with a thread policy does its matrix products in
torch; faiss's own OpenMP runtime is limited per thread by ``faiss.omp_set_num_threads`` in
``FaissIndex``. Where torch's ``libgomp`` or MKL's symbols are missing (another torch build),
the limit is skipped for that library rather than applied process-wide
(:func:`per_thread_limits` says which are in effect).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def check_threads(threads: int | None, name: str = "threads") -> int | None:
    """``threads`` if it is None or an int >= 1, else ValueError naming it."""
    if threads is None:
        return None
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"{name}={threads!r}: must be None (the process setting) or an int >= 1")
    return threads


@functools.cache
def _libraries() -> tuple[Any, Any]:
    """(torch's libgomp, torch's MKL entry points) as ctypes handles, None where missing.

    Both are already loaded by ``import torch``; ``ctypes.CDLL`` on the same file returns that
    copy (the dynamic loader never loads a second one)."""
    import torch

    lib = Path(torch.__file__).parent / "lib"
    gomp = mkl = None
    try:
        gomp = ctypes.CDLL(str(lib / "libgomp.so.1"))
        gomp.omp_set_num_threads.argtypes = [ctypes.c_int]
        gomp.omp_set_num_threads.restype = None
        gomp.omp_get_max_threads.argtypes = []
        gomp.omp_get_max_threads.restype = ctypes.c_int
    except (OSError, AttributeError):
        gomp = None
    try:
        mkl = ctypes.CDLL(str(lib / "libtorch_cpu.so"))
        # the C interface (by value); the lower-case names are the Fortran one (by pointer)
        mkl.MKL_Set_Num_Threads_Local.argtypes = [ctypes.c_int]
        mkl.MKL_Set_Num_Threads_Local.restype = ctypes.c_int
    except (OSError, AttributeError):
        mkl = None
    return gomp, mkl


def per_thread_limits() -> dict[str, bool]:
    """Which per-thread limits :func:`intra_op_threads` can apply in this build."""
    gomp, mkl = _libraries()
    return {"openmp": gomp is not None, "mkl": mkl is not None}


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads in the calling thread only.

    ``None`` changes nothing. Nesting is fine (each level restores what it found). Other
    threads, and threads started while the block runs, keep their own settings.
    """
    if check_threads(threads) is None:
        yield
        return
    import torch

    gomp, mkl = _libraries()
    # torch sets a thread's counts on its first parallel call; do that first so it cannot
    # overwrite the limit below inside the block
    torch.get_num_threads()
    before_omp = gomp.omp_get_max_threads() if gomp is not None else None
    if gomp is not None:
        gomp.omp_set_num_threads(threads)
    before_mkl = mkl.MKL_Set_Num_Threads_Local(threads) if mkl is not None else None
    try:
        yield
    finally:
        if gomp is not None and before_omp is not None:
            gomp.omp_set_num_threads(before_omp)
        if mkl is not None and before_mkl is not None:
            mkl.MKL_Set_Num_Threads_Local(before_mkl)  # 0 restores "use the global count"
