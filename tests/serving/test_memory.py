"""The allocator setting of a server that owns its process (``serving.memory``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from warmstart.serving.config import ComputeConfig
from warmstart.serving.memory import _libc, keep_freed_memory

GLIBC = _libc() is not None

# A scoring pass's pattern in a fresh process: in a worker thread (its own malloc arena), four
# 2 MB blocks allocated and written, then all freed, 200 times; print the page faults this took
# (the allocator setting is process-wide, so never in the test process).
_FAULTS = textwrap.dedent(
    """
    import json, resource, sys, threading
    import numpy as np
    from warmstart.serving.memory import keep_freed_memory
    applied = keep_freed_memory(int(sys.argv[1]))
    keep = [np.ones(1000) for _ in range(50)]  # some live small blocks, as a server has
    def churn(times):
        for _ in range(times):
            blocks = [np.empty(2 << 20, dtype=np.uint8) for _ in range(4)]
            for b in blocks:
                b.fill(1)
            del blocks, b
    def measure(out):
        churn(5)  # warm-up: glibc's dynamic threshold settles
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        churn(200)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    out = []
    worker = threading.Thread(target=measure, args=(out,))
    worker.start()
    worker.join()
    print(json.dumps({"applied": applied, "faults": out[0]}))
    """
)


def _faults(megabytes: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, str(megabytes)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_zero_changes_nothing_and_negative_is_an_error() -> None:
    assert keep_freed_memory(0) is False
    with pytest.raises(ValueError, match="megabytes must be >= 0"):
        keep_freed_memory(-1)
    with pytest.raises(ValueError, match=r"compute\.keep_freed_mb must be >= 0"):
        ComputeConfig(keep_freed_mb=-5)


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's mallopt; this C library is not glibc")
def test_kept_memory_is_reused_instead_of_faulted_in_again() -> None:
    default, kept = _faults(0), _faults(256)
    assert default["applied"] is False and kept["applied"] is True
    # glibc's defaults hand the freed blocks back, so each pass faults its pages in again
    # (8 MB: ~2,000 pages a pass); kept, the pages are reused
    assert default["faults"] > 200 * 500, default
    assert kept["faults"] < 200 * 10, kept
