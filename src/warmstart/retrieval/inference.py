"""Serving-side dense retrieval: a trained RocketQA retriever (Qu et al., NAACL 2021,
arXiv 2010.08191) plus its index and, optionally, its cross-encoder.

Imports model classes and the index only (never training code). A retriever folder holds::

    model/        dual encoder (encoders.save_encoder)
    index/        vector index of the corpus (retrieval.index)
    docs.jsonl    one {"id", "title", "text"} per index row
    cross/        optional cross-encoder for ``rerank``

A BM25 retriever folder (:func:`export_bm25_retriever`, :class:`LexicalRetriever`) holds
``bm25.json`` + ``index/`` (``BM25Retriever.save``) in place of ``model/`` + ``index/``, the same
``docs.jsonl`` and optional ``cross/``. :func:`load_retriever` opens either kind; both answer
``search_texts(queries, k)`` and ``rerank``.

Methods are safe for concurrent readers: the (stateful) fast tokenizers are guarded by a lock
(``retrieval.text.tokenize``), the models run in ``inference_mode`` and never change after
loading. Text goes through the same functions as in training (``retrieval.text.passage_text``,
``retrieval.encoding.encode_texts`` / ``score_pairs``), so serving cannot drift from training.
The thread policy is a constructor argument (``threads``), never a process-wide setting.

Speed options, also constructor (and ``load``) arguments, off by default so results stay the
fp32 ones unless asked: ``bf16`` runs query encoding and reranking in bf16 autocast (worth it
only on CPUs with native bf16, ``encoding.native_bf16``; scores differ from fp32 in the 2nd-3rd
digit), ``rerank_max_length`` caps the tokens of each (query, passage) pair below the
cross-encoder's trained ``max_length`` (the rerank's cost grows with it; measure the quality).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from warmstart.retrieval.bm25 import BM25Retriever
from warmstart.retrieval.encoders import CrossEncoder, DualEncoder, load_encoder, save_encoder
from warmstart.retrieval.encoding import encode_texts, score_pairs
from warmstart.retrieval.index import VectorIndex, load_index
from warmstart.retrieval.text import passage_text
from warmstart.retrieval.threads import check_threads, intra_op_threads


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
    _write_documents(folder, documents, cross)


def export_bm25_retriever(
    folder: Path,
    bm25: BM25Retriever,
    documents: Sequence[Document],
    cross: tuple[CrossEncoder, PreTrainedTokenizerBase] | None = None,
) -> None:
    """Write a BM25 retriever folder that :meth:`LexicalRetriever.load` (and
    :func:`load_retriever`) reads; ``bm25`` was fitted on the documents' passage texts."""
    if bm25.n_docs != len(documents):
        raise ValueError(f"BM25 holds {bm25.n_docs} documents but {len(documents)} given")
    folder.mkdir(parents=True, exist_ok=True)
    bm25.save(folder)
    _write_documents(folder, documents, cross)


def _write_documents(
    folder: Path,
    documents: Sequence[Document],
    cross: tuple[CrossEncoder, PreTrainedTokenizerBase] | None,
) -> None:
    with (folder / "docs.jsonl").open("w") as f:
        for d in documents:
            f.write(json.dumps({"id": d.doc_id, "title": d.title, "text": d.text}) + "\n")
    if cross is not None:
        save_encoder(cross[0], cross[1], folder / "cross")


def _read_cross(folder: Path) -> tuple[CrossEncoder, PreTrainedTokenizerBase] | None:
    if not (folder / "cross").is_dir():
        return None
    ce, ce_tok = load_encoder(folder / "cross")
    if not isinstance(ce, CrossEncoder):
        raise ValueError(f"{folder / 'cross'}: not a cross-encoder")
    return ce, ce_tok


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


class _Reranking:
    """Hits of ``self.documents`` and ``rerank`` / ``rerank_many`` over ``self.cross``: what
    both retriever kinds share."""

    def __init__(
        self,
        documents: Sequence[Document],
        cross: tuple[CrossEncoder, PreTrainedTokenizerBase] | None,
        batch_size: int,
        threads: int | None,
        bf16: bool = False,
        rerank_max_length: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        if not isinstance(bf16, bool):
            raise ValueError(f"bf16={bf16!r}: must be True or False")
        if rerank_max_length is not None and (
            not isinstance(rerank_max_length, int)
            or isinstance(rerank_max_length, bool)
            or rerank_max_length < 8
        ):
            raise ValueError(
                f"rerank_max_length={rerank_max_length!r}: must be None or an int >= 8"
            )
        self.documents = list(documents)
        self.cross = None if cross is None else (cross[0].eval(), cross[1])
        self.batch_size = batch_size
        self.threads = check_threads(threads)
        self.bf16 = bf16
        self.rerank_max_length = rerank_max_length

    def _hit(self, row: int, score: float) -> Hit:
        d = self.documents[row]
        return Hit(d.doc_id, score, d.title, d.text)

    def rerank(self, query: str, passages: Sequence[Hit]) -> list[Hit]:
        """Reorder hits by cross-encoder logit (the returned ``score``), best first; the list of
        one of :meth:`rerank_many`."""
        return self.rerank_many([query], [passages])[0]

    def rerank_many(
        self, queries: Sequence[str], passages_per_query: Sequence[Sequence[Hit]]
    ) -> list[list[Hit]]:
        """Rerank several queries' hits at once: a list in, a list of the same length and order
        out; every (query, passage) pair of the call goes through one length-sorted, padded
        cross-encoder pass (``encoding.score_pairs``), in batches of ``batch_size`` pairs.

        An empty hit list is valid and gives ``[]``. Each query's hits are returned best first by
        cross-encoder logit (stable on ties: the incoming order).

        Raises:
            ValueError: no cross-encoder in this folder, lengths differ, or a query is blank.
        """
        if self.cross is None:
            raise ValueError("rerank: this retriever folder has no cross/ model")
        query_list = _check_queries(queries, "queries")
        if isinstance(passages_per_query, str | bytes) or len(passages_per_query) != len(
            query_list
        ):
            raise ValueError(
                f"passages_per_query: {_length(passages_per_query)} hit lists for "
                f"{len(query_list)} queries (one list per query, same order)"
            )
        hit_lists = [list(hits) for hits in passages_per_query]
        pair_queries = [q for q, hits in zip(query_list, hit_lists, strict=True) for _ in hits]
        pair_passages = [passage_text(h.title, h.text) for hits in hit_lists for h in hits]
        model, tokenizer = self.cross
        with intra_op_threads(self.threads):
            scores = score_pairs(
                model,
                tokenizer,
                pair_queries,
                pair_passages,
                batch_size=self.batch_size,
                bf16=self.bf16,
                max_length=self.rerank_max_length,
            )
        out: list[list[Hit]] = []
        start = 0
        for hits in hit_lists:
            part = scores[start : start + len(hits)]
            start += len(hits)
            order = np.argsort(-part, kind="stable")
            out.append(
                [Hit(hits[i].doc_id, float(part[i]), hits[i].title, hits[i].text) for i in order]
            )
        return out


class Retriever(_Reranking):
    """Query encoder + index (+ cross-encoder); see the module docstring for the folder layout.

    Args:
        batch_size: texts (queries, or query-passage pairs) per forward pass.
        threads: thread policy of every call (``retrieval.threads``): None (default) uses the
            process's settings and changes nothing; ``n`` runs this object's encoding and
            reranking with ``n`` intra-op threads in the calling thread only. ``Retriever.load``
            gives the index the same policy.
        bf16: query encoding and reranking in bf16 autocast (module docstring).
        rerank_max_length: tokens per reranked pair (None: the cross-encoder's own).

    Raises:
        ValueError: the document count differs from the index size.
    """

    def __init__(
        self,
        model: DualEncoder,
        tokenizer: PreTrainedTokenizerBase,
        index: VectorIndex,
        documents: Sequence[Document],
        cross: tuple[CrossEncoder, PreTrainedTokenizerBase] | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        *,
        bf16: bool = False,
        rerank_max_length: int | None = None,
    ) -> None:
        if len(documents) != index.ntotal:
            raise ValueError(
                f"{len(documents)} documents but the index holds {index.ntotal} vectors: "
                "document i must be the index's row i"
            )
        super().__init__(documents, cross, batch_size, threads, bf16, rerank_max_length)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.index = index

    @classmethod
    def load(
        cls,
        folder: Path,
        batch_size: int = 32,
        threads: int | None = None,
        *,
        bf16: bool = False,
        rerank_max_length: int | None = None,
    ) -> Retriever:
        """Load a folder written by :func:`export_retriever` (speed options as the constructor).

        Raises:
            ValueError: not a dual encoder / cross-encoder where one is expected, or
                ``docs.jsonl`` does not hold one document per index vector.
        """
        folder = Path(folder)
        if (folder / "bm25.json").is_file():
            raise ValueError(
                f"{folder}: a BM25 retriever folder (no query encoder); open it with "
                "load_retriever or LexicalRetriever.load"
            )
        model, tokenizer = load_encoder(folder / "model")
        if not isinstance(model, DualEncoder):
            raise ValueError(f"{folder / 'model'}: not a dual encoder")
        cross = _read_cross(folder)
        docs = _read_documents(folder / "docs.jsonl")
        index = load_index(folder / "index", threads=threads)
        if len(docs) != index.ntotal:
            raise ValueError(
                f"{folder}: docs.jsonl has {len(docs)} documents but index/ holds "
                f"{index.ntotal} vectors; the folder is inconsistent (rewrite it with "
                "export_retriever or `warmstart retrieval index`)"
            )
        return cls(
            model,
            tokenizer,
            index,
            docs,
            cross,
            batch_size,
            threads,
            bf16=bf16,
            rerank_max_length=rerank_max_length,
        )

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(M,) query texts -> (M, H) float32 vectors, in length-sorted batches.

        Raises:
            ValueError: ``texts`` is one string, or an entry is not a string or is blank.
        """
        texts = _check_queries(texts, "texts")
        with intra_op_threads(self.threads):
            return encode_texts(
                self.model,
                self.tokenizer,
                texts,
                side="query",
                batch_size=self.batch_size,
                bf16=self.bf16,
            )

    def search(self, query_embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k documents of each (M, H) query vector, best first."""
        scores, rows = self.index.search(np.ascontiguousarray(query_embeddings, np.float32), k)
        return [
            [self._hit(int(r), float(s)) for r, s in zip(row, srow, strict=True) if r >= 0]
            for row, srow in zip(rows, scores, strict=True)
        ]

    def search_texts(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-k documents of each query text, best first: ``search(encode_queries(queries))``."""
        return self.search(self.encode_queries(queries), k)


class LexicalRetriever(_Reranking):
    """BM25 over the documents (+ cross-encoder); the BM25 folder of the module docstring.

    Args:
        bm25: fitted on the documents' ``passage_text(title, text)``, row i = document i.
        batch_size, threads: as :class:`Retriever` (``threads`` also splits BM25 scoring).
    """

    def __init__(
        self,
        bm25: BM25Retriever,
        documents: Sequence[Document],
        cross: tuple[CrossEncoder, PreTrainedTokenizerBase] | None = None,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        if len(documents) != bm25.n_docs:
            raise ValueError(
                f"{len(documents)} documents but BM25 holds {bm25.n_docs}: "
                "document i must be BM25's row i"
            )
        super().__init__(documents, cross, batch_size, threads)
        self.bm25 = bm25

    @classmethod
    def load(
        cls, folder: Path, batch_size: int = 32, threads: int | None = None
    ) -> LexicalRetriever:
        """Load a folder written by :func:`export_bm25_retriever`.

        Raises:
            ValueError: ``docs.jsonl`` does not hold one document per BM25 row, or ``cross/``
                is not a cross-encoder.
        """
        folder = Path(folder)
        bm25 = BM25Retriever.load(folder, threads=threads)
        docs = _read_documents(folder / "docs.jsonl")
        if len(docs) != bm25.n_docs:
            raise ValueError(
                f"{folder}: docs.jsonl has {len(docs)} documents but the BM25 index holds "
                f"{bm25.n_docs}; rewrite it with `warmstart retrieval index --model bm25`"
            )
        return cls(bm25, docs, _read_cross(folder), batch_size, threads)

    def search_texts(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-k documents of each query text by BM25 score, best first; documents sharing no
        term with a query (score 0) are left out.

        Raises:
            ValueError: ``queries`` is one string, or an entry is not a string or is blank.
        """
        texts = _check_queries(queries, "queries")
        scores, rows = self.bm25.search(texts, k)
        return [
            [self._hit(int(r), float(s)) for r, s in zip(row, srow, strict=True) if s > 0]
            for row, srow in zip(rows, scores, strict=True)
        ]


def load_retriever(
    folder: Path, batch_size: int = 32, threads: int | None = None
) -> Retriever | LexicalRetriever:
    """Open a retriever folder of either kind: BM25 (``bm25.json``) or dense (``model/``)."""
    folder = Path(folder)
    if (folder / "bm25.json").is_file():
        return LexicalRetriever.load(folder, batch_size, threads)
    return Retriever.load(folder, batch_size, threads)


def _length(value: object) -> object:
    try:
        return len(value)  # type: ignore[arg-type]
    except TypeError:
        return type(value).__name__


def _check_queries(texts: Sequence[str], name: str) -> list[str]:
    """``texts`` as a list, or ValueError naming the first entry that is not a non-blank str."""
    if isinstance(texts, str | bytes):
        raise ValueError(f"{name}: a list of query strings is expected, got one string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}]={text!r}: must be a string")
        if not text.strip():
            raise ValueError(f"{name}[{i}]={text!r}: empty or whitespace-only query")
    return out
