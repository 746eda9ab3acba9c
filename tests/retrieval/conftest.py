"""Tiny, randomly initialised BERT backbones with an offline tokenizer (no real weights)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from warmstart.data.retrieval import RetrievalCollection
from warmstart.data.synthetic import synthetic_collection

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_backbone(folder: Path, words: list[str], seed: int = 0) -> Path:
    """Save a 2-layer, hidden-32 BERT (dropout off) and a word-level vocab into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL, *sorted(set(words))]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)  # tests own their RNG; library code never seeds
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def collection_words(collection: RetrievalCollection) -> list[str]:
    texts = [*collection.titles, *collection.texts, *collection.queries.values()]
    texts += list(collection.unlabeled_queries.values())
    return [w for t in texts for w in re.findall(r"\w+", t.lower())]


@pytest.fixture(scope="session")
def tiny_collection() -> RetrievalCollection:
    return synthetic_collection(n_docs=80, n_queries=40, seed=0)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory, tiny_collection) -> Path:
    folder = tmp_path_factory.mktemp("tiny_bert")
    return write_tiny_backbone(folder, collection_words(tiny_collection))


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # 2 shared cores: OpenMP threads spinning against other processes are ~10x slower than one
    torch.set_num_threads(1)
