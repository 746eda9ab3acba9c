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

from warmstart.coldstart.artifacts import load_id_maps, load_item_info, load_model
from warmstart.coldstart.catalog import IdMap, ItemInfo
from warmstart.coldstart.model import ColdNAS
from warmstart.coldstart.structure import Structure
from warmstart.retrieval.threads import check_threads, intra_op_threads

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


def rows_of(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``table[rows]`` for an integer index tensor of any shape, by ``index_select``: the same
    values, ~4x less CPU than advanced indexing on one core (8 x 500 rows of 128 floats: 42 us
    against 183 us), which goes through the generic index kernel."""
    picked = table.index_select(0, rows.reshape(-1))
    return picked.view(*rows.shape, *table.shape[1:])


_PASS_ELEMENTS = 1 << 17
"""Most fc1-output floats (users x candidates x H1, padded) one scoring pass holds: 512 KiB."""

_FOLDED_PASS_ELEMENTS = 1 << 19
"""The same bound for the folded scoring path (2 MiB in float32: its passes keep no wider
intermediate than fc1's output, and 8 users x 500 candidates per pass cost ~15% less CPU per
user than 2, measured on one core)."""

PRECISIONS = ("float32", "bfloat16")

Support = tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]
"""One user's support set: ``(rows, labels)``, both ``(S,)``; ``S == 0`` is allowed."""


def as_rows(values: Any, n: int, arg: str, allow_empty: bool = True) -> np.ndarray:
    """Validate dense row indices: ``(S,)`` int64, each in ``[0, n)``.

    Integer dtypes are taken as they are; floats only when exactly integral (``1.0`` is row 1,
    ``1.7`` is an error, never truncated: JSON decoders hand out floats). Raises ``ValueError``
    naming ``arg``, the bad value and the allowed range, before any compute.
    """
    try:
        a = np.asarray(values)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{arg}: expected a flat list of item row indices ({err})") from None
    if a.ndim != 1:
        raise ValueError(f"{arg}: expected a 1-D list of item row indices, got shape {a.shape}")
    if a.size == 0:
        if not allow_empty:
            raise ValueError(f"{arg}: empty; pass at least one item row index in [0, {n})")
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{arg}[{i}] = {a[i]!r}: item indices must be integers in [0, {n}) "
                "(a float is accepted only when exactly integral)"
            )
    elif a.dtype.kind not in "iu":
        raise ValueError(
            f"{arg}: item indices must be integers in [0, {n}), got dtype {a.dtype} "
            f"(first value {a[0]!r}; raw dataset ids go through item_ids.to_rows or *_ids methods)"
        )
    rows = a.astype(np.int64)
    out = (rows < 0) | (rows >= n)
    if out.any():
        i = int(np.argmax(out))
        raise ValueError(f"{arg}[{i}] = {rows[i]}: item indices must lie in [0, {n})")
    return rows


def as_labels(values: Any, size: int, rating_range: tuple[float, float], arg: str) -> np.ndarray:
    """Validate support labels: ``(size,)`` float32, finite, within ``rating_range``."""
    try:
        a = np.asarray(values)
    except ValueError as err:
        raise ValueError(f"{arg}: expected a flat list of labels ({err})") from None
    if a.ndim != 1:
        raise ValueError(f"{arg}: expected a 1-D list of labels, got shape {a.shape}")
    if a.size and a.dtype.kind not in "biuf":
        raise ValueError(f"{arg}: labels must be numbers, got dtype {a.dtype} (first {a[0]!r})")
    if a.size != size:
        raise ValueError(f"{arg}: {a.size} labels for {size} support items")
    low, high = rating_range
    y = a.astype(np.float64)
    bad = ~np.isfinite(y) | (y < low) | (y > high)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{arg}[{i}] = {a[i]!r}: labels must be finite and lie in [{low:g}, {high:g}] "
            "(the model's rating range)"
        )
    return y.astype(np.float32)


class ColdStartRecommender:
    """A trained ColdNAS model behind a small adapt/score API (CPU, no gradients).

    Dense rows (``0..n_items-1``) are the hot path; ``item_ids``/``user_ids`` map a dataset's
    raw ids to rows and back, and the ``*_ids`` methods take raw ids directly. Every method
    validates its input before any compute and raises ``ValueError`` naming the argument, the
    bad value and the allowed range.

    Immutable after construction and safe to share between threads: no call writes to the
    object, and no call changes a process-wide setting.

    Args:
        model: a fixed-structure ``ColdNAS``.
        config: the model directory's ``config.json`` contents (kept as ``self.config``).
        item_ids / user_ids: raw-id maps (default: raw id = row).
        item_info: display metadata of the items (title, year, genres), if the dataset has it.
        threads: thread policy of this object's calls (``warmstart.retrieval.threads``):
            ``None`` (default) runs them with the process's intra-op threads (what the
            application chose, e.g. the CLI's ``--threads``); ``n`` runs each call with ``n``
            intra-op threads set for the calling thread only, so other threads and other
            objects are unaffected.
        precision: ``float32`` (default) or ``bfloat16``: the matrix products of scoring in
            bfloat16 (CPUs with AVX-512 BF16 run them ~2-3x faster; scores differ by ~1e-3 on
            a 1-5 scale), for structures whose every position holds only ``mul``/``add``
            (others always score in float32). Adaptation is float32 either way.

    Scoring, when every position holds only ``mul``/``add`` (no max/min, no gates): each
    modulation is folded into the layer before it, per user (``(W h + b) * m + a`` is
    ``(diag(m) W) h + (m b + a)``), so a layer is one batched matrix product with a per-user
    weight and bias, then ReLU, with no elementwise pass over the candidates x width tensors
    (same value up to float rounding; ~25% less CPU per candidate on ML-1M).
    """

    def __init__(
        self,
        model: ColdNAS,
        config: dict[str, Any] | None = None,
        item_ids: IdMap | None = None,
        user_ids: IdMap | None = None,
        item_info: ItemInfo | None = None,
        threads: int | None = None,
        precision: str = "float32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: allowed values {PRECISIONS}")
        if model.searching:
            raise ValueError("ColdStartRecommender: needs a derived model, not the search supernet")
        self.model = model.eval()
        self.config = dict(config or {})
        n_items = model.item_embedding.n_rows
        n_users = model.user_embedding.n_rows
        self.item_ids = item_ids if item_ids is not None else IdMap(range(n_items), "item")
        self.user_ids = user_ids if user_ids is not None else IdMap(range(n_users), "user")
        for name, ids, n in (
            ("item_ids", self.item_ids, n_items),
            ("user_ids", self.user_ids, n_users),
        ):
            if len(ids) != n:
                raise ValueError(
                    f"ColdStartRecommender: {name} has {len(ids)} ids, the model {n} rows"
                )
        if item_info is not None and len(item_info) != n_items:
            raise ValueError(
                f"ColdStartRecommender: item_info has {len(item_info)} rows, the model {n_items}"
            )
        self.item_info = item_info
        self.threads = check_threads(threads)
        # Item embeddings do not depend on the user: compute the whole table once, so a request
        # is a gather instead of one EmbeddingBag per feature field.
        with torch.no_grad():
            self._item_vectors = model.item_embedding(torch.arange(n_items))  # (N, Di)
            # Same for the user feature table (an EmbeddingBag per field costs ~0.15 ms).
            n_vec = n_users if model.use_user_features else 0
            self._user_vectors = model.embed_users(torch.arange(n_vec))  # (N_u, Du)
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
        positions = model.structure.positions
        self._folded = (
            model.gate_logits is None
            and all(set(p) <= {"mul", "add"} for p in positions)
            and all(isinstance(layer, torch.nn.Linear) for layer in model.hidden)
        )
        self.precision = precision if self._folded else "float32"
        self._dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float32
        self._item_table = self._item_vectors.to(self._dtype)  # (N, Di), the folded path's
        # the folded path's layers after fc1 and the output, looked up once (slicing a
        # ModuleList builds a new one on every call)
        self._later_layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (layer.weight.detach(), layer.bias.detach())
            for layer in model.hidden[1:]
            if isinstance(layer, torch.nn.Linear)
        ]
        self._out = (model.out.weight[0].detach(), model.out.bias.detach())  # (D_L,), (1,)
        self._slices = dict(model.layout.slices)
        self._item_prior = model.item_prior  # (N,) buffer
        self._frozen = True

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"ColdStartRecommender is immutable after loading (set {name!r})")
        super().__setattr__(name, value)

    @property
    def structure(self) -> Structure:
        return self.model.structure

    @property
    def n_items(self) -> int:
        return self.model.item_embedding.n_rows

    @property
    def n_users(self) -> int:
        return self.model.user_embedding.n_rows

    @property
    def rating_range(self) -> tuple[float, float]:
        low, high = self.model.config.rating_range
        return float(low), float(high)

    # ----------------------------------------------------------------------------- validation
    def _check_user(self, user: Any, arg: str = "user") -> int | None:
        if user is None:
            return None
        if isinstance(user, np.generic):
            user = user.item()
        if isinstance(user, float) and user.is_integer():
            user = int(user)
        if isinstance(user, bool) or not isinstance(user, int) or not 0 <= user < self.n_users:
            raise ValueError(
                f"{arg} = {user!r}: user index must be None (a user unknown to the feature "
                f"table) or an integer in [0, {self.n_users})"
            )
        return user

    def _check_support(self, support: Any, arg: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(support, (tuple, list)) or len(support) != 2:
            raise ValueError(f"{arg}: expected a (rows, labels) pair, got {type(support).__name__}")
        rows = as_rows(support[0], self.n_items, f"{arg} rows")
        labels = as_labels(support[1], rows.size, self.rating_range, f"{arg} labels")
        return rows, labels

    def _check_states(self, states: Sequence[UserState], arg: str = "states") -> None:
        size, du = self.model.layout.size, self.model.user_dim
        bad = [
            i
            for i, s in enumerate(states)
            if not isinstance(s, UserState)
            or s.params.shape != (size,)
            or s.user_vec.shape != (du,)
        ]
        if bad:
            raise ValueError(
                f"{arg}: states {bad[:5]} do not match this model ({size} parameters, "
                f"user vector of {du}); adapt them with this model"
            )

    # ----------------------------------------------------------------------------- adaptation
    def adapt(
        self,
        support_items: Sequence[int] | np.ndarray,
        support_labels: Sequence[float] | np.ndarray,
        user: int | None = None,
    ) -> UserState:
        """Run the adaptation network on one user's support set.

        Args:
            support_items: ``(S,)`` dense item rows the user interacted with; ``S == 0`` (a new
                user with no interaction) gives the model's no-information state: the pooled
                support code is 0, so the parameters are those the hypernetwork gives an empty
                set (the same for every such user), and predictions rest on the item side (and
                the user's features when ``user`` is given).
            support_labels: ``(S,)`` their ratings/labels, finite, within ``rating_range``.
            user: dense user row, for models that embed user features; ``None`` for a user
                unknown to the feature table (its feature embedding is then zero).
        """
        rows = as_rows(support_items, self.n_items, "support_items")
        labels = as_labels(support_labels, rows.size, self.rating_range, "support_labels")
        return self._adapt_checked([(rows, labels)], [self._check_user(user)])[0]

    def adapt_many(
        self, supports: Sequence[Support], users: Sequence[int | None] | None = None
    ) -> list[UserState]:
        """:meth:`adapt` for many users in one padded forward pass.

        Args:
            supports: one ``(rows, labels)`` pair per user; sizes may differ, empty allowed.
            users: dense user rows (or None each), same length; default all None.

        Returns:
            One ``UserState`` per support set, same order (``[]`` for ``[]``).
        """
        checked = [self._check_support(s, f"supports[{i}]") for i, s in enumerate(supports)]
        who = [None] * len(checked) if users is None else list(users)
        if len(who) != len(checked):
            raise ValueError(f"users: {len(who)} users for {len(checked)} support sets")
        who = [self._check_user(u, f"users[{i}]") for i, u in enumerate(who)]
        code = self.model.encoder.out_features  # (pairs, A) is the widest adaptation tensor
        groups = self._passes([r.size for r, _ in checked], code) if checked else []
        return [s for a, b in groups for s in self._adapt_checked(checked[a:b], who[a:b])]

    @torch.no_grad()
    def _adapt_checked(
        self, supports: list[tuple[np.ndarray, np.ndarray]], users: list[int | None]
    ) -> list[UserState]:
        b, s = len(supports), max(r.size for r, _ in supports)
        items = np.zeros((b, s), dtype=np.int64)
        labels = np.zeros((b, s), dtype=np.float32)
        mask = np.zeros((b, s), dtype=bool)
        for i, (r, y) in enumerate(supports):
            items[i, : r.size], labels[i, : r.size], mask[i, : r.size] = r, y, True
        item_t = torch.from_numpy(items)  # (B, S)
        user_vec = self._user_vecs(users)  # (B, Du)
        with intra_op_threads(self.threads):
            params = self.model.adapt_embedded(
                user_vec,
                item_t,
                torch.from_numpy(labels),
                torch.from_numpy(mask),
                item_vectors=rows_of(self._item_vectors, item_t),
            )  # (B, P)
        uv, pv = user_vec.numpy(), params.numpy()
        return [UserState(uv[i].copy(), pv[i].copy(), u) for i, u in enumerate(users)]

    def _user_vecs(self, users: list[int | None]) -> torch.Tensor:
        """``(B, Du)`` feature embeddings (zero for None, or without user features)."""
        out = torch.zeros((len(users), self.model.user_dim))
        if self.model.use_user_features:
            for i, u in enumerate(users):
                if u is not None:
                    out[i] = self._user_vectors[u]
        return out

    # ----------------------------------------------------------------------------- scoring
    def score(
        self, states: UserState | Sequence[UserState], item_ids: Sequence[int] | np.ndarray
    ) -> np.ndarray:
        """Predicted ratings of the same items for one or many adapted users.

        Args:
            states: one state, or a non-empty list of U states.
            item_ids: ``(I,)`` dense item rows scored for every user, ``I >= 1``.

        Returns:
            ``(I,)`` for a single state, else ``(U, I)`` float32.
        """
        single = isinstance(states, UserState)
        batch = [states] if isinstance(states, UserState) else list(states)
        if not batch:
            raise ValueError("states: empty; pass one UserState or a non-empty list of them")
        self._check_states(batch)
        items = torch.from_numpy(as_rows(item_ids, self.n_items, "item_ids", allow_empty=False))
        groups = self._passes([items.numel()] * len(batch))
        out = np.concatenate([self._score_checked(batch[a:b], items) for a, b in groups])
        return out[0] if single else out  # (I,) or (U, I)

    def score_many(
        self, states: Sequence[UserState], candidates: Sequence[Sequence[int] | np.ndarray]
    ) -> list[np.ndarray]:
        """Each user's own candidate rows scored in one padded forward pass.

        Args:
            states: U adapted users.
            candidates: U lists of dense item rows (lengths may differ, each ``>= 1``).

        Returns:
            U float32 arrays, ``out[u][j]`` the predicted rating of ``candidates[u][j]``.
        """
        states = list(states)
        if len(candidates) != len(states):
            raise ValueError(f"candidates: {len(candidates)} lists for {len(states)} states")
        self._check_states(states)
        rows = [
            as_rows(c, self.n_items, f"candidates[{i}]", allow_empty=False)
            for i, c in enumerate(candidates)
        ]
        if not rows:
            return []
        out: list[np.ndarray] = []
        for a, b in self._passes([r.size for r in rows]):
            width = max(r.size for r in rows[a:b])
            padded = np.zeros((b - a, width), dtype=np.int64)  # pad with item 0, sliced away
            for i, r in enumerate(rows[a:b]):
                padded[i, : r.size] = r
            scores = self._score_checked(states[a:b], torch.from_numpy(padded))  # (b - a, W)
            out += [scores[i, : r.size].copy() for i, r in enumerate(rows[a:b])]
        return out

    def _passes(self, sizes: list[int], row_width: int | None = None) -> list[tuple[int, int]]:
        """Consecutive user ranges ``[a, b)`` computed in one padded pass each.

        A pass holds as many users as fit in ``_PASS_ELEMENTS`` floats of its widest
        intermediate (padded ``users x max rows x row_width``; scoring: candidates x H1, the
        default; adaptation: support pairs x the code width), never fewer than one user.

        Why: intermediates above ~1 MB come from fresh pages on every call (glibc hands them
        back to the OS), which measured 2-3x slower per user (8 users x 1,000 candidates: 1.3
        ms/user in one pass, 0.54 in passes of this size), while scoring 1,000 candidates is
        already compute-bound per user (~0.45 ms on one core), so a bigger pass gains nothing.
        Short lists still share a pass: 64 users x 100 candidates run in 7 passes.
        """
        width_of_row = self._fc1_bias.numel() if row_width is None else row_width
        elements = _FOLDED_PASS_ELEMENTS if self._folded and row_width is None else _PASS_ELEMENTS
        budget = max(1, elements // width_of_row)  # padded rows per pass
        passes, start, width = [], 0, 0
        for i, n in enumerate(sizes):
            wider = max(width, n)
            if i > start and wider * (i + 1 - start) > budget:
                passes.append((start, i))
                start, wider = i, n
            width = wider
        passes.append((start, len(sizes)))
        return passes

    @torch.no_grad()
    def _score_checked(self, states: list[UserState], items: torch.Tensor) -> np.ndarray:
        """Scores ``(U, I)`` of ``items`` (``(I,)`` shared by all users, or ``(U, I)``)."""
        params = torch.from_numpy(np.stack([s.params for s in states]).astype(np.float32))
        user_vec = torch.from_numpy(np.stack([s.user_vec for s in states]).astype(np.float32))
        query = items[None].expand(len(states), -1) if items.dim() == 1 else items  # (U, I)
        with intra_op_threads(self.threads):
            return self._predict(params, user_vec, items, query)

    def _predict(
        self, params: torch.Tensor, user_vec: torch.Tensor, items: torch.Tensor, query: torch.Tensor
    ) -> np.ndarray:
        if self._folded:
            return self._predict_folded(params, user_vec, items, query)
        if self._fast_fc1:
            scores = self.model.predict_from_fc1(self._fc1(params, user_vec, items), params, query)
        else:
            vectors = rows_of(self._item_vectors, query)  # (U, I, Di)
            scores = self.model.predict_embedded(params, user_vec, query, item_vectors=vectors)
        return scores.numpy().astype(np.float32)

    # ----------------------------------------------------------------------------- raw ids
    def adapt_ids(
        self,
        item_ids: Sequence[Any],
        labels: Sequence[float] | np.ndarray,
        user_id: Any = None,
    ) -> UserState:
        """:meth:`adapt` with the dataset's raw item ids (and raw user id, or None)."""
        user = None if user_id is None else int(self.user_ids.to_rows([user_id], "user_id")[0])
        return self.adapt(self.item_ids.to_rows(item_ids, "item_ids"), labels, user)

    def adapt_many_ids(
        self, supports: Sequence[tuple[Sequence[Any], Any]], user_ids: Sequence[Any] | None = None
    ) -> list[UserState]:
        """:meth:`adapt_many` with raw item ids (and raw user ids, each may be None)."""
        rows = [
            (self.item_ids.to_rows(items, f"supports[{i}] item ids"), labels)
            for i, (items, labels) in enumerate(supports)
        ]
        users = None
        if user_ids is not None:
            users = [
                None if u is None else int(self.user_ids.to_rows([u], f"user_ids[{i}]")[0])
                for i, u in enumerate(user_ids)
            ]
        return self.adapt_many(rows, users)

    def score_ids(self, state: UserState, item_ids: Sequence[Any]) -> np.ndarray:
        """:meth:`score` of one state on raw item ids: ``(I,)``."""
        return self.score(state, self.item_ids.to_rows(item_ids, "item_ids"))

    def score_many_ids(
        self, states: Sequence[UserState], candidates: Sequence[Sequence[Any]]
    ) -> list[np.ndarray]:
        """:meth:`score_many` with raw item ids."""
        rows = [self.item_ids.to_rows(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
        return self.score_many(states, rows)

    def describe(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """For display: ``{"row", "id", ...title/year/genres when known}`` of each item row."""
        checked = as_rows(rows, self.n_items, "rows")
        raw = self.item_ids.to_raw(checked)
        info = self.item_info
        return [
            {"row": int(r), "id": i, **(info.record(int(r)) if info is not None else {})}
            for r, i in zip(checked, raw, strict=True)
        ]

    def _mod(self, params: torch.Tensor, position: int, op: str) -> torch.Tensor | None:
        sl = self._slices.get((position, op))
        return None if sl is None else params[:, sl]  # (U, D)

    def _predict_folded(
        self, params: torch.Tensor, user_vec: torch.Tensor, items: torch.Tensor, query: torch.Tensor
    ) -> np.ndarray:
        """Scores with every modulation folded into per-user layer weights (see the class
        docstring): fc1 of ``[e_item, e_user] * m0 + a0`` then ``* m1 + a1`` is
        ``A e_item + c`` with ``A = diag(m1) W_i diag(m0_i)`` and a per-user ``c``."""
        di = self._w_item.shape[1]
        m0, a0 = self._mod(params, 0, "mul"), self._mod(params, 0, "add")
        user_in = user_vec if m0 is None else user_vec * m0[:, di:]  # (U, Du)
        const = user_in @ self._w_user.T + self._fc1_bias  # (U, H1)
        if a0 is not None:
            const = const + a0[:, :di] @ self._w_item.T + a0[:, di:] @ self._w_user.T
        weight = self._w_item[None]  # (1 or U, H1, Di)
        if m0 is not None:
            weight = weight * m0[:, None, :di]
        weights, biases = [weight], [const]
        for w, b in self._later_layers:
            weights.append(w[None])  # (1, Dk, Dk-1)
            biases.append(b[None].expand(params.shape[0], -1))  # (U, Dk)
        for k in range(len(weights)):  # fold position k + 1 into layer k + 1
            m, a = self._mod(params, k + 1, "mul"), self._mod(params, k + 1, "add")
            if m is not None:
                weights[k], biases[k] = m[:, :, None] * weights[k], m * biases[k]
            if a is not None:
                biases[k] = biases[k] + a
        vectors = rows_of(self._item_table, items)  # (I, Di) or (U, I, Di)
        h = vectors if items.dim() == 2 else vectors[None].expand(params.shape[0], -1, -1)
        cast = self._dtype is not torch.float32  # ``.to`` to the same dtype still dispatches
        for w, b in zip(weights, biases, strict=True):
            w = w.expand(params.shape[0], -1, -1)
            b = b[:, None, :]
            if cast:
                w, b = w.to(self._dtype), b.to(self._dtype)
            h = torch.baddbmm(b, h, w.transpose(1, 2)).relu_()
        w_out, b_out = self._out
        logits = torch.matmul(h.float(), w_out) + b_out + rows_of(self._item_prior, query)  # (U, I)
        low, high = self.model.config.rating_range
        return (low + (high - low) * torch.sigmoid(logits)).numpy().astype(np.float32)

    def _fc1(
        self, params: torch.Tensor, user_vec: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """fc1's pre-activation ``(U, I, H1)`` when position 0 has only ``mul``/``add``;
        ``items`` is ``(I,)`` (the same items for every user) or ``(U, I)``.

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
            item_term = rows_of(self._item_fc1, items)  # (I, H1) or (U, I, H1)
            if items.dim() == 1:  # the items every user scores: one gather, a broadcast view
                item_term = item_term[None].expand(n_users, -1, -1)  # (U, I, H1)
        else:
            w = self._w_item[None] * scale[:, None, :di]  # (U, H1, Di): W_i diag(m_i)
            vectors = rows_of(self._item_vectors, items)  # (I, Di) or (U, I, Di)
            item_term = torch.matmul(
                vectors if items.dim() == 2 else vectors[None], w.transpose(1, 2)
            )
        return item_term + const[:, None, :]


def load_recommender(
    directory: Path | str, threads: int | None = None, precision: str = "float32"
) -> ColdStartRecommender:
    """Load a model directory written by the trainer (``config.json``, safetensors, id maps).

    ``directory`` may also be a run folder whose ``model/`` subfolder holds the model;
    ``threads`` and ``precision`` are the recommender's thread policy and scoring precision
    (see ``ColdStartRecommender``).
    """
    directory = Path(directory)
    model, config = load_model(directory)
    user_ids, item_ids = load_id_maps(directory)
    info = load_item_info(directory)
    return ColdStartRecommender(model, config, item_ids, user_ids, info, threads, precision)
