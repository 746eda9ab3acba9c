"""What the search rerank's speed options cost in quality: nDCG@10 on the SciFact test queries of
the zero-shot MiniLM retriever, alone and reranked by a cross-encoder at each setting the serving
benchmark can use: precision (fp32 / bf16 autocast, for query encoding and rerank together, as
``SearchConfig.bf16`` switches both), tokens per pair (``rerank_max_length``) and rerank depth
(``rerank_n``; the hits below the depth keep the retriever's order). Paired differences against
the reference (fp32, the cross-encoder's own length, the largest depth), with a 95% bootstrap
interval, and the rerank's seconds per query in this run (indicative: one thread, a shared box).

Usage::

    python experiments/search_rerank_quality.py --data-dir ../shared/data \
        [--retriever runs/bench/scifact-zero-shot] [--cross DIR ...] [--lengths 128,96,64] \
        [--depths 5,10] [--out runs/search_rerank_quality.json]

``--retriever`` is the folder ``benchmarks/bench_serving.py`` builds (its ``cross/`` is the
cross-encoder it serves); each ``--cross`` (e.g. a distilled student) is evaluated as well.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from warmstart.data.retrieval import load_scifact
from warmstart.metrics import paired_bootstrap, retrieval_per_query
from warmstart.retrieval.encoders import CrossEncoder, load_encoder
from warmstart.retrieval.inference import Hit, Retriever

PerQuery = dict[str, tuple[float, float, float]]


def rerank_run(
    retriever: Retriever, queries: list[str], hits: list[list[Hit]], depths: list[int]
) -> tuple[dict[int, list[list[str]]], float]:
    """Doc ids per query for each depth (top ``depth`` reranked, the rest in retrieval order)
    from one rerank of the top ``max(depths)``, and the rerank's seconds per query."""
    top = max(depths)
    start = time.perf_counter()
    scores: list[dict[str, float]] = []
    for i in range(0, len(queries), 10):  # 10 queries per call, like a served micro-batch
        for reranked in retriever.rerank_many(
            queries[i : i + 10], [h[:top] for h in hits[i : i + 10]]
        ):
            scores.append({h.doc_id: h.score for h in reranked})
    seconds = (time.perf_counter() - start) / len(queries)
    runs: dict[int, list[list[str]]] = {}
    for depth in depths:
        runs[depth] = []
        for hit_list, score in zip(hits, scores, strict=True):
            # scores of the top `top` only: a smaller depth reorders the first `depth` by them
            head = sorted(hit_list[:depth], key=lambda h: -score[h.doc_id])
            runs[depth].append([h.doc_id for h in head] + [h.doc_id for h in hit_list[depth:]])
    return runs, seconds


def with_cross(
    retriever: Retriever, cross_dir: Path | None, bf16: bool, length: int | None
) -> Retriever:
    cross = retriever.cross
    if cross_dir is not None:
        model, tok = load_encoder(cross_dir)
        if not isinstance(model, CrossEncoder):
            raise ValueError(f"{cross_dir}: not a cross-encoder folder")
        cross = (model, tok)
    return Retriever(
        retriever.model,
        retriever.tokenizer,
        retriever.index,
        retriever.documents,
        cross,
        retriever.batch_size,
        retriever.threads,
        bf16=bf16,
        rerank_max_length=length,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("WARMSTART_DATA", "data"))
    )
    parser.add_argument("--retriever", type=Path, default=Path("runs/bench/scifact-zero-shot"))
    parser.add_argument(
        "--cross", type=Path, action="append", default=[], help="more cross-encoders"
    )
    parser.add_argument("--lengths", default="128,96,64", help="tokens per pair (bf16 rows)")
    parser.add_argument("--depths", default="5,10")
    parser.add_argument("--out", type=Path, default=Path("runs/search_rerank_quality.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    collection = load_scifact(args.data_dir)
    qrels = collection.qrels["test"]
    ids = sorted(qrels)
    texts = [collection.queries[q] for q in ids]
    depths = sorted(int(d) for d in args.depths.split(","))
    lengths = [int(x) for x in args.lengths.split(",")]
    base = Retriever.load(args.retriever, threads=1)
    assert base.cross is not None, f"{args.retriever}: no cross/ to rerank with"
    own = base.cross[0].config.max_length
    rows: list[dict[str, Any]] = []
    per_query: dict[str, PerQuery] = {}
    hits_by_precision: dict[bool, list[list[Hit]]] = {}
    for bf16 in (False, True):
        r = with_cross(base, None, bf16, None)
        hits_by_precision[bf16] = r.search(r.encode_queries(texts), max([*depths, 10]))
        name = f"retriever only, {'bf16' if bf16 else 'fp32'} queries"
        run = {
            q: [h.doc_id for h in hl] for q, hl in zip(ids, hits_by_precision[bf16], strict=True)
        }
        per_query[name] = retrieval_per_query(run, qrels)
        rows.append({"setting": name, "seconds_per_query": 0.0})
    settings = [(None, False, own), *[(None, True, n) for n in lengths]]
    settings += [(c, b, own) for c in args.cross for b in (False, True)]
    cache_path = args.out.with_suffix(".cache.json")  # reruns skip settings already scored
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    for cross_dir, bf16, length in settings:
        label = "served cross" if cross_dir is None else str(cross_dir)
        key = f"{args.retriever.resolve()}|{label}|{bf16}|{length}|{depths}"
        if key not in cache:
            r = with_cross(base, cross_dir, bf16, length)
            runs, seconds = rerank_run(r, texts, hits_by_precision[bf16], depths)
            cache[key] = {"runs": {str(d): v for d, v in runs.items()}, "seconds": seconds}
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache))
        runs = {int(d): v for d, v in cache[key]["runs"].items()}
        seconds = cache[key]["seconds"]
        label = label if cross_dir is None else f"{cross_dir.parent.name}/{cross_dir.name}"
        for depth, run_lists in runs.items():
            name = f"{label}, {'bf16' if bf16 else 'fp32'}, {length} tokens, top {depth}"
            per_query[name] = retrieval_per_query(dict(zip(ids, run_lists, strict=True)), qrels)
            rows.append({"setting": name, "seconds_per_query": seconds})
            print(
                f"{name}: nDCG@10 {np.mean([v[0] for v in per_query[name].values()]):.4f}",
                flush=True,
            )
    reference = f"served cross, fp32, {own} tokens, top {max(depths)}"
    for row in rows:
        pq = per_query[row["setting"]]
        row["ndcg@10"] = float(np.mean([v[0] for v in pq.values()]))
        a = np.array([pq[q][0] for q in sorted(pq)])
        b = np.array([per_query[reference][q][0] for q in sorted(pq)])
        row["vs_reference"] = paired_bootstrap([a - b], shared_users=True, seed=0)
    print(f"\n{len(ids)} SciFact test queries; reference: {reference}")
    print(f"{'setting':58s} {'nDCG@10':>8s} {'diff':>8s} {'95% CI':>18s} {'s/query':>8s}")
    for row in rows:
        s = row["vs_reference"]
        print(f"{row['setting']:58s} {row['ndcg@10']:8.4f} {s['delta']:+8.4f} "
              f"[{s['lo']:+.4f}, {s['hi']:+.4f}] {row['seconds_per_query']:8.3f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"queries": len(ids), "reference": reference, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
