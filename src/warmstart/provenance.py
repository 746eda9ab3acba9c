"""Where an artifact came from: the code version written next to every result."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.cache
def git_sha() -> str:
    """The commit of the checkout this package runs from (``unknown`` outside a git work tree).

    Read once per process, when this module is imported: a long run records the commit it
    started from, not one committed while it was running.
    """
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


git_sha()
