"""The SciFact example of EDL-Dist (Liu et al., CCPE 2022, arXiv 2207.06667): distil the 6-layer
MiniLM cross-encoder (the teacher, trained by the RocketQA cross-encoder loop and checked against
BM25 on dev queries) into a 2-layer student, and rerank BM25's top 50 of the SciFact test queries
with each model.

Candidates come from BM25 (seconds on CPU; a dense retriever would first need a ~40-minute corpus
encode on the shared 2 cores). Every model is saved in the cross-encoder folder format of
``retrieval.encoders.save_encoder``, the ``cross/`` folder a retriever loads, and reranks through
``Retriever.rerank_many`` / ``Retriever.rerank``: the code that serves it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from warmstart.data.retrieval import RetrievalCollection
from warmstart.distill.data import GroupDataset
from warmstart.metrics import retrieval_per_query
from warmstart.retrieval.bm25 import BM25Retriever
from warmstart.retrieval.encoders import (
    CrossEncoder,
    CrossEncoderConfig,
    DualEncoder,
    DualEncoderConfig,
    load_backbone,
    load_encoder,
    save_encoder,
)
from warmstart.retrieval.evaluation import exact_index, run_from_rows
from warmstart.retrieval.inference import Document, Hit, Retriever
from warmstart.retrieval.mining import (
    Candidates,
    labelled_examples,
    positive_rows,
    undenoised_negatives,
)
from warmstart.retrieval.pipeline import truncate_layers
from warmstart.retrieval.training import (
    TrainConfig,
    TrainExample,
    load_checkpoint,
    sample_negatives,
    train_cross_encoder,
)

PICKS = ("first", "spread")
INITS = ("backbone", "teacher")


@dataclass(frozen=True)
class ExampleConfig:
    """The SciFact distillation example.

    Attributes:
        depth: BM25 candidates per query (negatives are drawn from them; test reranks them).
        max_length: tokens of a (query, passage) pair, for teacher and student.
        teacher_epochs: passes of the teacher over its train examples (listwise 1 + 7 BM25
            negatives redrawn every step, 4 queries = 32 pairs a step, lr 1e-4, 10 % warm-up: the
            RocketQA ``ce`` step's recipe; 3 epochs of SciFact's train queries minus the dev split
            = 618 steps, as there). One epoch (225 steps) of the [CLS] teacher left the loss at the
            uniform ln 8 = 2.079 (2.083 -> 2.041) and reranked worse than BM25.
        teacher_lr: the teacher's peak learning rate.
        teacher_pooling: what the teacher's head reads: ``mean`` of all token states (the
            all-MiniLM-L6-v2 checkpoint was trained with mean pooling, so its [CLS] state carries
            little until the last layers: head_input_spread 0.80 mean vs 0.50 [CLS] at 6 layers,
            docs/retrieval.md; the [CLS] teacher had not left ln 8 after 225 steps).
        teacher_bf16: bf16 autocast while training the teacher (about 2x faster on an AVX-512 BF16
            CPU), off by default: both teachers trained with it here (1 epoch [CLS], 3 epochs mean
            pooling) rank BM25's candidates worse than BM25 even on their own train queries (dev
            nDCG@10 0.1296 vs BM25 0.7211), while the same recipe in fp32 gave 0.7756. bf16 stays
            an inference-only speed-up.
        dev_fraction: train queries held out to check the teacher against BM25 before any
            student compute is spent on it (the ``ce`` step's 10 %).
        student_layers: MiniLM layers the student keeps.
        student_pick: which of the backbone's layers: ``first`` (layers 0..n-1) or ``spread``
            (every k-th, ending at the last: layers 2 and 5 of 6 for 2), DistilBERT-style.
        student_init: ``backbone`` (all-MiniLM-L6-v2's layers and a fresh head) or ``teacher``
            (the trained teacher's picked layers and its head; the same init for every KD mode).
        student_pooling: ``mean`` (all-MiniLM-L6-v2's [CLS] state is constant for every pair
            after its first layers, see docs/retrieval.md).
        group_negatives: negatives per student sample (a sample = 1 positive + these).
    """

    depth: int = 50
    max_length: int = 128
    teacher_epochs: int = 3
    teacher_lr: float = 1e-4
    teacher_pooling: str = "mean"
    teacher_bf16: bool = False
    dev_fraction: float = 0.1
    student_layers: int = 2
    student_pick: str = "first"
    student_init: str = "backbone"
    student_pooling: str = "mean"
    group_negatives: int = 3

    def __post_init__(self) -> None:
        for name in ("depth", "max_length", "teacher_epochs", "student_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        for name, allowed in (("student_pick", PICKS), ("student_init", INITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r}: allowed values are {', '.join(allowed)}"
                )
        if self.group_negatives < 1:
            raise ValueError(f"group_negatives={self.group_negatives}: must be >= 1")
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction={self.dev_fraction}: must be in (0, 1)")


def bm25_candidates(
    collection: RetrievalCollection, queries: Mapping[str, str], k: int
) -> Candidates:
    """BM25's top ``k`` corpus rows of each query (ids sorted)."""
    ids = sorted(queries)
    texts = [queries[q] for q in ids]
    scores, rows = BM25Retriever().fit(collection.passages()).search(texts, k)
    return Candidates(ids, texts, rows, scores)


def train_examples(
    collection: RetrievalCollection, k: int, query_ids: Sequence[str] | None = None
) -> list[TrainExample]:
    """One example per labelled train (query, positive), negatives = BM25's top-k non-positives
    (of the train queries ``query_ids``, default all)."""
    doc_row = {d: i for i, d in enumerate(collection.doc_ids)}
    qrels = collection.qrels["train"]
    ids = sorted(qrels) if query_ids is None else sorted(query_ids)
    positives = positive_rows(ids, qrels, doc_row)
    c = bm25_candidates(collection, {q: collection.queries[q] for q in ids}, k)
    pool = undenoised_negatives(c, positives)
    return [e for e in labelled_examples(collection.queries, positives, pool) if e.negatives]


def teacher_split(
    collection: RetrievalCollection, fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(teacher-train, dev) ids of the labelled train queries; dev = a random ``fraction``."""
    ids = sorted(collection.qrels["train"])
    rng = np.random.default_rng([seed, 11])
    dev = set(rng.choice(ids, size=max(1, round(fraction * len(ids))), replace=False).tolist())
    return [q for q in ids if q not in dev], sorted(dev)


def groups_from_examples(
    examples: Sequence[TrainExample],
    passages: Sequence[str],
    n_negatives: int,
    seed: int,
    draws: int = 1,
) -> GroupDataset:
    """Each example's positive plus ``n_negatives`` negatives of its pool, drawn once; with
    ``draws`` > 1, that many samples per example, each with its own draw (more distinct pairs for
    the same examples; ``draws=1`` gives the same samples as before)."""
    if draws < 1:
        raise ValueError(f"draws={draws}: must be >= 1")
    rng = np.random.default_rng([seed, 5])
    queries, groups = [], []
    for _ in range(draws):
        for ex in examples:
            rows = [ex.positive, *sample_negatives(ex, n_negatives, len(passages), rng)]
            queries.append(ex.query)
            groups.append(tuple(passages[r] for r in rows))
    return GroupDataset(tuple(queries), tuple(groups))


def student_dataset(
    collection: RetrievalCollection,
    config: ExampleConfig,
    seed: int = 0,
    query_ids: Sequence[str] | None = None,
    draws: int = 1,
) -> GroupDataset:
    """The distillation samples: each train example's positive plus ``group_negatives`` BM25
    negatives (drawn once from ``seed``; ``draws`` samples per example, each its own draw), of
    the train queries ``query_ids`` (default all)."""
    examples = train_examples(collection, config.depth, query_ids)
    passages = collection.passages()
    return groups_from_examples(examples, passages, config.group_negatives, seed, draws)


def pseudo_query(title: str, text: str) -> str:
    """A corpus passage's pseudo-query: its title, or its body's first sentence when untitled."""
    return title.strip() or text.strip().split(". ")[0]


PSEUDO_GROUPS = ("source", "neighbours")


def pseudo_query_dataset(
    collection: RetrievalCollection,
    n: int,
    n_negatives: int,
    seed: int = 0,
    depth: int = 50,
    group: str = "source",
) -> GroupDataset:
    """``n`` unlabelled samples built from the corpus alone (no query or label of any split): a
    random passage's :func:`pseudo_query` as the query and, as its group of ``1 + n_negatives``,
    ``group="source"``: the passage itself and ``n_negatives`` of BM25's top ``depth`` other
    passages for that query; ``"neighbours"``: BM25's top ``1 + n_negatives`` other passages,
    without the source (no passage of the group is known to match, so only a teacher can say
    which does). Column 0 is no label, so the samples are marked unlabelled: only a teacher's
    scores train a student on them (the augmentation that needs a teacher labelling data on the
    fly, which offline KD rules out)."""
    if group not in PSEUDO_GROUPS:
        raise ValueError(f"group={group!r}: allowed values are {', '.join(PSEUDO_GROUPS)}")
    if not 1 <= n <= len(collection):
        raise ValueError(f"n={n}: must be in [1, {len(collection)}] (one per corpus passage)")
    rng = np.random.default_rng([seed, 17])
    rows = sorted(int(r) for r in rng.choice(len(collection), size=n, replace=False))
    queries = {f"{r:08d}": pseudo_query(collection.titles[r], collection.texts[r]) for r in rows}
    found = bm25_candidates(collection, queries, depth + 1)
    passages = collection.passages()
    texts, groups = [], []
    for source, text, ranked in zip(rows, found.queries, found.rows, strict=True):
        pool = [int(r) for r in ranked if int(r) != source][:depth]
        if group == "neighbours":
            chosen = pool[: n_negatives + 1]
        else:
            picks = rng.choice(pool, size=n_negatives, replace=len(pool) < n_negatives)
            chosen = [source, *(int(p) for p in picks)]
        texts.append(text)
        groups.append(tuple(passages[r] for r in chosen))
    return GroupDataset(tuple(texts), tuple(groups)).unlabelled()


def fresh_cross(
    backbone_path: Path, layers: int | None, config: CrossEncoderConfig
) -> tuple[CrossEncoder, PreTrainedTokenizerBase]:
    """A cross-encoder on the first ``layers`` layers of a pre-trained backbone."""
    backbone, tokenizer = load_backbone(backbone_path)
    return CrossEncoder(truncate_layers(backbone, layers), config), tokenizer


def picked_layers(total: int, n: int, pick: str) -> list[int]:
    """Indices of the ``n`` of ``total`` layers a student keeps: the ``first`` n, or ``spread``
    (one every total/n layers, ending at the last; 2 of 6 -> [2, 5])."""
    if not 1 <= n <= total:
        raise ValueError(f"student_layers={n}: the backbone has {total} layers")
    if pick == "first":
        return list(range(n))
    if pick == "spread":
        return [round((i + 1) * total / n) - 1 for i in range(n)]
    raise ValueError(f"student_pick={pick!r}: allowed values are {', '.join(PICKS)}")


def keep_layers(backbone: nn.Module, n: int, pick: str) -> nn.Module:
    """Keep ``picked_layers`` of a BERT-style backbone's layer stack (in place)."""
    encoder: Any = getattr(backbone, "encoder", None)
    if encoder is None:
        raise ValueError("keep_layers: the backbone has no layer stack")
    layers = list(encoder.layer)
    encoder.layer = nn.ModuleList([layers[i] for i in picked_layers(len(layers), n, pick)])
    backbone.config.num_hidden_layers = n  # type: ignore[union-attr]
    return backbone


def fresh_student(
    backbone_path: Path, config: ExampleConfig, teacher_dir: Path | None = None
) -> tuple[CrossEncoder, PreTrainedTokenizerBase]:
    """The untrained student: ``config.student_layers`` layers (``student_pick``) of the
    pre-trained backbone with a fresh head (the caller seeds it), or, with ``student_init =
    "teacher"``, of the trained teacher in ``teacher_dir`` with the teacher's head (its pooling)."""
    cross = CrossEncoderConfig(max_length=config.max_length, pooling=config.student_pooling)
    if config.student_init == "backbone":
        backbone, tokenizer = load_backbone(backbone_path)
        model = CrossEncoder(
            keep_layers(backbone, config.student_layers, config.student_pick), cross
        )
        return model, tokenizer
    if teacher_dir is None:
        raise ValueError("student_init='teacher' needs the teacher's folder")
    teacher, tokenizer = load_encoder(teacher_dir)
    if not isinstance(teacher, CrossEncoder):
        raise ValueError(f"{teacher_dir}: not a cross-encoder folder")
    keep_layers(teacher.backbone, config.student_layers, config.student_pick)
    teacher.config = replace(teacher.config, max_length=config.max_length)
    return teacher.train(), tokenizer


def teacher_train_config(config: ExampleConfig, seed: int = 0) -> TrainConfig:
    """The teacher's optimisation: the RocketQA ``ce`` step's listwise recipe."""
    return TrainConfig(
        epochs=config.teacher_epochs,
        batch_size=4,  # queries a step: 4 x (1 + 7) = 32 pairs
        lr=config.teacher_lr,
        negatives_per_query=7,
        cross_loss="listwise",
        checkpoint_every=25,
        seed=seed,
    )


def _fresh_teacher(
    backbone_path: Path, config: ExampleConfig
) -> tuple[CrossEncoder, PreTrainedTokenizerBase]:
    cross = CrossEncoderConfig(max_length=config.max_length, pooling=config.teacher_pooling)
    return fresh_cross(backbone_path, None, cross)


def train_teacher(
    collection: RetrievalCollection,
    backbone_path: Path,
    folder: Path,
    config: ExampleConfig,
    seed: int = 0,
    log: Callable[[str], None] = print,
    from_checkpoint: bool = False,
    dev_depth: int | None = None,
) -> Path:
    """The 6-layer teacher, trained once (``config.teacher_bf16``, the calling thread's threads) on
    the train queries minus a dev split, checked on the dev queries against BM25's order
    (``teacher.json`` -> ``dev``), and cached in ``folder``; a killed run resumes from its last
    checkpoint (``folder/train``). ``from_checkpoint``: publish that checkpoint as it is (a
    training stopped early on a busy machine; ``teacher.json`` records its step). ``dev_depth``:
    BM25 candidates of the dev check (default ``config.depth``)."""
    if (folder / "encoder.json").is_file():
        log(f"teacher: cached in {folder}")
        return folder
    train_ids, dev_ids = teacher_split(collection, config.dev_fraction, seed)
    train = teacher_train_config(config, seed)
    model, tokenizer = _fresh_teacher(backbone_path, config)
    t0 = time.perf_counter()
    if from_checkpoint:
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=train.lr)
        state = load_checkpoint(folder / "train" / "checkpoint", model, opt)
        if state.step == 0:
            raise FileNotFoundError(f"{folder / 'train' / 'checkpoint'}: no checkpoint")
        log(f"teacher: publishing the checkpoint of step {state.step}")
    else:
        examples = train_examples(collection, config.depth, train_ids)
        steps = config.teacher_epochs * (len(examples) // 4)
        log(
            f"teacher: {len(examples)} examples of {len(train_ids)} train queries, {steps} "
            f"steps, into {folder} ({len(dev_ids)} dev queries held out)"
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.teacher_bf16):
            state = train_cross_encoder(
                model, tokenizer, examples, collection.passages(), train, workdir=folder / "train"
            )
    seconds = time.perf_counter() - t0
    tenth = max(1, len(state.losses) // 10)
    losses = (float(np.mean(state.losses[:tenth])), float(np.mean(state.losses[-tenth:])))
    log(f"teacher: {state.step} steps, loss {losses[0]:.3f} -> {losses[1]:.3f} (first/last tenth)")
    staging = folder / "model"
    save_encoder(model, tokenizer, staging)
    depth = dev_depth or config.depth
    dev = {"depth": depth, **dev_check(staging, collection, dev_ids, depth)}
    log(f"teacher: dev ({len(dev_ids)} queries), BM25 top {depth}: {json.dumps(dev)}")
    meta = {
        "example": asdict(config),
        "train": asdict(train),
        "steps": state.step,
        "train_seconds_this_run": seconds,
        "torch_threads": torch.get_num_threads(),
        "loss_first_tenth": losses[0],
        "loss_last_tenth": losses[1],
        "dev": dev,
    }
    for path in staging.iterdir():  # the folder is a teacher only once it is checked
        path.replace(folder / path.name)
    staging.rmdir()
    (folder / "teacher.json").write_text(json.dumps(meta, indent=2))
    return folder


def dev_check(
    cross_dir: Path, collection: RetrievalCollection, dev_ids: Sequence[str], depth: int
) -> dict[str, float]:
    """nDCG@10 on the dev queries of BM25's top ``depth`` in BM25's order and in the order of the
    cross-encoder in ``cross_dir`` (a teacher must beat its first stage)."""
    candidates = bm25_candidates(collection, {q: collection.queries[q] for q in dev_ids}, depth)
    qrels = {q: collection.qrels["train"][q] for q in dev_ids}
    first = run_from_rows(candidates.query_ids, candidates.rows, collection.doc_ids)
    bm25 = mean_ndcg(retrieval_per_query(first, qrels))
    t0 = time.perf_counter()
    ce = mean_ndcg(rerank_per_query(reranker(cross_dir, collection), collection, candidates, qrels))
    return {"bm25": bm25, "teacher": ce, "rerank_seconds": time.perf_counter() - t0}


def reranker(cross_dir: Path, collection: RetrievalCollection, batch_size: int = 64) -> Retriever:
    """A :class:`Retriever` that serves ``cross_dir`` (a cross-encoder folder) for ``rerank``.

    Its query tower and index are placeholders (candidates come from BM25 here): only the rerank
    path is used, the same code that serves a retriever folder's ``cross/``.
    """
    cross, tokenizer = load_encoder(cross_dir)
    if not isinstance(cross, CrossEncoder):
        raise ValueError(f"{cross_dir}: not a cross-encoder folder")
    backbone: object = cross.backbone
    dual = DualEncoder(backbone, DualEncoderConfig(towers="shared"))  # type: ignore[arg-type]
    docs = [
        Document(d, t, x)
        for d, t, x in zip(collection.doc_ids, collection.titles, collection.texts, strict=True)
    ]
    index = exact_index(np.zeros((len(docs), dual.dim), dtype=np.float32))
    return Retriever(dual, tokenizer, index, docs, (cross, tokenizer), batch_size)


def rerank_per_query(
    model: Retriever,
    collection: RetrievalCollection,
    candidates: Candidates,
    qrels: Mapping[str, Mapping[str, int]] | None = None,
    bf16: bool = True,
    progress: bool = True,
) -> dict[str, tuple[float, float, float]]:
    """Per-query (nDCG@10, MRR@10, Recall@100) of ``candidates`` reordered by
    ``model.rerank_many`` (bf16 autocast when ``bf16``: 3x faster on this CPU), against ``qrels``
    (default: the test split's)."""
    hits = [[corpus_hit(collection, int(r)) for r in row] for row in candidates.rows]
    reranked: list[list[Hit]] = []
    chunk = 10  # queries per rerank_many call: one progress tick
    bar = tqdm(total=len(hits), desc="rerank", unit="query", disable=not progress, mininterval=5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(hits), chunk):
            reranked.extend(
                model.rerank_many(candidates.queries[i : i + chunk], hits[i : i + chunk])
            )
            bar.update(len(hits[i : i + chunk]))
    bar.close()
    where = {d: i for i, d in enumerate(collection.doc_ids)}
    rows = [[where[h.doc_id] for h in hit_list] for hit_list in reranked]
    run = run_from_rows(candidates.query_ids, np.asarray(rows), collection.doc_ids)
    return retrieval_per_query(run, collection.qrels["test"] if qrels is None else qrels)


def corpus_hit(collection: RetrievalCollection, row: int) -> Hit:
    return Hit(collection.doc_ids[row], 0.0, collection.titles[row], collection.texts[row])


def mean_ndcg(per_query: Mapping[str, tuple[float, float, float]]) -> float:
    return float(np.mean([v[0] for v in per_query.values()]))


def paired_ndcg_diffs(
    a: Mapping[str, tuple[float, float, float]], b: Mapping[str, tuple[float, float, float]]
) -> np.ndarray:
    """(Q,) per-query nDCG@10 differences a - b over the queries both scored (sorted ids)."""
    ids: Sequence[str] = sorted(set(a) & set(b))
    return np.array([a[q][0] - b[q][0] for q in ids])


def weights_digest(folder: Path) -> str:
    """sha256 of a saved model folder's ``model.safetensors`` (two students with the same digest
    have the same weights, so the same rerank scores: one evaluation serves both)."""
    digest = hashlib.sha256()
    with (Path(folder) / "model.safetensors").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
