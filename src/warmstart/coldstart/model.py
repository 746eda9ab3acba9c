"""ColdNAS model: feature embeddings, adaptation hypernetwork and modulated predictor MLP.

Implements Wu et al., "Modulation Search for User Cold-Start Recommendation" (ColdNAS, WWW 2023,
arXiv 2306.03387), Sec. 3-4. One forward pass handles a whole padded ``TaskBatch``: the adaptation
network maps each user's support set to modulation parameters (no inner-loop gradient steps), and
the predictor scores the user's query items with those parameters applied at positions 0..3
(embedding output, then the pre-activations of the hidden layers).

Built with ``structure=None`` the model is the search *supernet*: every (position, op) pair is
present and gated by its own ``sigmoid`` gate, ``x <- a * op(x) + (1 - a) * x``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from warmstart.coldstart.structure import OPS, Structure, apply_op

if TYPE_CHECKING:  # the serving path imports this module without the data package
    from warmstart.data.types import TaskBatch

PAD = -1
"""Padding value in feature index matrices (same as ``warmstart.data.types.PAD``)."""


class FieldLike(Protocol):
    """What the model reads from a feature field (``warmstart.data.types.FeatureField``)."""

    @property
    def name(self) -> str: ...
    @property
    def cardinality(self) -> int: ...
    @property
    def index(self) -> np.ndarray: ...


class TableLike(Protocol):
    """What the model reads from a feature table (``warmstart.data.types.FeatureTable``)."""

    @property
    def fields(self) -> Sequence[FieldLike]: ...


MUL_ACTIVATIONS = ("softplus", "relu")
USER_FEATURES = ("auto", "on", "off")
SET_ENCODERS = ("paper", "interaction")
# Head bias at init, per op: the modulation starts near the identity map (max with a low floor,
# min with a high ceiling, scale 1, shift 0), so every structure trains from the same function.
_IDENTITY_BIAS = {"max": -1.0, "min": 1.0, "mul": 0.0, "add": 0.0}


@dataclass(frozen=True)
class ColdNASConfig:
    """Architecture of the ColdNAS model (reference values are the defaults).

    Attributes:
        embedding_dim: width of each feature field's embedding.
        hidden_sizes: predictor MLP hidden widths; there are ``len(hidden_sizes) + 1`` positions.
        adaptation_dim: width of the per-support-pair code ``c_j``.
        mul_activation: how ``mul`` parameters are made non-negative (``softplus`` or ``relu``),
            shifted so that a zero head output gives scale 1.
        init_std: std of the normal init of embedding tables (reference N(0, 0.01)).
        rating_range: ``(low, high)``; predictions are ``low + (high - low) * sigmoid(.)``.
        user_features: ``"on"``: concatenate the user's feature embedding to the item's
            (paper); ``"off"``: only the support set describes the user; ``"auto"``: on unless
            the user table is a bare one-hot id (a cold-start user's id is never seen in
            training, so its embedding is untrained noise and id embeddings of training users
            only let the model memorise them).
        item_prior: add a per-item prior logit (a buffer the trainer fills from train-split
            users' labels, smoothed popularity) to the output logit, so the network models the
            user-specific residual on top of item popularity. Not in the paper; off by default.
        set_encoder: what each support pair contributes to the user code. ``"paper"``:
            ``c_j = LeakyReLU(W_c [e_item_j, e_user, y_j])``. ``"interaction"``: the input also
            holds ``(y_j - mean_y) * e_item_j``, the item embedding signed by whether the user
            rated it above or below their own support mean, so the mean-pooled code carries a
            "taste direction" in item-embedding space (what a per-user linear model fits)
            instead of having to approximate a product of label and item through one LeakyReLU.
            Still one forward pass and permutation invariant.
        encoder_layers: depth of the per-pair encoder (1 in the paper; extra layers are
            ``Linear(A, A) + LeakyReLU`` before pooling).
    """

    embedding_dim: int = 32
    hidden_sizes: tuple[int, ...] = (128, 64, 32)
    adaptation_dim: int = 256
    mul_activation: str = "softplus"
    init_std: float = 0.01
    rating_range: tuple[float, float] = (0.0, 1.0)
    user_features: str = "auto"
    item_prior: bool = False
    set_encoder: str = "paper"
    encoder_layers: int = 1

    def __post_init__(self) -> None:
        if self.set_encoder not in SET_ENCODERS:
            raise ValueError(
                f"ColdNASConfig.set_encoder={self.set_encoder!r}, allowed {SET_ENCODERS}"
            )
        if self.encoder_layers < 1:
            raise ValueError(
                f"ColdNASConfig.encoder_layers must be >= 1, got {self.encoder_layers}"
            )
        if self.embedding_dim < 1 or self.adaptation_dim < 1:
            raise ValueError("ColdNASConfig.embedding_dim and adaptation_dim must be >= 1")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(
                f"ColdNASConfig.hidden_sizes must be positive, got {self.hidden_sizes}"
            )
        if self.mul_activation not in MUL_ACTIVATIONS:
            raise ValueError(
                f"ColdNASConfig.mul_activation={self.mul_activation!r}, allowed {MUL_ACTIVATIONS}"
            )
        if not self.rating_range[0] < self.rating_range[1]:
            raise ValueError(
                f"ColdNASConfig.rating_range must be (low, high), got {self.rating_range}"
            )
        if self.user_features not in USER_FEATURES:
            raise ValueError(
                f"ColdNASConfig.user_features={self.user_features!r}, allowed {USER_FEATURES}"
            )
        if self.init_std <= 0:
            raise ValueError(f"ColdNASConfig.init_std must be > 0, got {self.init_std}")

    @property
    def n_positions(self) -> int:
        return len(self.hidden_sizes) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColdNASConfig:
        data = dict(data)
        data["hidden_sizes"] = tuple(data["hidden_sizes"])
        data["rating_range"] = tuple(data["rating_range"])
        return cls(**data)  # configs written before set_encoder/encoder_layers get the defaults


class FeatureEmbedding(nn.Module):
    """Embeds rows of a ``FeatureTable``: one table per field, multi-hot fields averaged.

    Padding entries (``PAD``) are excluded from the mean; a row with no valid entry embeds to 0.
    The table's index matrices are buffers, so a lookup is one gather per field.
    """

    def __init__(self, table: TableLike, dim: int) -> None:
        super().__init__()
        self.names = [f.name for f in table.fields]
        self.bags = nn.ModuleList()
        for i, f in enumerate(table.fields):
            # The extra last row is the padding row, excluded from the mean by EmbeddingBag.
            self.bags.append(
                nn.EmbeddingBag(f.cardinality + 1, dim, mode="mean", padding_idx=f.cardinality)
            )
            index = np.where(f.index == PAD, f.cardinality, f.index)
            self.register_buffer(
                f"index_{i}", torch.as_tensor(index, dtype=torch.int64), persistent=False
            )
        self.out_dim = dim * len(table.fields)
        self.n_rows = int(table.fields[0].index.shape[0]) if table.fields else 0

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Args: rows ``(*,)`` int64 dense indices. Returns ``(*, F * dim)``."""
        flat = rows.reshape(-1)
        parts = [bag(getattr(self, f"index_{i}")[flat]) for i, bag in enumerate(self.bags)]
        return torch.cat(parts, dim=-1).reshape(*rows.shape, self.out_dim)


def _resolve_user_features(setting: str, users: TableLike) -> bool:
    if setting == "auto":
        return [f.name for f in users.fields] != ["id"]
    return setting == "on"


def _gated(h: torch.Tensor, op: str, p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The supernet relaxation ``a * op(h, p) + (1 - a) * h``, rearranged to touch the large
    ``(B, Q, D)`` tensor as few times as possible (``p`` is ``(B, 1, D)``, ``a`` a scalar)."""
    if op == "max":  # h + a * (max(h, p) - h)
        return h + a * torch.relu(p - h)
    if op == "min":  # h + a * (min(h, p) - h)
        return h - a * torch.relu(h - p)
    if op == "mul":
        return h * (1 + a * (p - 1))
    if op == "add":
        return h + a * p
    raise ValueError(f"unknown modulation op {op!r}, allowed {list(OPS)}")


@dataclass(frozen=True)
class ModulationLayout:
    """Where each (position, op) parameter vector lives in the flat ``(B, P)`` parameter tensor."""

    structure: Structure
    dims: tuple[int, ...]
    slices: dict[tuple[int, str], slice] = field(default_factory=dict)

    @classmethod
    def build(cls, structure: Structure, dims: tuple[int, ...]) -> ModulationLayout:
        if structure.n_positions != len(dims):
            raise ValueError(
                f"structure has {structure.n_positions} positions, model has {len(dims)}"
            )
        slices, start = {}, 0
        for p, op in structure.pairs():
            slices[(p, op)] = slice(start, start + dims[p])
            start += dims[p]
        return cls(structure, dims, slices)

    @property
    def size(self) -> int:
        return sum(s.stop - s.start for s in self.slices.values())


class ColdNAS(nn.Module):
    """ColdNAS: adaptation hypernetwork + modulated MLP, batched over users.

    Args:
        config: architecture.
        users: user feature table (rows = dense user indices).
        items: item feature table (rows = dense item indices).
        structure: the modulation structure; ``None`` builds the search supernet (every op at
            every position, each gated by its own learnable logit).
        generator: source of the initial weights (``None``: a fixed seed 0).
    """

    item_prior: torch.Tensor  # (n_items,) buffer

    def __init__(
        self,
        config: ColdNASConfig,
        users: TableLike,
        items: TableLike,
        structure: Structure | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.searching = structure is None
        self.structure = Structure.full(config.n_positions) if structure is None else structure
        self.item_embedding = FeatureEmbedding(items, config.embedding_dim)
        self.user_embedding = FeatureEmbedding(users, config.embedding_dim)
        self.use_user_features = _resolve_user_features(config.user_features, users)
        self.user_dim = self.user_embedding.out_dim if self.use_user_features else 0
        in_dim = self.item_embedding.out_dim + self.user_dim
        dims = (in_dim, *config.hidden_sizes)
        self.layout = ModulationLayout.build(self.structure, dims)
        # W_c over [e_item, e_user, y] (+ (y - mean y) * e_item with the interaction encoder)
        enc_in = (
            in_dim + 1 + (self.item_embedding.out_dim if config.set_encoder == "interaction" else 0)
        )
        self.encoder = nn.Linear(enc_in, config.adaptation_dim)
        self.encoder_extra = nn.ModuleList(
            nn.Linear(config.adaptation_dim, config.adaptation_dim)
            for _ in range(config.encoder_layers - 1)
        )
        self.head = nn.Linear(config.adaptation_dim, self.layout.size)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.out = nn.Linear(dims[-1], 1)
        # Prior logit per item (zeros unless the trainer sets it; see ColdNASConfig.item_prior).
        self.register_buffer("item_prior", torch.zeros(self.item_embedding.n_rows))
        self.gate_logits = (
            nn.Parameter(torch.zeros(config.n_positions, len(OPS))) if self.searching else None
        )
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        with torch.no_grad():
            for emb in (self.item_embedding, self.user_embedding):
                for bag in emb.bags:
                    assert isinstance(bag, nn.EmbeddingBag)
                    nn.init.normal_(bag.weight, 0.0, self.config.init_std, generator=g)
                    bag.weight[-1].zero_()  # the padding row
            for lin in (self.encoder, *self.encoder_extra, self.head, *self.hidden, self.out):
                nn.init.xavier_uniform_(lin.weight, generator=g)
                lin.bias.zero_()
            for (_, op), sl in self.layout.slices.items():
                # In the supernet, max/min start at 0 (as in the reference) so that they are
                # active and their gates receive gradient; at the identity bias they would be
                # inert and their gates would never move.
                bias = 0.0 if self.searching and op in ("max", "min") else _IDENTITY_BIAS[op]
                self.head.bias[sl] = bias
            if self.gate_logits is not None:
                self.gate_logits.zero_()

    # ----------------------------------------------------------------------------- embeddings
    def embed_users(self, users: torch.Tensor) -> torch.Tensor:
        """``(B,)`` user indices -> ``(B, Du)`` (``Du == 0`` without user features)."""
        if not self.use_user_features:
            return users.new_zeros((users.shape[0], 0), dtype=torch.float32)
        return self.user_embedding(users)

    def _normalise_labels(self, labels: torch.Tensor) -> torch.Tensor:
        low, high = self.config.rating_range
        return (labels - low) / (high - low)

    # ----------------------------------------------------------------------------- adaptation
    def adapt_embedded(
        self,
        user_vec: torch.Tensor,
        support_items: torch.Tensor,
        support_labels: torch.Tensor,
        support_mask: torch.Tensor,
        item_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Support sets -> modulation parameters.

        Args:
            user_vec: ``(B, Du)`` user embeddings.
            support_items / support_labels / support_mask: ``(B, S)``.
            item_vectors: optional ``(B, S, Di)`` precomputed embeddings of ``support_items``
                (serving caches the item table; training leaves this None).

        Returns:
            ``(B, P)`` parameters in ``self.layout`` order, ``mul`` entries already non-negative.
            A user with no support pair (``S == 0``, or an all-False mask row) gets the
            no-information state: its pooled code is 0, so its parameters are
            ``activate(head.bias)``, the same for every such user.
        """
        b, s = support_items.shape
        # W_c [e_item, e_user, y, ...] with W_c's user columns applied once per user, not once
        # per support pair (same sum; the user part is most of the input width on ML-1M)
        di, du = self.item_embedding.out_dim, user_vec.shape[1]
        weight = self.encoder.weight  # (A, Di + Du + 1 [+ Di])
        per_user = self.encoder.bias + user_vec @ weight[:, di : di + du].T  # (B, A)
        interaction = self.config.set_encoder == "interaction"
        dense = s > 0 and bool(support_mask.all())
        if dense:  # no padding (e.g. serving one user): (B, S) as it is
            e_item = self.item_embedding(support_items) if item_vectors is None else item_vectors
            y = self._normalise_labels(support_labels)[..., None]  # (B, S, 1)
            user_part = per_user[:, None, :]  # (B, 1, A), broadcast over S
            mean_y = y.mean(1, keepdim=True) if interaction else None  # (B, 1, 1)
        else:  # packed: only real support pairs are encoded (padding is up to ~2x the work)
            flat = support_mask.reshape(-1).nonzero().squeeze(1)  # (N,) into B * S
            rows = flat // max(s, 1)  # (N,) user of each pair
            e_item = (
                self.item_embedding(support_items.reshape(-1)[flat])
                if item_vectors is None
                # explicit width: a (B, 0, Di) tensor has no size to infer -1 from
                else item_vectors.reshape(b * s, item_vectors.shape[-1])[flat]
            )  # (N, Di)
            y = self._normalise_labels(support_labels.reshape(-1)[flat])[:, None]  # (N, 1)
            counts = torch.zeros(b, dtype=y.dtype).index_add_(0, rows, torch.ones_like(y[:, 0]))
            counts = counts.clamp_min(1.0)[:, None]  # (B, 1); a user without support pools to 0
            # index_select: its backward is an index_add, much cheaper than indexing's index_put
            user_part = per_user.index_select(0, rows)  # (N, A)
            mean_y = None
            if interaction:
                sums = torch.zeros(b, 1, dtype=y.dtype).index_add_(0, rows, y)
                mean_y = (sums / counts).index_select(0, rows)  # (N, 1)
        pre = user_part + e_item @ weight[:, :di].T + y * weight[:, di + du]  # (..., A)
        if mean_y is not None:
            pre = pre + ((y - mean_y) * e_item) @ weight[:, di + du + 1 :].T
        c = nn.functional.leaky_relu(pre)  # (B, S, A) dense, (N, A) packed
        for layer in self.encoder_extra:
            c = nn.functional.leaky_relu(layer(c))
        # (B, A) mean over each user's support pairs
        pooled = c.mean(1) if dense else c.new_zeros(b, c.shape[1]).index_add_(0, rows, c) / counts
        return self._activate(self.head(pooled))  # (B, P)

    def _activate(self, raw: torch.Tensor) -> torch.Tensor:
        """Make ``mul`` slices non-negative, equal to 1 at a zero head output."""
        parts, start = [], 0
        for (_, op), sl in self.layout.slices.items():
            x = raw[:, sl]
            if op == "mul":
                if self.config.mul_activation == "softplus":
                    x = nn.functional.softplus(x + math.log(math.e - 1.0))
                else:
                    x = torch.relu(x + 1.0)
            parts.append(x)
            start = sl.stop
        assert start == raw.shape[1]
        return torch.cat(parts, dim=1) if parts else raw

    def adapt(self, batch: TaskBatch) -> torch.Tensor:
        """``TaskBatch`` -> ``(B, P)`` user-specific modulation parameters."""
        user_vec = self.embed_users(batch.users)
        return self.adapt_embedded(
            user_vec, batch.support_items, batch.support_labels, batch.support_mask
        )

    # ----------------------------------------------------------------------------- prediction
    def gates(self) -> torch.Tensor | None:
        """``(n_positions, 4)`` gate values ``sigmoid(logits)`` (supernet only)."""
        return None if self.gate_logits is None else torch.sigmoid(self.gate_logits)

    def _modulate(
        self, h: torch.Tensor, position: int, params: torch.Tensor, gates: torch.Tensor | None
    ) -> torch.Tensor:
        """Apply the ops of ``position``; ``h`` is ``(B, Q, D)``, ``params`` ``(B, P)``."""
        for k, op in enumerate(OPS):
            sl = self.layout.slices.get((position, op))
            if sl is None:
                continue
            p = params[:, None, sl]  # (B, 1, D)
            h = apply_op(h, op, p) if gates is None else _gated(h, op, p, gates[position, k])
        return h

    def predict_embedded(
        self,
        params: torch.Tensor,
        user_vec: torch.Tensor,
        query_items: torch.Tensor,
        item_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score items with given parameters.

        Args:
            params: ``(B, P)`` from :meth:`adapt_embedded`.
            user_vec: ``(B, Du)`` user embeddings.
            query_items: ``(B, Q)`` item indices.
            item_vectors: optional ``(B, Q, Di)`` precomputed embeddings of ``query_items``.

        Returns:
            ``(B, Q)`` predicted ratings in ``rating_range``.
        """
        low, high = self.config.rating_range
        logits = self.logits_embedded(params, user_vec, query_items, item_vectors)
        return low + (high - low) * torch.sigmoid(logits)  # (B, Q)

    def predict_from_fc1(
        self, pre1: torch.Tensor, params: torch.Tensor, query_items: torch.Tensor
    ) -> torch.Tensor:
        """The rest of the predictor from fc1's pre-activation ``pre1`` ``(B, Q, D1)``.

        Split out so that serving can compute ``pre1`` faster when position 0 allows it
        (see ``ColdStartRecommender.score``); returns ``(B, Q)`` predictions.
        """
        low, high = self.config.rating_range
        return low + (high - low) * torch.sigmoid(self.logits_from_fc1(pre1, params, query_items))

    def logits_from_fc1(
        self, pre1: torch.Tensor, params: torch.Tensor, query_items: torch.Tensor
    ) -> torch.Tensor:
        """``(B, Q)`` output logits (before the sigmoid) from fc1's pre-activation: what a
        ranking loss trains and what ranks items without float32 saturation ties."""
        gates = self.gates()
        h = torch.relu(self._modulate(pre1, 1, params, gates))  # (B, Q, D1)
        for k, layer in enumerate(self.hidden[1:], start=2):
            h = torch.relu(self._modulate(layer(h), k, params, gates))  # (B, Q, Dk)
        return self.out(h).squeeze(-1) + self.item_prior[query_items]  # (B, Q)

    def logits_embedded(
        self,
        params: torch.Tensor,
        user_vec: torch.Tensor,
        query_items: torch.Tensor,
        item_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Like :meth:`predict_embedded` but returns the ``(B, Q)`` logits."""
        gates = self.gates()
        e_item = self.item_embedding(query_items) if item_vectors is None else item_vectors
        e_user = user_vec[:, None, :].expand(-1, e_item.shape[1], -1)  # (B, Q, Du)
        h = self._modulate(torch.cat([e_item, e_user], dim=-1), 0, params, gates)  # (B, Q, D0)
        return self.logits_from_fc1(self.hidden[0](h), params, query_items)

    def predict(
        self, params: torch.Tensor, users: torch.Tensor, query_items: torch.Tensor
    ) -> torch.Tensor:
        """``(B, P)`` params, ``(B,)`` users, ``(B, Q)`` items -> ``(B, Q)`` predictions."""
        return self.predict_embedded(params, self.embed_users(users), query_items)

    def forward(self, batch: TaskBatch) -> torch.Tensor:
        """Adapt to each support set, then predict the query set: ``(B, Q)``."""
        user_vec = self.embed_users(batch.users)
        params = self.adapt_embedded(
            user_vec, batch.support_items, batch.support_labels, batch.support_mask
        )
        return self.predict_embedded(params, user_vec, batch.query_items)
