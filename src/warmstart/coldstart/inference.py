"""Serving-side ColdNAS API: adapt to a new user's few interactions, then score items.

Implements the inference path of Wu et al., "Modulation Search for User Cold-Start
Recommendation" (ColdNAS, WWW 2023, arXiv 2306.03387): adaptation is a single forward pass of
the hypernetwork, so a user's state is just the modulation parameter vector it produces, which
can be cached (``UserState.to_bytes``) and reused for every later scoring request.

This module imports only the model, structure and artifact modules: no optimiser, trainer or
dataset loader is loaded when serving.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from warmstart.coldstart.artifacts import load_model
from warmstart.coldstart.model import ColdNAS
from warmstart.coldstart.structure import Structure

_MAGIC = b"WSUS"
_VERSION = 1
# magic, version, dtype code, flags, reserved, user, user-vector length, parameter count
_HEADER = struct.Struct("<4sBBBBqII")
_DTYPES: dict[int, np.dtype[Any]] = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
_DTYPE_CODES = {"float32": 0, "float16": 1}


@dataclass(frozen=True)
class UserState:
    """Everything needed to score items for one user after adaptation.

    Attributes:
        user_vec: ``(Du,)`` the user's feature embedding (``Du == 0`` when the model uses none).
        params: ``(P,)`` the user-specific modulation parameters (model layout order).
        user: dense user index the state was adapted for, if known.
    """

    user_vec: np.ndarray
    params: np.ndarray
    user: int | None = None

    def to_bytes(self, dtype: str = "float16") -> bytes:
        """Compact encoding: a 24-byte header then the raw little-endian values.

        Args:
            dtype: ``"float16"`` (half the size, ~1e-3 relative error) or ``"float32"`` (exact).
        """
        if dtype not in _DTYPE_CODES:
            raise ValueError(f"UserState.to_bytes: dtype={dtype!r}, allowed {sorted(_DTYPE_CODES)}")
        code = _DTYPE_CODES[dtype]
        flags = 0 if self.user is None else 1
        header = _HEADER.pack(
            _MAGIC, _VERSION, code, flags, 0, self.user or 0, self.user_vec.size, self.params.size
        )
        payload = np.concatenate([self.user_vec.ravel(), self.params.ravel()]).astype(_DTYPES[code])
        return header + payload.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UserState:
        """Decode :meth:`to_bytes` output; raises ValueError on a malformed buffer."""
        if len(data) < _HEADER.size:
            raise ValueError(f"UserState.from_bytes: {len(data)} bytes is shorter than the header")
        magic, version, code, flags, _, user, n_user, n_params = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION or code not in _DTYPES:
            raise ValueError(
                f"UserState.from_bytes: bad header (magic={magic!r}, version={version}, dtype={code})"
            )
        dtype = _DTYPES[code]
        expected = _HEADER.size + (n_user + n_params) * dtype.itemsize
        if len(data) != expected:
            raise ValueError(f"UserState.from_bytes: expected {expected} bytes, got {len(data)}")
        values = np.frombuffer(data, dtype=dtype, offset=_HEADER.size).astype(np.float32)
        return cls(values[:n_user].copy(), values[n_user:].copy(), int(user) if flags & 1 else None)


class ColdStartRecommender:
    """A trained ColdNAS model behind a small adapt/score API (CPU, no gradients).

    Args:
        model: a fixed-structure ``ColdNAS``.
        config: the model directory's ``config.json`` contents (kept as ``self.config``).
    """

    def __init__(self, model: ColdNAS, config: dict[str, Any] | None = None) -> None:
        if model.searching:
            raise ValueError("ColdStartRecommender: needs a derived model, not the search supernet")
        self.model = model.eval()
        self.config = config or {}
        # Item embeddings do not depend on the user: compute the whole table once, so a request
        # is a gather instead of one EmbeddingBag per feature field.
        with torch.no_grad():
            self._item_vectors = model.item_embedding(torch.arange(self.n_items))  # (N, Di)
            # Same for the user feature table (an EmbeddingBag per field costs ~0.15 ms).
            n_users = model.user_embedding.n_rows if model.use_user_features else 0
            self._user_vectors = model.embed_users(torch.arange(n_users))  # (N_u, Du)
        # Fast path for fc1 when position 0 only shifts/scales its input (no max/min): fc1 is
        # linear, so fc1([e_item, e_user] * m + a) splits into an item term and a per-user
        # constant, and without `mul` the item term is a fixed table computed here once.
        ops0 = set(model.structure.positions[0])
        # (A supernet's gates blend each op with the identity, so it always takes the model path.)
        self._fast_fc1 = ops0 <= {"mul", "add"} and model.gate_logits is None
        fc1 = model.hidden[0]
        assert isinstance(fc1, torch.nn.Linear)
        di = self._item_vectors.shape[1]
        self._w_item = fc1.weight[:, :di].detach()  # (H1, Di)
        self._w_user = fc1.weight[:, di:].detach()  # (H1, Du)
        self._fc1_bias = fc1.bias.detach()  # (H1,)
        with torch.no_grad():
            fixed_items = self._fast_fc1 and "mul" not in ops0
            self._item_fc1 = self._item_vectors @ self._w_item.T if fixed_items else None  # (N, H1)

    @property
    def structure(self) -> Structure:
        return self.model.structure

    @property
    def n_items(self) -> int:
        return self.model.item_embedding.n_rows

    @torch.no_grad()
    def adapt(
        self,
        support_items: Sequence[int] | np.ndarray,
        support_labels: Sequence[float] | np.ndarray,
        user: int | None = None,
    ) -> UserState:
        """Run the adaptation network on one user's support set.

        Args:
            support_items: ``(S,)`` dense item indices the user interacted with.
            support_labels: ``(S,)`` their ratings/labels.
            user: dense user index, for models that embed user features; ``None`` for a user
                unknown to the feature table (its feature embedding is then zero).
        """
        items = torch.as_tensor(np.asarray(support_items, dtype=np.int64))[None]  # (1, S)
        labels = torch.as_tensor(np.asarray(support_labels, dtype=np.float32))[None]  # (1, S)
        if items.shape != labels.shape:
            raise ValueError(f"adapt: {items.shape[1]} support items but {labels.shape[1]} labels")
        self._check_items(items)
        user_vec = self._user_vec(user)  # (1, Du)
        params = self.model.adapt_embedded(
            user_vec,
            items,
            labels,
            torch.ones_like(items, dtype=torch.bool),
            item_vectors=self._item_vectors[items],
        )
        return UserState(user_vec[0].numpy().copy(), params[0].numpy().copy(), user)

    def _user_vec(self, user: int | None) -> torch.Tensor:
        if user is None or not self.model.use_user_features:
            return torch.zeros((1, self.model.user_dim))
        if not 0 <= user < self._user_vectors.shape[0]:
            raise ValueError(
                f"user index must lie in [0, {self._user_vectors.shape[0]}), got {user}"
            )
        return self._user_vectors[user][None]

    def _check_items(self, items: torch.Tensor) -> None:
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= self.n_items):
            raise ValueError(
                f"item indices must lie in [0, {self.n_items}), got [{int(items.min())}, {int(items.max())}]"
            )

    @torch.no_grad()
    def score(
        self, states: UserState | Sequence[UserState], item_ids: Sequence[int] | np.ndarray
    ) -> np.ndarray:
        """Predicted ratings of ``item_ids`` for one or many adapted users.

        Args:
            states: one state, or a list of U states.
            item_ids: ``(I,)`` dense item indices scored for every user.

        Returns:
            ``(I,)`` for a single state, else ``(U, I)`` float32.
        """
        single = isinstance(states, UserState)
        batch = [states] if isinstance(states, UserState) else list(states)
        items = torch.as_tensor(np.asarray(item_ids, dtype=np.int64)).reshape(-1)  # (I,)
        self._check_items(items)
        size = self.model.layout.size
        bad = [
            i
            for i, s in enumerate(batch)
            if s.params.size != size or s.user_vec.size != self.model.user_dim
        ]
        if bad:
            raise ValueError(f"score: states {bad} do not match this model ({size} parameters)")
        params = torch.as_tensor(np.stack([s.params for s in batch]).astype(np.float32))  # (U, P)
        user_vec = torch.as_tensor(
            np.stack([s.user_vec for s in batch]).astype(np.float32)
        )  # (U, Du)
        query = items[None].expand(len(batch), -1)  # (U, I)
        if self._fast_fc1:
            scores = self.model.predict_from_fc1(self._fc1(params, user_vec, items), params, query)
        else:
            vectors = self._item_vectors[items][None].expand(len(batch), -1, -1)  # (U, I, Di)
            scores = self.model.predict_embedded(params, user_vec, query, item_vectors=vectors)
        out = scores.numpy().astype(np.float32)
        return out[0] if single else out

    def _fc1(
        self, params: torch.Tensor, user_vec: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """fc1's pre-activation ``(U, I, H1)`` when position 0 has only ``mul``/``add``.

        Same value as ``fc1(modulate_0([e_item, e_user]))``, computed as an item term plus a
        per-user constant (``W_u (e_user * m_u + a_u) + W_i a_i + b``), so the user half of the
        input is never expanded to every item.
        """
        di = self._w_item.shape[1]
        n_users = params.shape[0]
        slices = self.model.layout.slices
        scale = params[:, slices[(0, "mul")]] if (0, "mul") in slices else None  # (U, D0)
        shift = params[:, slices[(0, "add")]] if (0, "add") in slices else None  # (U, D0)
        user_in = user_vec if scale is None else user_vec * scale[:, di:]  # (U, Du)
        const = user_in @ self._w_user.T + self._fc1_bias  # (U, H1)
        if shift is not None:
            # W_i a_i + W_u a_u, with W = [W_i, W_u]
            const = const + shift[:, :di] @ self._w_item.T + shift[:, di:] @ self._w_user.T
        if scale is None:
            assert self._item_fc1 is not None
            item_term = self._item_fc1[items][None].expand(n_users, -1, -1)  # (U, I, H1)
        else:
            w = self._w_item[None] * scale[:, None, :di]  # (U, H1, Di): W_i diag(m_i)
            item_term = torch.matmul(self._item_vectors[items][None], w.transpose(1, 2))
        return item_term + const[:, None, :]


def load_recommender(directory: Path | str) -> ColdStartRecommender:
    """Load a model directory written by the trainer (``config.json`` + safetensors)."""
    model, config = load_model(Path(directory))
    return ColdStartRecommender(model, config)
