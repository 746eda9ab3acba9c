"""Students: models with ``scores(batch) -> (B, G)`` relevance scores that carry gradients.

:class:`CrossEncoderStudent` wraps the retrieval cross-encoder (the example's 2-layer MiniLM);
:class:`BagOfWordsStudent` is a tiny hashing model for tests and the ``tiny`` preset.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from warmstart.distill.data import PairGroups
from warmstart.retrieval.encoders import CrossEncoder, tokenize


class Student(nn.Module):
    """A trainable reranker: ``scores(batch)`` are (B, G) logits with gradients."""

    def scores(self, batch: PairGroups) -> torch.Tensor:
        raise NotImplementedError


class CrossEncoderStudent(Student):
    """A cross-encoder scoring each (query, passage) pair of a batch of groups."""

    def __init__(self, model: CrossEncoder, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def scores(self, batch: PairGroups) -> torch.Tensor:
        """(B, G) logits."""
        qs, ps = batch.flat()
        inputs = tokenize(self.tokenizer, qs, self.model.config.max_length, ps)
        return self.model(inputs).view(len(batch), batch.group_size)


class BagOfWordsStudent(Student):
    """Hashed bag-of-words embeddings; score = bilinear form of query and passage vectors."""

    def __init__(self, buckets: int = 512, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.buckets = buckets
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.EmbeddingBag(buckets, dim, mode="mean")
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(buckets, dim, generator=gen) * 0.1)
        self.mix = nn.Parameter(torch.eye(dim))

    def _bucket(self, word: str) -> int:
        digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little") % self.buckets

    def _embed(self, texts: list[str]) -> torch.Tensor:
        ids = [[self._bucket(w) for w in t.lower().split()] or [0] for t in texts]
        flat = torch.tensor([i for row in ids for i in row])
        offsets = torch.tensor([0, *torch.tensor([len(r) for r in ids]).cumsum(0)[:-1].tolist()])
        return self.embed(flat, offsets)  # (N, D)

    def scores(self, batch: PairGroups) -> torch.Tensor:
        qs, ps = batch.flat()
        q, p = self._embed(qs), self._embed(ps)  # (B·G, D)
        return ((q @ self.mix) * p).sum(-1).view(len(batch), batch.group_size) * 10.0
