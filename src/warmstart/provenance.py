"""Where an artifact came from: the code version written next to every result."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_sha() -> str:
    """The commit of the checkout this package runs from (``unknown`` outside a git work tree)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()
