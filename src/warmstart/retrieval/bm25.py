"""BM25 lexical retrieval on ``bm25s``: the baseline RocketQA compares against and a negative source.

BM25: Robertson and Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond" (2009).
RocketQA (Qu et al., NAACL 2021) reports BM25 as its lexical baseline and mines BM25 negatives on
NQ. Scoring is done by ``bm25s`` (Lù, 2024) with the Lucene variant of the formula.

Stemming uses the Snowball English stemmer of the optional ``PyStemmer`` package; with
``stemmer="auto"`` (the default) it is used when installed and skipped otherwise, and the
retriever records which happened in ``stemming``.

Example::

    bm25 = BM25Retriever().fit(passages)
    scores, positions = bm25.search(["what causes scurvy"], k=10)
    bm25.save(folder)                      # bm25.json + bm25s's arrays (no pickle)
    same = BM25Retriever.load(folder)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.checkpoint import read_versioned_json
from warmstart.retrieval.threads import check_threads

__all__ = ["BM25Config", "BM25Retriever", "bm25_run", "evaluate_bm25"]

_STEMMERS = ("auto", "english")
_FIELDS = ("title+text", "text")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BM25Config:
    """BM25 settings.

    Attributes:
        k1: term-frequency saturation; 0.9 is Anserini's default (its BEIR "flat" SciFact run
            scores 0.679 nDCG@10), kept rather than tuned on test (see docs/indexes.md).
        b: length normalisation; 0.4 is Anserini's default, as above.
        stopwords: ``"english"`` (bm25s's English list) or ``None`` to keep every token.
        stemmer: ``"auto"`` (English Snowball if PyStemmer is installed), ``"english"`` (require
            it) or ``None`` (no stemming).
        lowercase: lowercase before tokenising.
    """

    k1: float = 0.9
    b: float = 0.4
    stopwords: str | None = "english"
    stemmer: str | None = "auto"
    lowercase: bool = True

    def __post_init__(self) -> None:
        if not self.k1 >= 0:
            raise ValueError(f"k1 must be >= 0, got {self.k1!r}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"b must be in [0, 1], got {self.b!r}")
        if self.stopwords not in ("english", None):
            raise ValueError(f"stopwords must be 'english' or None, got {self.stopwords!r}")
        if self.stemmer is not None and self.stemmer not in _STEMMERS:
            raise ValueError(f"stemmer must be one of {[*_STEMMERS, None]}, got {self.stemmer!r}")


def _load_stemmer(choice: str | None) -> Any:
    """PyStemmer's English stemmer, or None; see ``BM25Config.stemmer``."""
    if choice is None:
        return None
    try:
        import Stemmer
    except ImportError as err:
        if choice == "auto":
            return None
        raise ImportError("stemmer='english' needs PyStemmer: pip install PyStemmer") from err
    return Stemmer.Stemmer("english")


class BM25Retriever:
    """BM25 over a fixed list of texts; positions returned are indices into that list.

    Args:
        threads: thread policy of ``search`` (the retrieval objects' convention, see
            ``retrieval.threads``): None (default) scores in the calling thread; ``n`` splits a
            batch of queries across ``n`` threads of a pool bm25s creates for that call. Nothing
            process-wide is changed either way (bm25s scores with numpy's sparse sums, no BLAS).
    """

    def __init__(self, config: BM25Config | None = None, threads: int | None = None) -> None:
        self.config = config or BM25Config()
        self.threads = check_threads(threads)
        self._stemmer = _load_stemmer(self.config.stemmer)
        self._model: Any = None
        self._n_docs = 0

    @property
    def stemming(self) -> bool:
        """Whether tokens are stemmed (False when ``stemmer="auto"`` found no PyStemmer)."""
        return self._stemmer is not None

    @property
    def n_docs(self) -> int:
        return self._n_docs

    def _tokenize(self, texts: Sequence[str], *, return_ids: bool) -> Any:
        import bm25s

        return bm25s.tokenize(
            list(texts),
            lower=self.config.lowercase,
            stopwords=self.config.stopwords or [],
            stemmer=self._stemmer.stemWords if self._stemmer is not None else None,
            return_ids=return_ids,
            show_progress=False,
        )

    def fit(self, texts: Sequence[str]) -> BM25Retriever:
        """Index ``texts`` (N documents); returns ``self``."""
        import bm25s

        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty sequence of strings")
        model = bm25s.BM25(k1=self.config.k1, b=self.config.b, method="lucene")
        model.index(self._tokenize(texts, return_ids=True), show_progress=False)
        self._model, self._n_docs = model, len(texts)
        return self

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` documents per query.

        Args:
            queries: M query strings.
            k: hits per query; clipped to the number of documents.

        Returns:
            scores (M, k') float32 and positions (M, k') int64, best first, k' = min(k, N).
            Documents sharing no term with the query score 0 and fill the tail in any order.
        """
        if self._model is None:
            raise ValueError("BM25Retriever.search called before fit")
        if isinstance(queries, str):
            raise ValueError("queries must be a sequence of strings, not one string")
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        kk = min(int(k), self._n_docs)
        if len(queries) == 0:
            return np.zeros((0, kk), np.float32), np.zeros((0, kk), np.int64)
        tokens = self._tokenize(queries, return_ids=False)
        ids, scores = self._model.retrieve(
            tokens, k=kk, show_progress=False, n_threads=self.threads or 0
        )
        return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)

    def save(self, folder: Path) -> None:
        """Write ``folder/bm25.json`` (settings, the stemming used, the document count) and
        ``folder/index/`` (bm25s's score matrix and vocabulary: numpy arrays and JSON, no pickle)."""
        if self._model is None:
            raise ValueError("BM25Retriever.save called before fit")
        folder = Path(folder)
        self._model.save(folder / "index", show_progress=False)
        # the stemmer actually used, so a folder built with PyStemmer refuses to load without it
        config = {**asdict(self.config), "stemmer": "english" if self.stemming else None}
        meta = {"format_version": _FORMAT_VERSION, "config": config, "n_docs": self._n_docs}
        (folder / "bm25.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: Path, threads: int | None = None) -> BM25Retriever:
        """A retriever saved by :meth:`save`, ready to ``search``.

        Raises:
            FileNotFoundError: no ``bm25.json`` in ``folder``.
            ValueError: another format version, or the index holds another document count.
        """
        import bm25s

        folder = Path(folder)
        meta = read_versioned_json(
            folder / "bm25.json", _FORMAT_VERSION, f"{folder}: no bm25.json (not a BM25 folder)"
        )
        out = cls(BM25Config(**meta["config"]), threads)
        out._model = bm25s.BM25.load(folder / "index", show_progress=False, allow_pickle=False)
        out._n_docs = int(meta["n_docs"])
        if out._model.scores["num_docs"] != out._n_docs:
            raise ValueError(
                f"{folder}: bm25.json says {out._n_docs} documents, index/ holds "
                f"{out._model.scores['num_docs']}"
            )
        return out


def bm25_run(
    retriever: BM25Retriever, doc_ids: Sequence[str], queries: Mapping[str, str], k: int = 100
) -> dict[str, list[str]]:
    """Ranked document ids per query id (the ``run`` of ``metrics.evaluate_retrieval``)."""
    if retriever.n_docs != len(doc_ids):
        raise ValueError(f"retriever holds {retriever.n_docs} documents, got {len(doc_ids)} ids")
    qids = list(queries)
    _, positions = retriever.search([queries[q] for q in qids], k)
    return {qid: [doc_ids[p] for p in row] for qid, row in zip(qids, positions, strict=True)}


def evaluate_bm25(
    collection: Any,
    split: str = "test",
    config: BM25Config | None = None,
    fields: str = "title+text",
) -> dict[str, float]:
    """BM25 nDCG@10 / MRR@10 / Recall@100 on one split of a ``RetrievalCollection``.

    Args:
        collection: ``warmstart.data.retrieval.RetrievalCollection``.
        split: qrels split to evaluate (``"test"``, ``"train"``).
        config: BM25 settings.
        fields: index ``"title+text"`` (title, a space, then the body) or only ``"text"``.
    """
    from warmstart.metrics import evaluate_retrieval

    if fields not in _FIELDS:
        raise ValueError(f"fields must be one of {list(_FIELDS)}, got {fields!r}")
    texts = collection.passages() if fields == "title+text" else list(collection.texts)
    retriever = BM25Retriever(config).fit(texts)
    run = bm25_run(retriever, collection.doc_ids, collection.split_queries(split), k=100)
    return evaluate_retrieval(run, collection.qrels[split])
