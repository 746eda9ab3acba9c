"""Options shared by several command groups, and data-directory resolution."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DATA_ENV = "WARMSTART_DATA"


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"dataset folder (default: ${DATA_ENV}, then ./data)",
    )


def resolve_data_dir(flag: Path | None) -> Path:
    """Resolution order: ``--data-dir`` flag, ``$WARMSTART_DATA``, then ``./data``."""
    if flag is not None:
        return flag
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return Path("data")


def resolve_cache_dir(flag: Path | None, disabled: bool = False) -> Path | None:
    """Parsed-data cache: ``--cache-dir``, ``$XDG_CACHE_HOME/warmstart``, ``~/.cache/warmstart``."""
    if disabled:
        return None
    if flag is not None:
        return flag
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "warmstart"


EMBEDDING_CACHE_ENV = "WARMSTART_CACHE"


def resolve_embedding_cache(flag: Path | None) -> Path:
    """The one corpus-embedding cache of ``retrieval train|pipeline|index|evaluate`` and the
    demo: ``--cache-dir``, ``$WARMSTART_CACHE``, else ``embeddings/`` in the cache folder of
    :func:`resolve_cache_dir` (``~/.cache/warmstart/embeddings``)."""
    if flag is not None:
        return flag
    env = os.environ.get(EMBEDDING_CACHE_ENV)
    if env:
        return Path(env)
    base = resolve_cache_dir(None)
    assert base is not None
    return base / "embeddings"


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="parsed-data cache (default: $XDG_CACHE_HOME/warmstart, then ~/.cache/warmstart)",
    )
    parser.add_argument("--no-cache", action="store_true", help="parse the text files every time")
