"""Does a cross-encoder order BM25's candidates better than BM25? nDCG@10 of BM25's top ``depth``
in BM25's order and in the cross-encoder's (fp32 and bf16 inference), on the first ``queries`` dev
queries of the teacher's split and on as many of its train queries.

Usage:
    python experiments/distill_teacher_check.py CROSS_DIR [--data-dir DIR] [--queries 30] [--depth 20]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from warmstart.data.retrieval import load_scifact
from warmstart.distill.example import (
    ExampleConfig,
    bm25_candidates,
    mean_ndcg,
    rerank_per_query,
    reranker,
    teacher_split,
)
from warmstart.metrics import retrieval_per_query
from warmstart.retrieval.evaluation import run_from_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cross_dir", type=Path)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("WARMSTART_DATA", "data"))
    )
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--depth", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    collection = load_scifact(args.data_dir)
    train_ids, dev_ids = teacher_split(collection, ExampleConfig().dev_fraction)
    model = reranker(args.cross_dir, collection)
    for name, ids in (("dev", dev_ids), ("train", train_ids)):
        ids = ids[: args.queries]
        cand = bm25_candidates(collection, {q: collection.queries[q] for q in ids}, args.depth)
        qrels = {q: collection.qrels["train"][q] for q in ids}
        first = run_from_rows(cand.query_ids, cand.rows, collection.doc_ids)
        row = [f"{name} ({len(ids)} queries, BM25 top {args.depth}): BM25 order "]
        row.append(f"{mean_ndcg(retrieval_per_query(first, qrels)):.4f}")
        for bf16 in (False, True):
            ndcg = mean_ndcg(rerank_per_query(model, collection, cand, qrels, bf16, progress=False))
            row.append(f", cross-encoder {'bf16' if bf16 else 'fp32'} {ndcg:.4f}")
        print("".join(row), flush=True)


if __name__ == "__main__":
    main()
