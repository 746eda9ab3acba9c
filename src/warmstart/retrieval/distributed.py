"""Worker processes for cross-batch negatives (RocketQA, Qu et al., NAACL 2021, arXiv 2010.08191).

Two ways to get a process group:
* ``torchrun --nproc-per-node=A ...``: :func:`init_from_env` reads the variables torchrun sets;
* :func:`spawn_workers`: starts A processes with ``torch.multiprocessing`` on 127.0.0.1 (tests,
  the CLI's ``--workers``). gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(rank: int, world_size: int, port: int, backend: str | None = None) -> None:
    """Join a process group rendezvousing on 127.0.0.1:port."""
    dist.init_process_group(
        backend=backend or default_backend(),
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
    )


def init_from_env(env: Mapping[str, str], backend: str | None = None) -> tuple[int, int]:
    """Join the group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT``).

    Args:
        env: the environment mapping (the CLI passes ``os.environ``).

    Returns:
        (rank, world_size); (0, 1) without touching torch.distributed when not under torchrun.
    """
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return 0, 1
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or default_backend(), init_method="env://")
    return rank, world


def _worker(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    threads: int,
    args: tuple[Any, ...],
) -> None:
    torch.set_num_threads(threads)
    init_process_group(rank, world_size, port, backend)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn_workers(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple[Any, ...] = (),
    *,
    backend: str = "gloo",
    threads_per_worker: int = 1,
) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined in a group.

    ``fn`` must be importable (module level); results travel back through files or queues in
    ``args``. Raises if any worker fails.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: must be >= 1")
    port = free_port()
    mp.start_processes(
        _worker,
        args=(fn, world_size, port, backend, threads_per_worker, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
