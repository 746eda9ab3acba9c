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
