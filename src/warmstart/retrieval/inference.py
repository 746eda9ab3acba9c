"""Serving-side dense retrieval: a trained RocketQA retriever (Qu et al., NAACL 2021,
arXiv 2010.08191) plus its index and, optionally, its cross-encoder.

Imports model classes and the index only (never training code). A retriever folder holds::

    model/        dual encoder (encoders.save_encoder)
    index/        vector index of the corpus (retrieval.index)
    docs.jsonl    one {"id", "title", "text"} per index row
    cross/        optional cross-encoder for ``rerank``

Methods are safe for concurrent readers: the (stateful) fast tokenizers are guarded by a lock,
the models run in ``inference_mode`` and never change after loading.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from warmstart.retrieval.encoders import CrossEncoder, DualEncoder, load_encoder, save_encoder
from warmstart.retrieval.encoding import length_sorted_batches
from warmstart.retrieval.index import VectorIndex, load_index


@dataclass(frozen=True)
class Document:
    """One corpus entry as returned by search."""

    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Hit:
    """A ranked search result."""

    doc_id: str
    score: float
    title: str
    text: str


def export_retriever(
    folder: Path,
    model: DualEncoder,
    tokenizer: PreTrainedTokenizerBase,
    index: VectorIndex,
    documents: Sequence[Document],
    cross: tuple[CrossEncoder, PreTrainedTokenizerBase] | None = None,
) -> None:
    """Write a retriever folder that :meth:`Retriever.load` reads."""
    if index.ntotal != len(documents):
        raise ValueError(f"index has {index.ntotal} rows but {len(documents)} documents given")
    folder.mkdir(parents=True, exist_ok=True)
    save_encoder(model, tokenizer, folder / "model")
    index.save(folder / "index")
    with (folder / "docs.jsonl").open("w") as f:
        for d in documents:
            f.write(json.dumps({"id": d.doc_id, "title": d.title, "text": d.text}) + "\n")
    if cross is not None:
        save_encoder(cross[0], cross[1], folder / "cross")


def _read_documents(path: Path) -> list[Document]:
    docs = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                docs.append(Document(str(row["id"]), str(row["title"]), str(row["text"])))
            except (ValueError, KeyError) as err:
                raise ValueError(f"{path}:{number}: bad document line ({err})") from err
    return docs


class Retriever:
    """Query encoder + index (+ cross-encoder); see the module docstring for the folder layout."""

    def __init__(
        self,
        model: DualEncoder,
        tokenizer: PreTrainedTokenizerBase,
        index: VectorIndex,
        documents: Sequence[Document],
        cross: tuple[CrossEncoder, PreTrainedTokenizerBase] | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.index = index
        self.documents = list(documents)
        self.cross = None if cross is None else (cross[0].eval(), cross[1])
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path, batch_size: int = 32) -> Retriever:
        """Load a folder written by :func:`export_retriever`."""
        model, tokenizer = load_encoder(folder / "model")
        if not isinstance(model, DualEncoder):
            raise ValueError(f"{folder / 'model'}: not a dual encoder")
        cross = None
        if (folder / "cross").is_dir():
            ce, ce_tok = load_encoder(folder / "cross")
            if not isinstance(ce, CrossEncoder):
                raise ValueError(f"{folder / 'cross'}: not a cross-encoder")
            cross = (ce, ce_tok)
        docs = _read_documents(folder / "docs.jsonl")
        return cls(model, tokenizer, load_index(folder / "index"), docs, cross, batch_size)

    def _tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        texts: list[str],
        max_length: int,
        pairs: list[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        with self._lock:  # a fast tokenizer mutates its padding/truncation state per call
            out = tokenizer(
                texts,
                pairs,
                padding=True,
                truncation="only_second" if pairs is not None else True,
                max_length=max_length,
                return_tensors="pt",
            )
        return dict(out)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(M,) query texts -> (M, H) float32 vectors, in length-sorted batches."""
        texts = list(texts)
        out = np.zeros((len(texts), self.model.dim), dtype=np.float32)
        max_length = self.model.config.query_max_length
        for batch in length_sorted_batches([len(t) for t in texts], self.batch_size):
            inputs = self._tokenize(self.tokenizer, [texts[i] for i in batch], max_length)
            with torch.inference_mode():
                out[batch] = self.model.encode_queries(inputs).float().numpy()
        return out

    def search(self, query_embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k documents of each (M, H) query vector, best first."""
        scores, rows = self.index.search(np.ascontiguousarray(query_embeddings, np.float32), k)
        return [
            [self._hit(int(r), float(s)) for r, s in zip(row, srow, strict=True) if r >= 0]
            for row, srow in zip(rows, scores, strict=True)
        ]

    def _hit(self, row: int, score: float) -> Hit:
        d = self.documents[row]
        return Hit(d.doc_id, score, d.title, d.text)

    def rerank(self, query: str, passages: Sequence[Hit]) -> list[Hit]:
        """Reorder hits by cross-encoder logit (the returned ``score``), best first."""
        if self.cross is None:
            raise ValueError("rerank: this retriever folder has no cross/ model")
        model, tokenizer = self.cross
        hits = list(passages)
        scores = np.zeros(len(hits), dtype=np.float32)
        for start in range(0, len(hits), self.batch_size):
            part = hits[start : start + self.batch_size]
            texts = [f"{h.title} {h.text}".strip() for h in part]
            inputs = self._tokenize(tokenizer, [query] * len(part), model.config.max_length, texts)
            with torch.inference_mode():
                scores[start : start + len(part)] = model(inputs).float().numpy()
        order = np.argsort(-scores, kind="stable")
        return [Hit(hits[i].doc_id, float(scores[i]), hits[i].title, hits[i].text) for i in order]
