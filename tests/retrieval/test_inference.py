from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from warmstart.cli import main
from warmstart.retrieval.encoders import (
    CrossEncoder,
    CrossEncoderConfig,
    DualEncoder,
    DualEncoderConfig,
    load_backbone,
)
from warmstart.retrieval.encoding import encode_texts
from warmstart.retrieval.evaluation import exact_index
from warmstart.retrieval.inference import Document, Retriever, export_retriever


@pytest.fixture(scope="module")
def retriever_dir(
    tiny_backbone: Path, tiny_collection, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    backbone, tok = load_backbone(tiny_backbone)
    model = DualEncoder(
        backbone, DualEncoderConfig(pooling="mean", similarity="cosine", passage_max_length=48)
    ).eval()
    corpus = encode_texts(model, tok, tiny_collection.passages(), side="passage")
    ce_backbone, ce_tok = load_backbone(tiny_backbone)
    ce = CrossEncoder(ce_backbone, CrossEncoderConfig(max_length=64)).eval()
    docs = [
        Document(d, t, x)
        for d, t, x in zip(
            tiny_collection.doc_ids, tiny_collection.titles, tiny_collection.texts, strict=True
        )
    ]
    folder = tmp_path_factory.mktemp("retriever")
    export_retriever(folder, model, tok, exact_index(corpus), docs, (ce, ce_tok))
    return folder


def test_search_matches_brute_force(retriever_dir: Path, tiny_collection) -> None:
    r = Retriever.load(retriever_dir, batch_size=3)
    queries = list(tiny_collection.queries.values())[:7]
    vecs = r.encode_queries(queries)
    corpus = encode_texts(r.model, r.tokenizer, tiny_collection.passages(), side="passage")
    expected = np.argsort(-(vecs @ corpus.T), axis=1, kind="stable")[:, :5]
    hits = r.search(vecs, 5)
    for row, hit_list in zip(expected, hits, strict=True):
        assert [h.doc_id for h in hit_list] == [tiny_collection.doc_ids[i] for i in row]
        assert all(a.score >= b.score for a, b in pairwise(hit_list))


def test_rerank_orders_by_cross_encoder_score(retriever_dir: Path) -> None:
    r = Retriever.load(retriever_dir)
    hits = r.search(r.encode_queries(["some query"]), 6)[0]
    reranked = r.rerank("some query", hits)
    assert sorted(h.doc_id for h in reranked) == sorted(h.doc_id for h in hits)
    assert all(a.score >= b.score for a, b in pairwise(reranked))


def test_concurrent_readers_get_the_sequential_answers(
    retriever_dir: Path, tiny_collection
) -> None:
    r = Retriever.load(retriever_dir, batch_size=4)
    queries = list(tiny_collection.queries.values())

    def answer(q: str) -> tuple[list[str], list[str]]:
        hits = r.search(r.encode_queries([q, q + " extra"]), 5)[0]
        return [h.doc_id for h in hits], [h.doc_id for h in r.rerank(q, hits)]

    sequential = [answer(q) for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(answer, queries))
    assert concurrent == sequential


@pytest.mark.slow  # a fresh interpreter importing torch + transformers
def test_inference_module_does_not_import_training_code() -> None:
    import subprocess
    import sys

    code = "import sys, warmstart.retrieval.inference; print(any(m.endswith(('training', 'pipeline', 'losses')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_search_prints_ranked_passages(
    retriever_dir: Path, tiny_collection, capsys: pytest.CaptureFixture[str]
) -> None:
    query = next(iter(tiny_collection.queries.values()))
    assert (
        main(
            [
                "retrieval",
                "search",
                "--threads",
                "1",
                "--retriever",
                str(retriever_dir),
                query,
                "-k",
                "3",
                "--rerank",
            ]
        )
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:3].strip().isdigit()]
    assert [line.split()[0] for line in lines] == ["1", "2", "3"]
    assert all(line.split()[2] in tiny_collection.doc_ids for line in lines)
