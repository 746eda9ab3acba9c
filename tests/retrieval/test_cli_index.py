"""``warmstart retrieval index`` / ``search``: the BM25 retriever folder, the one corpus-embedding
cache that ``train``, ``pipeline``, ``index`` and ``evaluate`` share, and the ``--rerank`` hint."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from fixtures.official import write_scifact
from warmstart.cli import build_parser, main
from warmstart.cli import retrieval as cli_retrieval
from warmstart.data.retrieval import load_beir
from warmstart.retrieval import encoding
from warmstart.retrieval.bm25 import BM25Retriever
from warmstart.retrieval.encoders import (
    CrossEncoder,
    CrossEncoderConfig,
    load_backbone,
    save_encoder,
)
from warmstart.retrieval.inference import (
    LexicalRetriever,
    Retriever,
    load_retriever,
)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny SciFact-layout folder; caches under ``tmp_path`` (never the user's)."""
    write_scifact(tmp_path / "data" / "scifact")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("WARMSTART_CACHE", raising=False)
    return tmp_path / "data"


def _index(data_dir: Path, out: Path, *flags: str) -> list[str]:
    return [
        "retrieval",
        "index",
        "--data-dir",
        str(data_dir),
        "--threads",
        "1",
        "--out",
        str(out),
        *flags,
    ]


def test_bm25_folder_answers_search_as_bm25_does(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bm25"
    assert main(_index(data_dir, out, "--model", "bm25")) == 0
    assert "BM25 index" in capsys.readouterr().out
    collection = load_beir(data_dir / "scifact")
    query = next(iter(collection.queries.values()))
    _, rows = BM25Retriever().fit(collection.passages()).search([query], 3)

    retriever = load_retriever(out)
    assert isinstance(retriever, LexicalRetriever)
    hits = retriever.search_texts([query], 3)[0]
    assert [h.doc_id for h in hits] == [collection.doc_ids[r] for r in rows[0]][: len(hits)]
    assert hits and all(a.score >= b.score for a, b in pairwise(hits))

    assert main(["retrieval", "search", "--retriever", str(out), "-k", "3", query]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[0] == "1" and printed[0].split()[2] == hits[0].doc_id
    with pytest.raises(ValueError, match="a BM25 retriever folder"):
        Retriever.load(out)


def test_bm25_folder_with_a_cross_encoder_reranks(
    data_dir: Path, tmp_path: Path, tiny_backbone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backbone, tok = load_backbone(tiny_backbone)
    save_encoder(CrossEncoder(backbone, CrossEncoderConfig(max_length=64)), tok, tmp_path / "ce")
    out = tmp_path / "bm25ce"
    assert main(_index(data_dir, out, "--model", "bm25", "--cross", str(tmp_path / "ce"))) == 0
    retriever = load_retriever(out)
    query = next(iter(load_beir(data_dir / "scifact").queries.values()))
    hits = retriever.search_texts([query], 5)[0]
    reranked = retriever.rerank(query, hits)
    assert sorted(h.doc_id for h in reranked) == sorted(h.doc_id for h in hits)
    capsys.readouterr()
    assert main(["retrieval", "search", "--retriever", str(out), "--rerank", query]) == 0
    assert capsys.readouterr().out.startswith("  1")


def test_rerank_without_a_cross_encoder_says_how_to_get_one_and_how_long(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bm25"
    assert main(_index(data_dir, out, "--model", "bm25")) == 0
    capsys.readouterr()
    assert main(["retrieval", "search", "--retriever", str(out), "--rerank", "vitamin"]) == 2
    err = capsys.readouterr().err
    assert "--only zero_shot,md0,ce" in err and "--cross W/ce/model" in err
    assert " min" in err and "docs/" in err


def test_bm25_settings_refused_for_a_dense_model(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _index(data_dir, tmp_path / "r", "--model", "zero-shot", "--bm25-k1", "1.2")
    assert main(argv) == 2
    assert "--bm25-k1: BM25 settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["retrieval", "pipeline"],
        ["retrieval", "train"],
        ["retrieval", "mine"],
        ["retrieval", "index", "--model", "bm25", "--out", "o"],
        ["retrieval", "evaluate"],
    ],
)
def test_every_retrieval_command_defaults_to_the_one_embedding_cache(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("WARMSTART_CACHE", raising=False)
    args = build_parser().parse_args(command)
    assert (
        cli_retrieval.resolve_embedding_cache(args.cache_dir)
        == tmp_path / "warmstart" / "embeddings"
    )
    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "elsewhere"))
    assert cli_retrieval.resolve_embedding_cache(args.cache_dir) == tmp_path / "elsewhere"


def _count_corpus_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch the encoder the cache calls on a miss; the list grows by one per corpus encode."""
    calls: list[int] = []
    real = encoding.encode_texts

    def counting(model, tokenizer, texts, *, side, **kw):  # type: ignore[no-untyped-def]
        if side == "passage":
            calls.append(len(texts))
        return real(model, tokenizer, texts, side=side, **kw)

    monkeypatch.setattr(encoding, "encode_texts", counting)
    return calls


def test_index_reuses_the_corpus_vectors_the_pipeline_encoded(
    data_dir: Path,
    tmp_path: Path,
    tiny_backbone: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = _count_corpus_encodes(monkeypatch)
    pipeline = ["retrieval", "pipeline", "--data-dir", str(data_dir), "--threads", "1"]
    pipeline += ["--preset", "tiny", "--backbone", str(tiny_backbone)]
    pipeline += ["--workdir", str(tmp_path / "work"), "--only", "zero_shot"]
    assert main(pipeline) == 0
    assert len(calls) == 1  # the pipeline's zero-shot step encoded the corpus once
    cache = tmp_path / "xdg" / "warmstart" / "embeddings"
    assert len(list(cache.glob("corpus-*.safetensors"))) == 1

    flags = ("--model", str(tiny_backbone), "--preset", "tiny")
    assert main(_index(data_dir, tmp_path / "dense", *flags)) == 0
    assert len(calls) == 1, "index encoded the corpus again instead of reading the cache"
    capsys.readouterr()
    query = next(iter(load_beir(data_dir / "scifact").queries.values()))
    assert main(["retrieval", "search", "--retriever", str(tmp_path / "dense"), query]) == 0
    assert capsys.readouterr().out.startswith("  1")

    # and the other way round: a fresh pipeline workdir finds the vectors index left
    assert main([*pipeline[:-4], "--workdir", str(tmp_path / "work2"), "--only", "zero_shot"]) == 0
    assert len(calls) == 1
