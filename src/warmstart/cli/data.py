"""``warmstart data``: fetch datasets into a data directory and print their counts."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from warmstart.cli.options import add_cache_dir, add_data_dir, resolve_cache_dir, resolve_data_dir
from warmstart.data import load_dataset
from warmstart.data.fetch import SOURCES, fetch_dataset, is_fetched, link_shared
from warmstart.data.summary import SUMMARY_NAMES, dataset_counts, format_counts


def register(commands: argparse._SubParsersAction) -> None:
    summary = commands.add_parser(
        "summary",
        help="print row/user/item/task counts per dataset",
        description="Load each dataset and print its counts (compare with the data README).",
    )
    add_data_dir(summary)
    summary.add_argument("--dataset", choices=SUMMARY_NAMES, default=None, help="only this one")
    add_cache_dir(summary)
    summary.set_defaults(func=run_summary)

    fetch = commands.add_parser(
        "fetch",
        help="link datasets from a shared folder, or download and verify the official archives",
        description="If --shared exists, symlink its dataset files into the data directory; "
        "otherwise download the official archives, verify SHA-256 and extract. Idempotent.",
    )
    add_data_dir(fetch)
    fetch.add_argument("--shared", type=Path, default=None, help="read-only folder with datasets")
    fetch.add_argument("--dataset", choices=sorted(SOURCES), nargs="+", default=None)
    fetch.add_argument(
        "--allow-unverified", action="store_true", help="accept archives with no known checksum"
    )
    fetch.set_defaults(func=run_fetch)


def run_summary(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    cache_dir = resolve_cache_dir(args.cache_dir, args.no_cache)
    names = [args.dataset] if args.dataset else list(SUMMARY_NAMES)
    missing = 0
    for name in names:
        start = time.perf_counter()
        try:
            counts = dataset_counts(name, data_dir, lambda n, d: load_dataset(n, d, cache_dir))
        except FileNotFoundError as err:  # mark it and go on to the next dataset
            print(f"{name}: MISSING ({err})")
            missing += 1
            continue
        print(f"{format_counts(name, counts)}  [{time.perf_counter() - start:.2f}s]")
    if missing == len(names):
        raise FileNotFoundError(
            f"{data_dir}: no dataset found (pass --data-dir, or run "
            f"`warmstart data fetch --data-dir {data_dir}`)"
        )
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.shared is not None and args.shared.is_dir():
        for name, count in link_shared(args.shared, data_dir).items():
            state = f"linked {count} file(s)" if count else "already present"
            print(f"{name}: {state} ({args.shared / name} -> {data_dir / name})")
        return 0
    names = args.dataset or sorted(SOURCES)
    failures = 0
    for name in names:
        if is_fetched(name, data_dir):
            print(f"{name}: present in {data_dir / name}")
            continue
        log: list[str] = []
        try:
            fetch_dataset(name, data_dir, allow_unverified=args.allow_unverified, log=log)
            print(*log, f"{name}: fetched into {data_dir / name}", sep="\n")
        except (ValueError, OSError) as err:
            print(*log, f"{name}: FAILED: {err}", sep="\n", file=sys.stderr)
            failures += 1
    return 1 if failures else 0
