"""Run every benchmark script in this folder, one after another, in fresh processes.

Usage: ``python benchmarks/run_all.py [--quick] [--only NAME ...]``. Each script prints its own table
(ours versus the baseline, measured in the same run, with ratios) and writes JSON + PNG under
``benchmarks/results/``. A failing script is reported and the others still run; the exit code is
non-zero if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument(
        "--only", nargs="*", default=None, help="benchmark names (e.g. bench_index)"
    )
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in set(args.only)]
    failed = []
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"\n=== {script.stem} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd)
        print(
            f"=== {script.stem}: exit {code} in {time.perf_counter() - start:.0f} s ===", flush=True
        )
        if code:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
