"""Artifact I/O of the RocketQA pipeline and the context every step runs in.

A step reads three kinds of input, and the context notes each as the step reads it:

* the dataset (``ctx.collection``, ``ctx.passages``): which files' contents (corpus, queries,
  ``qrels/<split>``, unlabelled queries) the step read, recorded with their content fingerprints
  in ``<step>/inputs.json``, so a finished step is never reused on other data;
* other steps' artifacts (``ctx.artifact(step, name)``): only those the step declares (next to
  its body, ``steps.pipeline_step``); an undeclared read is an error, so the declared dependency
  graph cannot silently miss an edge;
* config fields (``ctx.config``): recorded too, and checked against the declaration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from warmstart.data.retrieval import RetrievalCollection
from warmstart.retrieval.calibration import PlattScaler
from warmstart.retrieval.encoders import CrossEncoder, DualEncoder, load_encoder
from warmstart.retrieval.mining import Candidates, score_candidates
from warmstart.retrieval.pipeline.presets import PipelineConfig

INPUTS_FILE = "inputs.json"
INPUTS_FORMAT = 1
DATA_FILES = {
    "corpus": "corpus.jsonl",
    "queries": "queries.jsonl",
    "unlabeled": "unlabeled_queries.jsonl",
}
"""Dataset parts -> the BEIR file they come from (``qrels/<split>`` -> ``qrels/<split>.tsv``)."""
MINING_FIELDS = "mining"
"""The sub-config whose fields are declared one by one (``mining.top_k``); others as a whole."""


def data_file(part: str) -> str:
    """The BEIR file a dataset part is read from."""
    return DATA_FILES.get(part, f"{part}.tsv")


def _digest(items: Iterator[str]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode())
        h.update(b"\x00")
    return "sha256:" + h.hexdigest()


def data_fingerprint(collection: RetrievalCollection, part: str) -> str:
    """Content fingerprint of one dataset part (independent of file layout and line order of
    the id-keyed files; the corpus order matters: it defines the index rows)."""
    if part == "corpus":
        return _digest(
            x
            for d, t, b in zip(collection.doc_ids, collection.titles, collection.texts, strict=True)
            for x in (d, t, b)
        )
    if part in ("queries", "unlabeled"):
        table = collection.queries if part == "queries" else collection.unlabeled_queries
        return _digest(x for q in sorted(table) for x in (q, table[q]))
    if part.startswith("qrels/"):
        split = part.split("/", 1)[1]
        qrels = collection.qrels.get(split, {})
        return _digest(f"{q}\t{d}\t{g}" for q in sorted(qrels) for d, g in sorted(qrels[q].items()))
    raise ValueError(f"unknown dataset part {part!r}")


@dataclass
class StepRecord:
    """What one running step read: dataset parts, other steps' artifacts, config fields."""

    step: str
    allowed_reads: frozenset[str]
    data: set[str] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)


class _QrelsView(Mapping[str, dict[str, dict[str, int]]]):
    def __init__(self, qrels: Mapping[str, dict[str, dict[str, int]]], record: StepRecord) -> None:
        self._qrels, self._record = qrels, record

    def __getitem__(self, split: str) -> dict[str, dict[str, int]]:
        self._record.data.add(f"qrels/{split}")
        return self._qrels[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self._qrels)

    def __len__(self) -> int:
        return len(self._qrels)


class RecordingCollection:
    """A read-only view of a ``RetrievalCollection`` noting which dataset parts are read."""

    def __init__(self, collection: RetrievalCollection, record: StepRecord) -> None:
        self._c, self._record = collection, record

    def _corpus(self) -> RetrievalCollection:
        self._record.data.add("corpus")
        return self._c

    @property
    def doc_ids(self) -> list[str]:
        return self._corpus().doc_ids

    @property
    def titles(self) -> list[str]:
        return self._corpus().titles

    @property
    def texts(self) -> list[str]:
        return self._corpus().texts

    def __len__(self) -> int:
        return len(self._corpus())

    def passages(self) -> list[str]:
        return self._corpus().passages()

    @property
    def queries(self) -> dict[str, str]:
        self._record.data.add("queries")
        return self._c.queries

    @property
    def unlabeled_queries(self) -> dict[str, str]:
        self._record.data.add("unlabeled")
        return self._c.unlabeled_queries

    @property
    def qrels(self) -> Mapping[str, dict[str, dict[str, int]]]:
        return _QrelsView(self._c.qrels, self._record)

    def split_queries(self, split: str) -> dict[str, str]:
        self.qrels[split]
        self._record.data.add("queries")
        return self._c.split_queries(split)


class _RecordingFields:
    """Attribute access on a (sub-)config, recorded as dotted field paths."""

    def __init__(self, config: Any, record: StepRecord, prefix: str = "") -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_record", record)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._config, name)
        if name in getattr(self._config, "__dataclass_fields__", {}):
            path = self._prefix + name
            if path == MINING_FIELDS:
                return _RecordingFields(value, self._record, path + ".")
            self._record.fields.add(path)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the pipeline config is read-only inside a step ({name})")


@dataclass
class PipelineContext:
    """Inputs shared by every step (see the module docstring for what is recorded)."""

    collection: RetrievalCollection
    backbone_path: Path
    workdir: Path
    config: PipelineConfig
    log: Callable[[str], None] = print
    embedding_cache: Path | None = None
    """Corpus-embedding cache folder (``encoding.encode_corpus_cached``); None: ``workdir/cache``.
    The CLI passes the cache it shares with ``retrieval index`` and ``evaluate``."""
    _passages: list[str] = field(init=False, repr=False)
    _doc_row: dict[str, int] = field(init=False, repr=False)
    _record: StepRecord | None = field(init=False, repr=False, default=None)
    _fingerprints: dict[str, str] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._passages = self.collection.passages()
        self._doc_row = {d: i for i, d in enumerate(self.collection.doc_ids)}
        self._record = None
        self._fingerprints = {}

    @property
    def passages(self) -> list[str]:
        """Corpus passages as the encoders read them (``retrieval.text.passage_text``)."""
        if self._record is not None:
            self._record.data.add("corpus")
        return self._passages

    @property
    def doc_row(self) -> dict[str, int]:
        """Document id -> corpus row."""
        if self._record is not None:
            self._record.data.add("corpus")
        return self._doc_row

    @property
    def cache_dir(self) -> Path:
        return self.embedding_cache if self.embedding_cache is not None else self.workdir / "cache"

    def fingerprint(self, part: str) -> str:
        """Content fingerprint of a dataset part of this context's collection (cached)."""
        if part not in self._fingerprints:
            self._fingerprints[part] = data_fingerprint(self.collection, part)
        return self._fingerprints[part]

    def artifact(self, step: str, *parts: str) -> Path:
        """``workdir/step/parts...``; inside a running step, reading another step's artifact
        must be declared (``steps.pipeline_step(reads=...)``), else RuntimeError."""
        path = self.workdir.joinpath(step, *parts)
        record = self._record
        if record is not None and step != record.step:
            key = f"{step}/{parts[0]}" if parts else step
            if key not in record.allowed_reads:
                raise RuntimeError(
                    f"step {record.step!r} reads {key}, which it does not declare "
                    f"(declared: {sorted(record.allowed_reads)})"
                )
            record.reads.add(key)
        return path

    @contextmanager
    def recording(self, step: str, allowed_reads: frozenset[str]) -> Iterator[StepRecord]:
        """Run a step body with its reads recorded (the config and collection seen through
        recording views; restored afterwards)."""
        record = StepRecord(step, allowed_reads)
        config, collection = self.config, self.collection
        self._record = record
        self.config = _RecordingFields(config, record)  # type: ignore[assignment]
        self.collection = RecordingCollection(collection, record)  # type: ignore[assignment]
        try:
            yield record
        finally:
            self.config, self.collection, self._record = config, collection, None


def step_done(folder: Path) -> dict[str, Any] | None:
    """A finished step's metrics (its ``done.json``), or None."""
    done = folder / "done.json"
    return json.loads(done.read_text()) if done.is_file() else None


def read_inputs(folder: Path) -> dict[str, Any] | None:
    """The ``inputs.json`` a step finished with (None: finished before it existed)."""
    path = folder / INPUTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def finish_step(
    ctx: PipelineContext, folder: Path, metrics: dict[str, Any], config: Any, record: StepRecord
) -> dict[str, Any]:
    """Write config.json, inputs.json (what the step read, with data fingerprints) and
    metrics.json, and done.json last."""
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {
        "format": INPUTS_FORMAT,
        "data": {data_file(p): ctx.fingerprint(p) for p in sorted(record.data)},
        "reads": sorted(record.reads),
        "fields": sorted(record.fields),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (folder / INPUTS_FILE).write_text(json.dumps(inputs, indent=2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (folder / "done.json").write_text(json.dumps(metrics))
    return metrics


def save_candidates(path: Path, c: Candidates) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"rows": torch.from_numpy(c.rows), "scores": torch.from_numpy(c.scores)}
    save_file(tensors, str(path), metadata={"query_ids": json.dumps(c.query_ids)})


def load_candidates(path: Path, queries: dict[str, str]) -> Candidates:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        ids = json.loads(f.metadata()["query_ids"])
    t = load_file(str(path))
    return Candidates(ids, [queries[q] for q in ids], t["rows"].numpy(), t["scores"].numpy())


def scored_blocks(
    ctx: PipelineContext,
    folder: Path,
    model: CrossEncoder,
    tokenizer: PreTrainedTokenizerBase,
    c: Candidates,
    block: int = 50,
) -> np.ndarray:
    """CE logits (M, k) computed ``block`` queries at a time, each block cached in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for start in range(0, len(c.query_ids), block):
        path = folder / f"block-{start:06d}.safetensors"
        if path.is_file():
            out.append(load_file(str(path))["logits"].numpy())
            continue
        part = Candidates(
            c.query_ids[start : start + block],
            c.queries[start : start + block],
            c.rows[start : start + block],
            c.scores[start : start + block],
        )
        logits = score_candidates(
            model,
            tokenizer,
            part,
            ctx.passages,
            batch_size=ctx.config.score_batch_size,
            desc=f"CE {folder.name} {start}/{len(c.query_ids)}",
        )
        save_file({"logits": torch.from_numpy(logits)}, str(path))
        out.append(logits)
    return np.concatenate(out) if out else np.zeros((0, c.rows.shape[1]), dtype=np.float32)


def load_dual(ctx: PipelineContext, name: str) -> tuple[DualEncoder, PreTrainedTokenizerBase]:
    model, tokenizer = load_encoder(ctx.artifact(name, "model"))
    assert isinstance(model, DualEncoder)
    return model, tokenizer


def load_cross(ctx: PipelineContext) -> tuple[CrossEncoder, PreTrainedTokenizerBase]:
    model, tokenizer = load_encoder(ctx.artifact("ce", "model"))
    assert isinstance(model, CrossEncoder)
    return model, tokenizer


def load_scaler(ctx: PipelineContext) -> PlattScaler:
    raw = json.loads(ctx.artifact("mine", "calibration.json").read_text())
    return PlattScaler(raw["a"], raw["b"])
