"""The SciFact example's pure parts: the teacher's dev split, its config checks and the
student's init (picked layers of the backbone or of the teacher, on a tiny random BERT)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from warmstart.distill.data import PairGroups
from warmstart.distill.example import (
    ExampleConfig,
    fresh_cross,
    fresh_student,
    picked_layers,
    teacher_split,
)
from warmstart.distill.student import CrossEncoderStudent
from warmstart.retrieval.encoders import CrossEncoderConfig, save_encoder


def _collection(n: int) -> Any:
    return SimpleNamespace(qrels={"train": {f"q{i}": {"d": 1} for i in range(n)}})


def test_teacher_split_is_a_seeded_partition() -> None:
    train, dev = teacher_split(_collection(50), 0.1, seed=0)
    assert len(dev) == 5 and len(train) == 45
    assert set(train) | set(dev) == {f"q{i}" for i in range(50)} and not set(train) & set(dev)
    assert teacher_split(_collection(50), 0.1, seed=0) == (train, dev)
    assert teacher_split(_collection(50), 0.1, seed=1)[1] != dev


def test_example_config_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="dev_fraction"):
        ExampleConfig(dev_fraction=1.0)
    with pytest.raises(ValueError, match="teacher_epochs"):
        ExampleConfig(teacher_epochs=0)


def _tiny_bert(folder: Path, layers: int = 6) -> Path:
    """A random ``layers``-layer, hidden-16 BERT with a word-level vocab, saved in ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cell", "gene", "protein", "virus"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)  # tests own their RNG
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _layer_weight(model: Any, i: int) -> torch.Tensor:
    return model.backbone.encoder.layer[i].attention.self.query.weight


def test_picked_layers_first_and_spread() -> None:
    assert picked_layers(6, 2, "first") == [0, 1]
    assert picked_layers(6, 2, "spread") == [2, 5]
    assert picked_layers(6, 3, "spread") == [1, 3, 5]
    assert picked_layers(6, 6, "spread") == list(range(6))
    with pytest.raises(ValueError, match="student_layers=7"):
        picked_layers(6, 7, "first")
    with pytest.raises(ValueError, match="student_pick"):
        picked_layers(6, 2, "last")
    with pytest.raises(ValueError, match="student_init"):
        ExampleConfig(student_init="random")
    with pytest.raises(ValueError, match="student_pick"):
        ExampleConfig(student_pick="every")


def test_student_from_the_backbone_or_the_teacher(tmp_path: Path) -> None:
    backbone_dir = _tiny_bert(tmp_path / "bert")
    full, tok = fresh_cross(backbone_dir, None, CrossEncoderConfig(max_length=32, pooling="mean"))
    save_encoder(full, tok, tmp_path / "teacher")
    spread = ExampleConfig(max_length=24, student_pick="spread")

    plain, _ = fresh_student(backbone_dir, spread)  # MiniLM-style: picked layers, fresh head
    assert len(plain.backbone.encoder.layer) == 2 == plain.backbone.config.num_hidden_layers
    assert torch.equal(_layer_weight(plain, 0), _layer_weight(full, 2))
    assert torch.equal(_layer_weight(plain, 1), _layer_weight(full, 5))

    with pytest.raises(ValueError, match="teacher's folder"):
        fresh_student(backbone_dir, replace(spread, student_init="teacher"))
    student, tok = fresh_student(
        backbone_dir, replace(spread, student_init="teacher"), tmp_path / "teacher"
    )
    assert len(student.backbone.encoder.layer) == 2 and student.training
    assert torch.equal(_layer_weight(student, 1), _layer_weight(full, 5))
    assert torch.equal(student.head.weight, full.head.weight)  # the teacher's head, not a fresh one
    assert student.config.max_length == 24 and student.config.pooling == "mean"
    first, _ = fresh_student(
        backbone_dir,
        replace(spread, student_init="teacher", student_pick="first"),
        tmp_path / "teacher",
    )
    assert torch.equal(_layer_weight(first, 1), _layer_weight(full, 1))
    scores = CrossEncoderStudent(student, tok).scores(
        PairGroups(("cell gene",), (("gene protein", "virus"),))
    )
    assert scores.shape == (1, 2) and scores.requires_grad


def test_negative_draws_add_samples_and_keep_the_first_draw() -> None:
    from warmstart.distill.example import groups_from_examples
    from warmstart.retrieval.training import TrainExample

    passages = [f"p{i}" for i in range(20)]
    examples = [TrainExample(f"q{i}", f"query {i}", i, tuple(range(10, 20))) for i in range(3)]
    once = groups_from_examples(examples, passages, 3, seed=0)
    four = groups_from_examples(examples, passages, 3, seed=0, draws=4)
    assert len(once) == 3 and len(four) == 12
    assert four.passages[:3] == once.passages and four.queries[:3] == once.queries
    assert four.queries == once.queries * 4 and once.queries[0] == "query 0"
    assert all(g[0] == f"p{i % 3}" for i, g in enumerate(four.passages))  # column 0: the positive
    assert len(set(four.passages)) > 3  # later draws differ
    with pytest.raises(ValueError, match="draws=0"):
        groups_from_examples(examples, passages, 3, seed=0, draws=0)


def test_weights_digest_tells_identical_students_apart(tmp_path: Path) -> None:
    from warmstart.distill.example import weights_digest

    backbone_dir = _tiny_bert(tmp_path / "bert", layers=2)
    config = CrossEncoderConfig(max_length=16, pooling="mean")
    torch.manual_seed(0)
    a, tok = fresh_cross(backbone_dir, None, config)
    torch.manual_seed(0)
    b, _ = fresh_cross(backbone_dir, None, config)  # same seed: the same head
    for name, model in (("a", a), ("b", b)):
        save_encoder(model, tok, tmp_path / name)
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b")
    with torch.no_grad():
        b.head.bias.add_(1e-3)
    save_encoder(b, tok, tmp_path / "b")
    assert weights_digest(tmp_path / "a") != weights_digest(tmp_path / "b")


def test_pseudo_queries_come_from_the_corpus_and_are_unlabelled() -> None:
    from warmstart.data.retrieval import RetrievalCollection
    from warmstart.distill.example import pseudo_query, pseudo_query_dataset

    words = ["cell", "gene", "protein", "virus", "brain", "heart", "liver", "lung"]
    titles = [f"{words[i % 8]} {words[(i + 1) % 8]} t{i}" for i in range(12)]
    titles[3] = ""
    texts = [f"{words[(i + 2) % 8]} study. more {words[i % 8]} text n{i}" for i in range(12)]
    collection = RetrievalCollection(
        [f"d{i}" for i in range(12)], titles, texts, {"q": "held out"}, {"test": {}}, {}
    )
    assert pseudo_query("", "first part. second") == "first part"
    data = pseudo_query_dataset(collection, 5, 2, seed=0, depth=4)
    assert len(data) == 5 and data.labelled == (False,) * 5
    passages = collection.passages()
    for query, group in zip(data.queries, data.passages, strict=True):
        source = next(i for i, p in enumerate(passages) if p == group[0])
        assert query == pseudo_query(titles[source], texts[source])
        assert len(group) == 3 and group[0] not in group[1:]
    assert pseudo_query_dataset(collection, 5, 2, seed=0, depth=4) == data
    around = pseudo_query_dataset(collection, 5, 2, seed=0, depth=4, group="neighbours")
    assert around.queries == data.queries and around.labelled == (False,) * 5
    for group in around.passages:  # BM25's top 3 others: no source among them
        assert len(set(group)) == 3
    for query, group in zip(around.queries, around.passages, strict=True):
        assert all(
            pseudo_query(titles[passages.index(p)], texts[passages.index(p)]) != query
            for p in group
        )
    with pytest.raises(ValueError, match="allowed values"):
        pseudo_query_dataset(collection, 5, 2, group="any")
    with pytest.raises(ValueError, match="one per corpus passage"):
        pseudo_query_dataset(collection, 13, 2)
