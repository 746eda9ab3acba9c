"""Shared helpers for benchmark scripts: timing, result files, tables with ratios.

Every benchmark writes ``benchmarks/results/<name>.json`` (the payload plus the environment:
torch version, threads, git SHA, UTC time) and optionally ``<name>.png`` drawn by a callback.
Keep this module small and stable: other benchmark scripts import it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.provenance import git_sha

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--data-dir`` (default ``$WARMSTART_DATA`` or ``./data``) and ``--quick``."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("WARMSTART_DATA", "data")),
        help="data directory (default: $WARMSTART_DATA or ./data)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller, faster run")
    return parser


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> np.ndarray:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times


def percentiles_ms(times_s: np.ndarray) -> dict[str, float]:
    """p50 / p90 / p99 / mean of a timing sample, in milliseconds."""
    ms = np.asarray(times_s) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def environment() -> dict[str, Any]:
    """Where the numbers came from."""
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # Other processes share the CPUs; a load above cpu_count makes timings pessimistic.
        "load_average_1_5_15": list(os.getloadavg()),
        "platform": platform.platform(),
        "git_sha": git_sha(),
        "utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_result(
    name: str,
    payload: dict[str, Any],
    plot_fn: Callable[[Any], None] | None = None,
    results_dir: Path = RESULTS_DIR,
) -> Path:
    """Write ``<name>.json`` (payload + environment) and, if ``plot_fn``, ``<name>.png``.

    Args:
        name: file stem, e.g. ``"coldnas_train"``.
        payload: JSON-serialisable results.
        plot_fn: called with a matplotlib ``Axes`` to draw on; the figure is saved as PNG.
        results_dir: output folder (created if missing).

    Returns:
        The JSON path.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps({**payload, "environment": environment()}, indent=2) + "\n")
    if plot_fn is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        plot_fn(ax)
        fig.tight_layout()
        fig.savefig(results_dir / f"{name}.png", dpi=120)
        plt.close(fig)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table; missing cells print as ``-``."""
    cells = [[_fmt(r.get(c, "-")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``format_table(rows, columns)`` followed by a blank line."""
    print(format_table(rows, columns) + "\n", flush=True)


def ratio(ours: float, baseline: float) -> float:
    """``ours / baseline`` (``inf`` when the baseline is 0)."""
    return float("inf") if baseline == 0 else ours / baseline
