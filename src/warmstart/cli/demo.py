"""``warmstart demo``: train the demo models (quick preset, cached), serve the web page on
127.0.0.1 and print its URL; ``--check`` does the same headless and checks real answers."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

from warmstart.cli.options import (
    add_data_dir,
    resolve_cache_dir,
    resolve_data_dir,
    resolve_embedding_cache,
)


def register(commands: argparse._SubParsersAction) -> None:
    """No sub-commands: ``warmstart demo [--check]`` (see ``configure_group``)."""


def configure_group(group: argparse.ArgumentParser, commands: argparse._SubParsersAction) -> None:
    commands.required = False
    configure(group)


def configure(parser: argparse.ArgumentParser) -> None:
    from warmstart.demo.preset import PRESETS

    add_data_dir(parser)
    parser.add_argument("--check", action="store_true", help="headless end-to-end check, exit 0/1")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="demo artifacts (cached)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="parsed data + SciFact embeddings (default: $XDG_CACHE_HOME/warmstart, "
        "~/.cache/warmstart; the embeddings: $WARMSTART_CACHE when set)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8000, help="port (the next free one if taken)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--no-search", action="store_true", help="skip the SciFact index")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--compare-features",
        action="store_true",
        help="also train the preset with user features and print what serving without them costs",
    )
    parser.set_defaults(func=run_demo)


def free_port(host: str, preferred: int, tries: int = 20) -> int:
    """``preferred`` or the next free port after it (0 when all ``tries`` are taken)."""
    for port in range(preferred, preferred + tries):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    return 0


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from warmstart.demo.build import build_demo
    from warmstart.demo.preset import PRESETS

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    artifacts = build_demo(
        PRESETS[args.preset],
        resolve_data_dir(args.data_dir),
        args.out,
        resolve_cache_dir(args.cache_dir),
        search=not args.no_search,
        progress=not args.no_progress,
        log=lambda m: print(m, flush=True),
        embeddings=args.cache_dir / "embeddings"
        if args.cache_dir
        else resolve_embedding_cache(None),
    )
    if args.compare_features:
        _compare_features(args)
    served = artifacts.manifest["served"]
    print(f"demo: models ready in {time.perf_counter() - start:.1f} s; serving {served['name']}")
    if args.check:
        return _check(artifacts, args.host, start)
    return _serve(artifacts, args.host, args.port, start)


def _compare_features(args: argparse.Namespace) -> None:
    from warmstart.demo.build import compare_user_features
    from warmstart.demo.preset import PRESETS

    rows = compare_user_features(
        PRESETS[args.preset],
        resolve_data_dir(args.data_dir),
        args.out,
        resolve_cache_dir(args.cache_dir),
        not args.no_progress,
    )
    print("ColdNAS on validation users (query ratings):")
    for name, m in rows.items():
        v = m["valid"]
        print(
            f"  {name:32s} MSE {v['MSE']:.4f}  MAE {v['MAE']:.4f}  nDCG@3 {v['nDCG@3']:.4f}  "
            f"(best epoch {m['best_epoch']}, {m['fit_s']:.0f} s)"
        )


def _check(artifacts: object, host: str, start: float) -> int:
    from warmstart.demo.app import create_demo_app
    from warmstart.demo.check import run_checks
    from warmstart.serving.runner import running

    with running(create_demo_app(artifacts), host, 0) as url:  # type: ignore[arg-type]
        print(f"demo: serving at {url}/ after {time.perf_counter() - start:.1f} s", flush=True)
        checks = run_checks(url)
    for c in checks:
        print(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}" + (f": {c.detail}" if c.detail else ""))
    failed = [c for c in checks if not c.ok]
    print(f"demo --check: {len(checks) - len(failed)}/{len(checks)} checks passed")
    return 1 if failed else 0


def _serve(artifacts: object, host: str, port: int, start: float) -> int:
    import httpx
    import uvicorn

    from warmstart.demo.app import create_demo_app
    from warmstart.demo.check import warm_up
    from warmstart.serving.runner import uvicorn_config

    port = free_port(host, port)
    server = uvicorn.Server(uvicorn_config(create_demo_app(artifacts), host, port))  # type: ignore[arg-type]

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            bound = next(s.getsockname() for srv in server.servers for s in srv.sockets)
            with httpx.Client(base_url=f"http://{bound[0]}:{bound[1]}", timeout=30) as client:
                warm_up(client)
            print(
                f"demo: open http://{bound[0]}:{bound[1]}/  (ready after "
                f"{time.perf_counter() - start:.1f} s; Ctrl-C stops)",
                flush=True,
            )

    threading.Thread(target=announce, daemon=True).start()
    server.run()  # uvicorn handles SIGINT/SIGTERM: stops accepting, drains, runs the lifespan exit
    print("demo: stopped", file=sys.stderr)
    return 0
