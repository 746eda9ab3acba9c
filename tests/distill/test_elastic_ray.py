"""Fault and elasticity test of EDL-Dist on a real local Ray cluster (one per module).

During one training run: a teacher joins from a second OS process, another joins and leaves
(SIGTERM), one is killed with SIGKILL; then the student is SIGKILLed and resumed with no teacher
alive (it waits, logging so) until one joins. Training finishes, every sample got exactly one
teacher output per epoch, and the resumed run's accounting is exact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip(
    "ray", reason="needs the distill extra (pip install 'warmstart[distill]')"
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

CLI = [sys.executable, "-c", "import sys; from warmstart.cli import main; sys.exit(main())"]
SAMPLES, BATCH, EPOCHS = 120, 4, 40  # 30 steps an epoch, 1200 steps
DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    from warmstart.distill.ray_pool import connect

    addr = connect(None, num_cpus=4)
    yield addr
    ray.shutdown()


def _env() -> dict[str, str]:
    import warmstart

    src = str(Path(warmstart.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=_env())


def _wait_for(
    log: Path, pattern: str, proc: subprocess.Popen[bytes] | None = None
) -> re.Match[str]:
    """The first match of ``pattern`` in the log (polled; fails with the log after a deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        match = re.search(pattern, text)
        if match:
            return match
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"{pattern!r} not in {log} within {DEADLINE_S} s:\n{log.read_text()[-4000:]}")


def _teacher(address: str, name: str, delay: float, log: Path) -> subprocess.Popen[bytes]:
    return _spawn(
        ["distill", "teacher", "--address", address, "--name", name, "--preset", "tiny",
         "--teacher-delay", str(delay), "--teacher-cpus", "0.5"],
        log,
    )  # fmt: skip


def _student(address: str, workdir: Path, teachers: int, log: Path) -> subprocess.Popen[bytes]:
    return _spawn(
        ["distill", "run", "--preset", "tiny", "--mode", "edl", "--address", address,
         "--workdir", str(workdir), "--teachers", str(teachers), "--teacher-delay", "0.1",
         "--teacher-cpus", "0.5", "--samples", str(SAMPLES), "--batch-size", str(BATCH),
         "--epochs", str(EPOCHS), "--checkpoint-every", "10", "--lr", "0.01", "--no-progress"],
        log,
    )  # fmt: skip


def test_teachers_join_leave_die_and_the_student_resumes(address: str, tmp_path: Path) -> None:
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    first, second = logs / "student1.log", logs / "student2.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        student = _student(address, workdir, 1, first)
        procs.append(student)
        _wait_for(first, r"teacher joined: run-local0", student)

        procs.append(_teacher(address, "tB", 0.1, logs / "tB.log"))  # joins from another process
        joined = _wait_for(first, r"teacher joined: tB \{'pid': (\d+)", student)
        status = subprocess.run(
            [*CLI, "distill", "status", "--address", address],
            capture_output=True, text=True, env=_env(), timeout=120,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "tB:" in status.stdout and "run-local0:" in status.stdout
        assert re.search(r"student: (step \d+, \d+ in flight|none has published)", status.stdout)

        leaving = _teacher(address, "tC", 0.1, logs / "tC.log")
        procs.append(leaving)
        _wait_for(first, r"teacher joined: tC", student)
        leaving.send_signal(signal.SIGTERM)  # a graceful departure
        assert leaving.wait(timeout=60) == 0
        _wait_for(first, r"teacher left: tC", student)

        os.kill(int(joined.group(1)), signal.SIGKILL)  # tB's actor process dies
        _wait_for(first, r"teacher tB failed|teacher left: tB", student)

        _wait_for(workdir / "checkpoint" / "latest.json", r'"step": (\d+)', student)
        student.send_signal(signal.SIGKILL)  # the student dies mid-run
        student.wait(timeout=30)
        killed_at = json.loads((workdir / "checkpoint" / "latest.json").read_text())["step"]
        assert 0 < killed_at < SAMPLES // BATCH * EPOCHS

        resumed = _student(address, workdir, 0, second)  # no teacher of its own
        procs.append(resumed)
        _wait_for(second, rf"resuming from step {killed_at}", resumed)
        _wait_for(second, r"waiting for teachers: none alive", resumed)
        procs.append(_teacher(address, "tD", 0.0, logs / "tD.log"))
        _wait_for(second, r"teacher joined: tD", resumed)
        assert resumed.wait(timeout=DEADLINE_S) == 0, second.read_text()[-4000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    text = second.read_text()
    assert "accounting exact" in text
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["resumed_from"] == killed_at
    assert metrics["steps"] == SAMPLES // BATCH * EPOCHS
    from safetensors.numpy import load_file

    final = json.loads((workdir / "checkpoint" / "latest.json").read_text())["dir"]
    counts = load_file(str(workdir / "checkpoint" / final / "ledger.safetensors"))["counts"]
    assert counts.shape == (EPOCHS, SAMPLES)
    np.testing.assert_array_equal(counts, np.ones_like(counts))  # exactly once per epoch
