"""The one place that turns retrieval text into model input, for training and serving alike.

``passage_text`` is how a corpus entry becomes the passage the towers and the cross-encoder read
(title, a space, then the body); ``tokenize`` pads and truncates texts or (query, passage) pairs.
Training (``retrieval.training``, ``retrieval.encoding``), the pipeline and the serving object
(``retrieval.inference``) all call these two, so a changed title join or truncation rule cannot
make serving see other inputs than training did. The maximum lengths live in the model configs
(``DualEncoderConfig.query_max_length`` / ``passage_max_length``, ``CrossEncoderConfig.max_length``)
and are read by ``encoding.encode_texts`` / ``encoding.score_pairs``, which both sides call.

A fast (Rust) tokenizer sets its padding and truncation state on every call, so two threads
calling the same tokenizer at once can fail ("Already borrowed"); ``tokenize`` holds a lock per
tokenizer object for the call (uncontended in training, a few microseconds).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

_LOCKS: weakref.WeakKeyDictionary[object, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def passage_text(title: str, text: str) -> str:
    """Passage input as the towers and the cross-encoder see it: title then body."""
    return f"{title} {text}".strip()


def _lock(tokenizer: object) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(tokenizer)
        if lock is None:
            lock = _LOCKS[tokenizer] = threading.Lock()
        return lock


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    pairs: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad/truncate texts (or text pairs, only the second truncated) into (B, T) tensors.

    A pair whose first text alone does not fit ``max_length`` leaves nothing of the second to
    cut, which only-second truncation refuses; such a batch is cut longest-first instead (both
    texts shortened), so a long query is scored rather than failing the call.
    """
    truncation: bool | str = "only_second" if pairs is not None else True
    with _lock(tokenizer):
        try:
            out = tokenizer(
                texts,
                pairs,
                padding=True,
                truncation=truncation,
                max_length=max_length,
                return_tensors="pt",
            )
        except Exception as err:  # the fast tokenizer raises a bare Exception here
            if pairs is None or "truncat" not in str(err).lower():
                raise
            out = tokenizer(
                texts,
                pairs,
                padding=True,
                truncation="longest_first",
                max_length=max_length,
                return_tensors="pt",
            )
    return dict(out)
