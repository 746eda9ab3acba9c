"""Fast batch inference for the RocketQA encoders (Qu et al., NAACL 2021, arXiv 2010.08191).

Texts are sorted by length so each batch pads little, run under ``torch.inference_mode`` (optionally
in bf16 autocast, which only pays off on CPUs with native bf16 units), and returned in input order.
Corpus embeddings are cached on disk under a key made of the passage tower's weights, the encoding
settings and the corpus contents, so a model that did not change its passage tower never re-encodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from warmstart.retrieval.encoders import CrossEncoder, DualEncoder
from warmstart.retrieval.text import tokenize


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU advertises native bf16 arithmetic (AVX-512 BF16 or AMX-BF16).

    Only there does bf16 autocast speed up inference (MiniLM ~2-3.5x on this project's AVX-512
    BF16 box); elsewhere it is emulated and slower. Unreadable cpuinfo (non-Linux) counts as no.
    """
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Positions grouped into batches of similar length, longest first."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size}: must be > 0")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _run_batches(
    fn: Callable[[list[int]], torch.Tensor],
    lengths: Sequence[int],
    batch_size: int,
    bf16: bool,
    desc: str | None,
) -> torch.Tensor:
    outputs: list[torch.Tensor] = []
    positions: list[int] = []
    batches = list(length_sorted_batches(lengths, batch_size))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in tqdm(batches, desc=desc, disable=desc is None, leave=False):
            outputs.append(fn(batch).float())
            positions.extend(batch)
    out = torch.cat(outputs) if outputs else torch.zeros(0)
    result = torch.empty_like(out)
    result[torch.tensor(positions, dtype=torch.long)] = out
    return result


def encode_texts(
    model: DualEncoder,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    side: str,
    batch_size: int = 32,
    bf16: bool = False,
    desc: str | None = None,
) -> np.ndarray:
    """Encode queries or passages in length-sorted batches.

    Args:
        side: ``query`` or ``passage`` (chooses the tower and the max length).

    Returns:
        (N, H) float32 vectors in the order of ``texts``.
    """
    if side not in ("query", "passage"):
        raise ValueError(f"side={side!r}: allowed values are query, passage")
    if not texts:
        return np.zeros((0, model.dim), dtype=np.float32)
    is_query = side == "query"
    max_length = model.config.query_max_length if is_query else model.config.passage_max_length
    encode = model.encode_queries if is_query else model.encode_passages
    text_list = list(texts)

    def run(batch: list[int]) -> torch.Tensor:
        return encode(tokenize(tokenizer, [text_list[i] for i in batch], max_length))

    lengths = [len(t) for t in text_list]  # characters track token counts well enough to sort
    was_training = model.training
    model.eval()
    try:
        return _run_batches(run, lengths, batch_size, bf16, desc).numpy()
    finally:
        model.train(was_training)


def score_pairs(
    model: CrossEncoder,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    passages: Sequence[str],
    *,
    batch_size: int = 32,
    bf16: bool = False,
    desc: str | None = None,
    max_length: int | None = None,
) -> np.ndarray:
    """Cross-encoder logits for aligned (query, passage) pairs: (N,) float32.

    ``max_length``: tokens kept per pair (None: the model's ``config.max_length``, what it was
    trained with); a shorter one is a speed/quality trade-off the caller measures.
    """
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries but {len(passages)} passages: must be aligned")
    if not queries:
        return np.zeros(0, dtype=np.float32)
    if max_length is not None and (isinstance(max_length, bool) or max_length < 8):
        raise ValueError(f"max_length={max_length!r}: must be None or an int >= 8")
    q, p = list(queries), list(passages)
    length = model.config.max_length if max_length is None else max_length

    def run(batch: list[int]) -> torch.Tensor:
        inputs = tokenize(tokenizer, [q[i] for i in batch], length, [p[i] for i in batch])
        return model(inputs)

    lengths = [len(a) + len(b) for a, b in zip(q, p, strict=True)]
    was_training = model.training
    model.eval()
    try:
        return _run_batches(run, lengths, batch_size, bf16, desc).numpy()
    finally:
        model.train(was_training)


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 over parameter names, shapes and bytes (buffers included)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    """SHA-256 over the texts (order matters)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def corpus_cache_key(model: DualEncoder, passages: Sequence[str], bf16: bool = False) -> str:
    """Key of a corpus embedding matrix: passage tower weights + encoding settings + corpus.
    bf16 vectors differ slightly from fp32 ones, so they get their own key (the fp32 key is the
    one written before bf16 was part of it)."""
    cfg = model.config
    settings = f"{cfg.pooling}|{cfg.similarity}|{cfg.passage_max_length}" + (
        "|bf16" if bf16 else ""
    )
    parts = (module_fingerprint(model.passage_tower), settings, texts_fingerprint(passages))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def encode_corpus_cached(
    model: DualEncoder,
    tokenizer: PreTrainedTokenizerBase,
    passages: Sequence[str],
    cache_dir: Path | None,
    *,
    batch_size: int = 32,
    bf16: bool = False,
    desc: str | None = None,
) -> np.ndarray:
    """Passage embeddings (N, H), read from ``cache_dir`` when the same key was encoded before.

    One cache folder serves every caller (the CLI's ``retrieval train|pipeline|index|evaluate``
    and the demo default to ``~/.cache/warmstart/embeddings``), so a corpus is encoded once per
    passage tower, not once per command."""
    if cache_dir is None:
        return encode_texts(
            model, tokenizer, passages, side="passage", batch_size=batch_size, bf16=bf16, desc=desc
        )
    path = cache_dir / f"corpus-{corpus_cache_key(model, passages, bf16)}.safetensors"
    if path.is_file():
        return load_file(str(path))["embeddings"].numpy()
    vectors = encode_texts(
        model, tokenizer, passages, side="passage", batch_size=batch_size, bf16=bf16, desc=desc
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"embeddings": torch.from_numpy(vectors)}, str(tmp))
    tmp.replace(path)
    return vectors
