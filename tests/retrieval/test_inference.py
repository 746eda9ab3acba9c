from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from warmstart.cli import main
from warmstart.retrieval import inference
from warmstart.retrieval.encoders import (
    CrossEncoder,
    CrossEncoderConfig,
    DualEncoder,
    DualEncoderConfig,
    load_backbone,
)
from warmstart.retrieval.encoding import encode_texts, score_pairs
from warmstart.retrieval.evaluation import exact_index
from warmstart.retrieval.inference import Document, Retriever, export_retriever
from warmstart.retrieval.text import passage_text


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


def _pair_logit(ce: CrossEncoder, tok, query: str, passage: str) -> float:
    """The CE's logit for one (query, passage) pair, tokenised on its own (no padding)."""
    batch = dict(
        tok([query], [passage], truncation="only_second", max_length=64, return_tensors="pt")
    )
    with torch.inference_mode():
        return float(ce(batch)[0])


def test_rerank_orders_by_the_cross_encoders_logit_of_query_title_and_text(
    retriever_dir: Path, tiny_collection
) -> None:
    """Each returned score is the CE's logit of (query, "title text"), computed here pair by pair
    without the retriever's batching; the order is by that logit, and differs from the dense
    order for some query (so the test would notice a rerank that keeps the input order)."""
    r = Retriever.load(retriever_dir)
    assert r.cross is not None
    ce, tok = r.cross
    reordered = 0
    for query in list(tiny_collection.queries.values())[:6]:
        hits = r.search(r.encode_queries([query]), 6)[0]
        reranked = r.rerank(query, hits)
        expected = {
            h.doc_id: _pair_logit(ce, tok, query, passage_text(h.title, h.text)) for h in hits
        }
        assert [h.doc_id for h in reranked] == sorted(expected, key=lambda d: -expected[d])
        for h in reranked:
            assert h.score == pytest.approx(expected[h.doc_id], abs=1e-5)
        reordered += [h.doc_id for h in reranked] != [h.doc_id for h in hits]
    assert reordered > 0


def test_rerank_many_equals_one_at_a_time(retriever_dir: Path, tiny_collection) -> None:
    r = Retriever.load(retriever_dir, batch_size=5)  # pairs of several queries share batches
    queries = list(tiny_collection.queries.values())[:5]
    hit_lists = [
        r.search(r.encode_queries([q]), k)[0] for q, k in zip(queries, (3, 7, 1, 4, 6), strict=True)
    ]
    hit_lists[2] = []  # an empty list is valid and comes back empty, in its place
    many = r.rerank_many(queries, hit_lists)
    assert len(many) == len(queries) and many[2] == []
    for query, hits, got in zip(queries, hit_lists, many, strict=True):
        one = r.rerank(query, hits)
        assert [h.doc_id for h in got] == [h.doc_id for h in one]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in one], atol=1e-5)
    assert r.rerank_many([], []) == []


def test_inputs_are_validated_before_any_compute(retriever_dir: Path) -> None:
    r = Retriever.load(retriever_dir)
    hits = r.search(r.encode_queries(["some query"]), 2)[0]
    with pytest.raises(ValueError, match=r"queries\[1\]='  ': empty or whitespace"):
        r.rerank_many(["ok", "  "], [hits, hits])
    with pytest.raises(ValueError, match=r"queries\[0\]='': empty"):
        r.rerank("", hits)
    with pytest.raises(ValueError, match="2 hit lists for 1 queries"):
        r.rerank_many(["ok"], [hits, hits])
    with pytest.raises(ValueError, match=r"texts\[0\]=3: must be a string"):
        r.encode_queries([3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="one string"):
        r.encode_queries("a query")
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        r.encode_queries(["fine", "\n"])
    assert r.encode_queries([]).shape == (0, r.model.dim)


def test_serving_encodes_and_scores_exactly_as_training_does(
    retriever_dir: Path, tiny_collection
) -> None:
    """One text path: the retriever's query vectors and CE scores are bit-for-bit those of the
    training-side functions on the training-side passage texts."""
    r = Retriever.load(retriever_dir, batch_size=4)
    queries = list(tiny_collection.queries.values())[:6]
    np.testing.assert_array_equal(
        r.encode_queries(queries),
        encode_texts(r.model, r.tokenizer, queries, side="query", batch_size=4),
    )
    hits = r.search(r.encode_queries(queries[:1]), 5)[0]
    row = {d: i for i, d in enumerate(tiny_collection.doc_ids)}
    assert r.cross is not None
    train_side = score_pairs(
        *r.cross,
        queries[:1] * len(hits),
        [tiny_collection.passages()[row[h.doc_id]] for h in hits],
        batch_size=4,
    )
    got = {h.doc_id: h.score for h in r.rerank(queries[0], hits)}
    assert [got[h.doc_id] for h in hits] == [float(s) for s in train_side]
    source = Path(inference.__file__).read_text()
    assert "tokenizer(" not in source and "title} {" not in source  # no second copy


def test_load_refuses_a_document_count_that_differs_from_the_index(
    retriever_dir: Path, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "r"
    shutil.copytree(retriever_dir, folder)
    lines = (folder / "docs.jsonl").read_text().splitlines(keepends=True)
    (folder / "docs.jsonl").write_text("".join(lines[:-1]))
    with pytest.raises(
        ValueError,
        match=rf"docs.jsonl has {len(lines) - 1} documents but index/ holds {len(lines)} vectors",
    ):
        Retriever.load(folder)
    r = Retriever.load(retriever_dir)
    with pytest.raises(ValueError, match="documents but the index holds"):
        Retriever(r.model, r.tokenizer, r.index, r.documents[:-1])


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


CONCURRENT_SCRIPT = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from warmstart.retrieval.inference import Retriever

folder, queries = Path(sys.argv[1]), json.loads(sys.argv[2])
r = Retriever.load(folder, batch_size=4)  # default thread policy, process defaults
groups = [queries[i : i + 3] for i in range(0, len(queries), 3)]

def answer(group):
    vectors = r.encode_queries(group)
    hits = r.search(vectors, 5)
    reranked = r.rerank_many(group, hits)
    return (
        vectors.tolist(),
        [[(h.doc_id, h.score) for h in hs] for hs in hits],
        [[(h.doc_id, h.score) for h in hs] for hs in reranked],
    )

sequential = [answer(g) for g in groups]
with ThreadPoolExecutor(max_workers=8) as pool:
    for _ in range(2):
        assert list(pool.map(answer, groups)) == sequential
import torch
print(json.dumps({"groups": len(groups), "torch_threads": torch.get_num_threads()}))
"""


def test_eight_threads_on_shared_objects_give_the_sequential_answers(
    retriever_dir: Path, tiny_collection
) -> None:
    """encode_queries / search / rerank_many from 8 threads on one shared Retriever (and its
    index and models) equal the sequential answers exactly, with default thread settings: a
    fresh interpreter, so this suite's one-thread fixture does not apply."""
    import json
    import os
    import subprocess
    import sys

    import warmstart

    env = {**os.environ, "PYTHONPATH": str(Path(warmstart.__file__).parents[1])}
    queries = list(tiny_collection.queries.values())[:24]
    out = subprocess.run(
        [sys.executable, "-c", CONCURRENT_SCRIPT, str(retriever_dir), json.dumps(queries)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["groups"] == 8
    assert report["torch_threads"] >= 1  # whatever torch chose by default on this machine


def test_a_retrievers_thread_policy_holds_inside_its_calls_only(retriever_dir: Path) -> None:
    """Two retrievers used at once from two threads: forward hooks record the intra-op thread
    count inside each one's encoder and cross-encoder calls. The one built with threads=1 runs
    with 1, the default one with the process's count (2 here), every time."""
    import threading

    from warmstart.retrieval.threads import per_thread_limits

    if not per_thread_limits()["openmp"]:
        pytest.skip("this torch build exposes no per-thread OpenMP control")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the session runs with 1; a leaked 1 must be visible
    try:
        limited, plain = Retriever.load(retriever_dir, threads=1), Retriever.load(retriever_dir)
        seen: dict[str, list[int]] = {"limited": [], "plain": []}
        for name, r in (("limited", limited), ("plain", plain)):
            assert r.cross is not None
            for module in (r.model.query_tower, r.cross[0].backbone):
                module.register_forward_hook(
                    lambda *_, name=name: seen[name].append(torch.get_num_threads())
                )
        barrier = threading.Barrier(2)

        def work(r: Retriever) -> None:
            barrier.wait()
            for i in range(15):
                q = f"query number {i}"
                r.rerank_many([q], r.search(r.encode_queries([q]), 3))

        threads = [threading.Thread(target=work, args=(r,)) for r in (limited, plain)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert seen["limited"] and set(seen["limited"]) == {1}
        assert seen["plain"] and set(seen["plain"]) == {2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- speed options


def test_rerank_max_length_is_the_pairs_token_budget(retriever_dir: Path, tiny_collection) -> None:
    """``rerank_max_length`` scores each pair as the CE would with that ``max_length`` (pair by
    pair, no batching); the default keeps the CE's own length."""
    short = Retriever.load(retriever_dir, rerank_max_length=16)
    default = Retriever.load(retriever_dir)
    assert default.rerank_max_length is None and short.cross is not None
    ce, tok = short.cross
    query = next(iter(tiny_collection.queries.values()))
    hits = default.search(default.encode_queries([query]), 4)[0]
    for h in short.rerank(query, hits):
        batch = dict(
            tok([query], [passage_text(h.title, h.text)], truncation="only_second",
                max_length=16, return_tensors="pt")
        )  # fmt: skip
        with torch.inference_mode():
            assert h.score == pytest.approx(float(ce(batch)[0]), abs=1e-4)
    assert [h.score for h in default.rerank(query, hits)] != [
        h.score for h in short.rerank(query, hits)
    ]


def test_bf16_retriever_stays_close_to_fp32(retriever_dir: Path, tiny_collection) -> None:
    """bf16 autocast (an inference speed option) changes vectors and logits only slightly."""
    fp32 = Retriever.load(retriever_dir)
    bf16 = Retriever.load(retriever_dir, bf16=True)
    queries = list(tiny_collection.queries.values())[:4]
    a, b = fp32.encode_queries(queries), bf16.encode_queries(queries)
    assert a.shape == b.shape and b.dtype == np.float32
    assert np.abs(a - b).max() < 0.05
    hits = fp32.search(a[:1], 5)[0]
    s32 = {h.doc_id: h.score for h in fp32.rerank(queries[0], hits)}
    s16 = {h.doc_id: h.score for h in bf16.rerank(queries[0], hits)}
    assert s32.keys() == s16.keys()
    assert max(abs(s32[d] - s16[d]) for d in s32) < 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bf16": "yes"}, "bf16"),
        ({"rerank_max_length": 4}, "rerank_max_length"),
        ({"rerank_max_length": True}, "rerank_max_length"),
    ],
)
def test_speed_options_are_validated(retriever_dir: Path, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Retriever.load(retriever_dir, **kwargs)


def test_score_pairs_max_length_is_validated(retriever_dir: Path) -> None:
    r = Retriever.load(retriever_dir)
    assert r.cross is not None
    with pytest.raises(ValueError, match="max_length"):
        score_pairs(r.cross[0], r.cross[1], ["q"], ["p"], max_length=2)


def test_native_bf16_reads_the_cpu_flags(tmp_path: Path) -> None:
    from warmstart.retrieval.encoding import native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx512f avx512_bf16 sse\n")
    assert native_bf16(info)
    info.write_text("flags\t\t: fpu avx512f avx512_bf16x sse\n")
    assert not native_bf16(info)
    info.write_text("flags\t: fpu avx512f avx512bw\n")  # AVX-512 without its bf16 extension
    assert not native_bf16(info)
    assert not native_bf16(tmp_path / "missing")
