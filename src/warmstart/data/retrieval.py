"""Passage-retrieval collections in the BEIR layout: any BEIR dataset, or one's own.

BEIR layout (Thakur et al., NeurIPS 2021 Datasets and Benchmarks): ``corpus.jsonl`` with ``_id``,
``title`` (optional), ``text``; ``queries.jsonl`` with ``_id``, ``text``; ``qrels/<split>.tsv``
(tab-separated) with header ``query-id corpus-id score``, the score an integer relevance grade
(graded qrels are fine: 0 = judged not relevant, higher = more relevant; nDCG uses the grade as
its gain, MRR and Recall count grade > 0). Optional ``unlabeled_queries.jsonl`` (SciFact has one:
claims with no labels) gives the unlabelled questions of RocketQA-style data augmentation.

``load_beir(folder)`` reads any such folder; ``load_scifact(data_dir)`` is the SciFact wrapper
(``data_dir/scifact``, or ``data_dir`` itself when it holds ``corpus.jsonl``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from warmstart.data.parsing import (
    Column,
    check_header,
    iter_jsonl,
    json_field,
    read_delimited,
    read_header,
    require_file,
)

QREL_COLUMNS = (Column("query_id", "str"), Column("doc_id", "str"), Column("score", "int"))


@dataclass(frozen=True)
class RetrievalCollection:
    """A document collection with labelled and unlabelled queries.

    Attributes:
        doc_ids: ``(N,)`` document ids; position ``i`` is the row of every index built on it.
        titles / texts: document titles and bodies, aligned with ``doc_ids``.
        queries: labelled queries, id → text.
        qrels: split → query id → doc id → graded relevance.
        unlabeled_queries: queries with no relevance labels, id → text.
    """

    doc_ids: list[str]
    titles: list[str]
    texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]
    unlabeled_queries: dict[str, str]

    def __post_init__(self) -> None:
        if not len(self.doc_ids) == len(self.titles) == len(self.texts):
            raise ValueError(
                f"doc_ids/titles/texts lengths differ: "
                f"{len(self.doc_ids)}/{len(self.titles)}/{len(self.texts)}"
            )

    def __len__(self) -> int:
        return len(self.doc_ids)

    def split_queries(self, split: str) -> dict[str, str]:
        """Queries that have relevance labels in ``split`` (id → text)."""
        if split not in self.qrels:
            raise ValueError(f"split must be one of {sorted(self.qrels)}, got {split!r}")
        return {qid: self.queries[qid] for qid in self.qrels[split]}

    def passages(self) -> list[str]:
        """Each document as the encoders read it (``retrieval.text.passage_text``: title, a space,
        then the body), the same function serving uses."""
        from warmstart.retrieval.text import passage_text

        return [passage_text(t, x) for t, x in zip(self.titles, self.texts, strict=True)]


def beir_root(data_dir: Path, name: str = "scifact") -> Path:
    """``data_dir`` itself when it holds ``corpus.jsonl`` (a BEIR folder), else ``data_dir/name``."""
    data_dir = Path(data_dir)
    return data_dir if (data_dir / "corpus.jsonl").is_file() else data_dir / name


def load_scifact(data_dir: Path) -> RetrievalCollection:
    """SciFact: ``load_beir`` of ``<data_dir>/scifact`` (or ``data_dir`` if it holds
    ``corpus.jsonl``)."""
    return load_beir(beir_root(data_dir, "scifact"))


def load_beir(root: Path) -> RetrievalCollection:
    """Read a BEIR-layout folder (see the module docstring); every qrels row must name a known
    query and document. Each ``qrels/<split>.tsv`` becomes ``qrels[split]``.

    Raises:
        FileNotFoundError: ``corpus.jsonl``, ``queries.jsonl`` or every qrels file is missing.
        ValueError: malformed lines, duplicate ids, unknown ids in qrels (file, line, field).
    """
    doc_ids, titles, texts = _read_corpus(require_file(root / "corpus.jsonl", "BEIR corpus"))
    queries = _read_queries(require_file(root / "queries.jsonl", "BEIR queries"))
    qrel_files = sorted((root / "qrels").glob("*.tsv"))
    if not qrel_files:
        raise FileNotFoundError(f"{root / 'qrels'}: no qrels/*.tsv files (BEIR relevance labels)")
    known_docs = set(doc_ids)
    qrels = {f.stem: _read_qrels(f, queries, known_docs) for f in qrel_files}
    unlabeled_path = root / "unlabeled_queries.jsonl"
    unlabeled = _read_queries(unlabeled_path) if unlabeled_path.is_file() else {}
    return RetrievalCollection(doc_ids, titles, texts, queries, qrels, unlabeled)


def _read_corpus(path: Path) -> tuple[list[str], list[str], list[str]]:
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        doc_id = str(json_field(path, lineno, obj, "_id", (str, int)))
        if doc_id in seen:
            raise ValueError(f"{path}: line {lineno}: field '_id': duplicate id {doc_id!r}")
        seen.add(doc_id)
        ids.append(doc_id)
        titles.append(str(obj.get("title") or ""))
        texts.append(json_field(path, lineno, obj, "text", str))
    return ids, titles, texts


def _read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        qid = str(json_field(path, lineno, obj, "_id", (str, int)))
        if qid in queries:
            raise ValueError(f"{path}: line {lineno}: field '_id': duplicate id {qid!r}")
        queries[qid] = json_field(path, lineno, obj, "text", str)
    return queries


def _read_qrels(path: Path, queries: dict[str, str], docs: set[str]) -> dict[str, dict[str, int]]:
    check_header(path, read_header(path, "\t"), [("query-id", "corpus-id", "score")])
    table = read_delimited(path, QREL_COLUMNS, sep="\t", header=True)
    out: dict[str, dict[str, int]] = {}
    rows = zip(table["query_id"], table["doc_id"], table["score"], strict=True)
    for row, (qid, did, score) in enumerate(rows):
        if qid not in queries:
            raise ValueError(f"{path}: line {row + 2}: field 'query-id': unknown query {qid!r}")
        if did not in docs:
            raise ValueError(f"{path}: line {row + 2}: field 'corpus-id': unknown document {did!r}")
        out.setdefault(qid, {})[did] = int(score)
    return out
