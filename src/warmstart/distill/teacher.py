"""The teacher protocol of EDL-Dist (Liu et al., CCPE 2022, arXiv 2207.06667): a teacher is
anything with ``predict(batch) -> (B, G) scores``. In EDL-Dist teachers are inference services,
so a teacher is described by a picklable :class:`TeacherSpec` that any process (an in-process
online-KD baseline, a Ray actor, a teacher joining from another machine) builds with
:func:`build_teacher`.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from warmstart.distill.data import PairGroups

if TYPE_CHECKING:  # transformers is a heavy import: a synthetic teacher actor starts without it
    from warmstart.retrieval.encoders import CrossEncoder

TEACHER_KINDS = ("cross_encoder", "synthetic")
DEVICES = ("cpu", "cuda")


class Teacher(Protocol):
    """Scores every (query, passage) pair of a batch."""

    def predict(self, batch: PairGroups) -> np.ndarray:
        """(B, G) float32 scores of ``batch``, rows and columns in its order."""
        ...


@dataclass(frozen=True)
class TeacherSpec:
    """How to build a teacher in whatever process serves it.

    Attributes:
        kind: ``cross_encoder`` (a folder written by ``retrieval.encoders.save_encoder``) or
            ``synthetic`` (word-overlap scores, for tests and the ``tiny`` preset).
        path: the cross-encoder folder.
        threads: torch threads of the serving process (a Ray actor sets them for itself).
        batch_size: pairs per forward pass.
        bf16: bf16 autocast (pays off on CPUs with native bf16 units and on GPUs).
        device: ``cpu`` or ``cuda``.
        num_cpus: CPUs a Ray actor reserves (fractional allowed).
        num_gpus: GPUs a Ray actor reserves (fractional allowed).
        delay_s: synthetic only: seconds each ``predict`` call takes (a stand-in for compute).
        idle_priority: a serving process (a Ray actor) computes at Linux ``SCHED_IDLE``
            (:func:`use_idle_priority`): the teacher then only gets CPU time no other process
            wants, e.g. the moments a student that uses every core spends on one thread
            (tokenising, the optimizer, Python); the process's other threads (Ray's RPC) keep
            their priority.
    """

    kind: str = "cross_encoder"
    path: str | None = None
    threads: int = 1
    batch_size: int = 32
    bf16: bool = True
    device: str = "cpu"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    delay_s: float = 0.0
    idle_priority: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"kind={self.kind!r}: allowed values are {', '.join(TEACHER_KINDS)}")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r}: allowed values are {', '.join(DEVICES)}")
        if self.kind == "cross_encoder" and not self.path:
            raise ValueError("kind='cross_encoder' needs path (a cross-encoder folder)")
        if self.threads < 1 or self.batch_size < 1:
            raise ValueError(f"threads={self.threads}, batch_size={self.batch_size}: >= 1")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.delay_s < 0:
            raise ValueError("num_cpus, num_gpus and delay_s must be >= 0")


class CrossEncoderTeacher:
    """A cross-encoder scoring pairs in chunks of ``batch_size``, in eval mode."""

    def __init__(
        self,
        model: CrossEncoder,
        tokenizer: Any,
        batch_size: int = 32,
        bf16: bool = True,
        device: str = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.bf16 = bf16
        self.device = device

    def predict(self, batch: PairGroups) -> np.ndarray:
        from warmstart.retrieval.encoders import tokenize

        qs, ps = batch.flat()
        out = np.zeros(len(qs), dtype=np.float32)
        max_length = self.model.config.max_length
        with (
            torch.inference_mode(),
            torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            for i in range(0, len(qs), self.batch_size):
                inputs = tokenize(
                    self.tokenizer,
                    qs[i : i + self.batch_size],
                    max_length,
                    ps[i : i + self.batch_size],
                )
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                out[i : i + len(inputs["input_ids"])] = self.model(inputs).float().cpu().numpy()
        return out.reshape(len(batch), batch.group_size)


def _words(text: str) -> set[str]:
    return set(text.lower().split())


class SyntheticTeacher:
    """Deterministic scores: word overlap of query and passage plus a hash-based jitter.

    ``delay_s`` stands in for the compute time of a real teacher (tests of scheduling only).
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    @staticmethod
    def score(query: str, passage: str) -> float:
        digest = hashlib.blake2b(f"{query}\x00{passage}".encode(), digest_size=4).digest()
        jitter = int.from_bytes(digest, "little") / 2**32
        return float(len(_words(query) & _words(passage))) + jitter

    def predict(self, batch: PairGroups) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.array(
            [
                [self.score(q, p) for p in g]
                for q, g in zip(batch.queries, batch.passages, strict=True)
            ],
            dtype=np.float32,
        ).reshape(len(batch), batch.group_size)


def use_idle_priority() -> bool:
    """Put the calling thread (and the threads it starts later, e.g. torch's intra-op pool) at
    ``SCHED_IDLE``; False where the OS has no such policy (then nothing changes)."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return False
    os.sched_setscheduler(0, policy, os.sched_param(0))  # pid 0: the calling thread (Linux)
    return True


def build_teacher(spec: TeacherSpec) -> Teacher:
    """The teacher ``spec`` describes, ready to ``predict`` (does not change thread settings or
    priorities: a serving process applies ``threads`` and ``idle_priority`` to itself)."""
    if spec.kind == "synthetic":
        return SyntheticTeacher(spec.delay_s)
    from warmstart.retrieval.encoders import CrossEncoder, load_encoder

    assert spec.path is not None
    model, tokenizer = load_encoder(Path(spec.path))
    if not isinstance(model, CrossEncoder):
        raise ValueError(f"{spec.path}: not a cross-encoder folder")
    return CrossEncoderTeacher(model, tokenizer, spec.batch_size, spec.bf16, spec.device)
