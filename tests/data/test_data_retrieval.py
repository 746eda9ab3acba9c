"""BEIR/SciFact loading on tiny files, and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from warmstart.data.retrieval import load_scifact


def test_load_scifact(tiny_data_dir: Path, tiny_counts: dict) -> None:
    coll = load_scifact(tiny_data_dir)
    expected = tiny_counts["scifact"]
    assert len(coll) == expected["docs"]
    assert len(coll.queries) == expected["queries"]
    assert len(coll.unlabeled_queries) == expected["unlabeled"]
    assert set(coll.qrels) == {"train", "test"}
    assert set(coll.split_queries("test")) == set(coll.qrels["test"])
    assert len(coll.passages()) == len(coll)


def _copy(tiny_data_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "scifact"
    shutil.copytree(tiny_data_dir / "scifact", root)
    return root


def test_unknown_document_in_qrels(tiny_data_dir: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data_dir, tmp_path)
    with (root / "qrels" / "test.tsv").open("a") as f:
        f.write("q0\tnot-a-doc\t1\n")
    with pytest.raises(
        ValueError, match=r"test\.tsv: line \d+: field 'corpus-id': unknown document"
    ):
        load_scifact(tmp_path)


def test_malformed_corpus_line(tiny_data_dir: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data_dir, tmp_path)
    lines = (root / "corpus.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"corpus\.jsonl: line 3: invalid JSON"):
        load_scifact(tmp_path)


def test_missing_corpus(tmp_path: Path) -> None:
    (tmp_path / "scifact").mkdir()
    with pytest.raises(FileNotFoundError, match=r"corpus\.jsonl"):
        load_scifact(tmp_path)


def test_bad_qrels_header(tiny_data_dir: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data_dir, tmp_path)
    text = (root / "qrels" / "train.tsv").read_text().split("\n", 1)[1]
    (root / "qrels" / "train.tsv").write_text(text)
    with pytest.raises(ValueError, match=r"train\.tsv: line 1: header"):
        load_scifact(tmp_path)
