"""Does a cross-encoder order BM25's candidates better than BM25? nDCG@10 of BM25's top ``depth``
in BM25's order and in the cross-encoder's (fp32 and bf16 inference), on the first ``queries`` dev
queries of the teacher's split and on as many of its train queries.

``--consistency N`` first checks that a student's training forward and the serving path see the
same input: the first N training groups of the student data (``example.student_dataset``, the
teacher's train queries) scored by ``CrossEncoderStudent.scores`` (what the trainer calls, eval
mode) and by ``Retriever.rerank_many`` (what evaluation and serving call), fp32; it prints the
largest absolute difference of the two scores.

Usage:
    python experiments/distill_teacher_check.py CROSS_DIR [--data-dir DIR] [--queries 30] [--depth 20]
        [--precisions fp32 bf16] [--threads 2] [--consistency 0]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from warmstart.data.retrieval import load_scifact
from warmstart.distill.example import (
    ExampleConfig,
    bm25_candidates,
    corpus_hit,
    mean_ndcg,
    rerank_per_query,
    reranker,
    student_dataset,
    teacher_split,
)
from warmstart.distill.student import CrossEncoderStudent
from warmstart.metrics import retrieval_per_query
from warmstart.retrieval.encoders import CrossEncoder, load_encoder
from warmstart.retrieval.evaluation import run_from_rows
from warmstart.retrieval.inference import Retriever


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cross_dir", type=Path)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("WARMSTART_DATA", "data"))
    )
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument(
        "--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--consistency", type=int, default=0, help="training groups compared")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    collection = load_scifact(args.data_dir)
    train_ids, dev_ids = teacher_split(collection, ExampleConfig().dev_fraction)
    model = reranker(args.cross_dir, collection)
    if args.consistency:
        consistency(args.cross_dir, collection, model, train_ids, args.consistency)
    for name, ids in (("dev", dev_ids), ("train", train_ids)):
        ids = ids[: args.queries]
        cand = bm25_candidates(collection, {q: collection.queries[q] for q in ids}, args.depth)
        qrels = {q: collection.qrels["train"][q] for q in ids}
        first = run_from_rows(cand.query_ids, cand.rows, collection.doc_ids)
        row = [f"{name} ({len(ids)} queries, BM25 top {args.depth}): BM25 order "]
        row.append(f"{mean_ndcg(retrieval_per_query(first, qrels)):.4f}")
        for bf16 in (p == "bf16" for p in args.precisions):
            ndcg = mean_ndcg(rerank_per_query(model, collection, cand, qrels, bf16, progress=False))
            row.append(f", cross-encoder {'bf16' if bf16 else 'fp32'} {ndcg:.4f}")
        print("".join(row), flush=True)


def consistency(
    cross_dir: Path, collection: Any, model: Retriever, train_ids: list[str], n: int
) -> None:
    """Training forward vs serving path on the first ``n`` training groups (printed)."""
    data = student_dataset(collection, ExampleConfig(), 0, train_ids)
    batch = data.take(range(min(n, len(data))))
    cross, tokenizer = load_encoder(cross_dir)
    if not isinstance(cross, CrossEncoder):
        raise ValueError(f"{cross_dir}: not a cross-encoder folder")
    with torch.no_grad():
        trained = CrossEncoderStudent(cross, tokenizer).eval().scores(batch).numpy()  # (n, G)
    row = {p: i for i, p in enumerate(collection.passages())}
    hits = [[corpus_hit(collection, row[p]) for p in group] for group in batch.passages]
    served = model.rerank_many(list(batch.queries), hits)
    where = {d: i for i, d in enumerate(collection.doc_ids)}
    gap = 0.0
    for i, group in enumerate(served):
        for h in group:  # served hits come back sorted: match them by corpus row
            j = [row[p] for p in batch.passages[i]].index(where[h.doc_id])
            gap = max(gap, abs(h.score - float(trained[i, j])))
    print(
        f"consistency ({len(batch)} training groups x {batch.group_size} passages): training "
        f"forward vs Retriever.rerank_many, largest |difference| {gap:.2e}; first group "
        f"{np.round(trained[0], 4).tolist()}",
        flush=True,
    )


if __name__ == "__main__":
    main()
