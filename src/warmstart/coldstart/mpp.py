"""Meta Parameter Partition (MPP): a click model whose parameters split into fixed and adaptive.

Implements Zhao, Wang, Dong, Tian, "Learning to Recommend via Meta Parameter Partition"
(arXiv 1912.04108, 2019). The model's parameters are partitioned by a *rule* (configuration, not
code) into

- **fixed** parameters θ_f (feature embeddings, lower layers): shared by every user, learned
  offline and frozen while new users stream in;
- **adaptive** parameters θ_a (the top layer, per-layer FiLM scale/shift vectors, or a user
  context vector fed to the first layer): the only per-user state. A user's θ_a' is θ_a's
  meta-initialisation after ``k`` gradient steps on the user's support set.

This module holds the model, the partition and the inner loop (``adapt``), which serving needs
too; it imports no optimiser, trainer or data loader. Offline/online meta-learning live in
``mpp_train.py``, the serving API in ``mpp_inference.py``.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from warmstart.coldstart.model import FeatureEmbedding, TableLike, _resolve_user_features

Params = dict[str, Tensor]

# Shipped partition rules: rule name -> fnmatch patterns over ``MPPNet.named_parameters()``.
RULES: dict[str, tuple[str, ...]] = {
    "top": ("head.out.*",),  # logistic regression on the shared features, per user
    "film": ("head.scale.*", "head.shift.*"),  # per-layer scale/shift of every hidden unit
    "context": ("head.context",),  # a per-user vector concatenated to the first layer's input
    "head": ("head.*",),  # every dense parameter: full-parameter MAML on this model
}
ADAPTIVE_PREFIX = "head."
"""Adaptive parameters must live in the dense head: embeddings are computed once per batch,
outside the per-user ``vmap``, so a per-user embedding table is not supported."""


@dataclass(frozen=True)
class PartitionRule:
    """Which parameters are adaptive (per user); every other parameter is fixed (shared).

    Attributes:
        name: a shipped rule (``RULES``) or ``"custom"``.
        adaptive: fnmatch patterns over full parameter names; empty = the patterns of ``name``.
    """

    name: str = "top"
    adaptive: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in RULES and self.name != "custom":
            raise ValueError(f"PartitionRule.name={self.name!r}, allowed {[*RULES, 'custom']}")
        if self.name == "custom" and not self.adaptive:
            raise ValueError("PartitionRule: a custom rule needs its adaptive patterns")
        if not self.adaptive:  # a shipped rule stores its patterns, so saved rules compare equal
            object.__setattr__(self, "adaptive", RULES[self.name])
        for p in self.patterns:
            if not p.startswith(ADAPTIVE_PREFIX):
                raise ValueError(
                    f"PartitionRule.adaptive pattern {p!r} must start with {ADAPTIVE_PREFIX!r} "
                    "(only the dense head can be adapted per user)"
                )

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.adaptive

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "adaptive": list(self.patterns)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartitionRule:
        unknown = set(data) - {"name", "adaptive"}
        if unknown:
            raise ValueError(f"PartitionRule: unknown keys {sorted(unknown)}")
        return cls(str(data.get("name", "custom")), tuple(data.get("adaptive", ())))

    @classmethod
    def parse(cls, spec: str) -> PartitionRule:
        """A rule from a shipped name (``top``) or a JSON object (``{"adaptive": [...]}``)."""
        spec = spec.strip()
        if spec.startswith("{"):
            return cls.from_dict(json.loads(spec))
        return cls(spec)


def partition(
    named_parameters: Iterable[tuple[str, Tensor]], rule: PartitionRule
) -> tuple[Params, Params]:
    """Split parameters into ``(fixed, adaptive)`` by ``rule``; each name lands in exactly one.

    Raises:
        ValueError: a pattern matches no parameter, or the rule leaves nothing adaptive.
    """
    named = dict(named_parameters)
    for p in rule.patterns:
        if not fnmatch.filter(named, p):
            raise ValueError(f"partition: pattern {p!r} matches no parameter of {sorted(named)}")
    fixed: Params = {}
    adaptive: Params = {}
    for name, value in named.items():
        is_adaptive = any(fnmatch.fnmatchcase(name, p) for p in rule.patterns)
        (adaptive if is_adaptive else fixed)[name] = value
    if not adaptive:
        raise ValueError(f"partition: rule {rule.name!r} leaves no adaptive parameter")
    return fixed, adaptive


@dataclass(frozen=True)
class MPPConfig:
    """Architecture of the MPP click model.

    Attributes:
        embedding_dim: width of each feature field's embedding.
        hidden: hidden layer widths of the dense head.
        context_dim: width of the user context vector concatenated to the first layer's input
            (adaptive under the ``context`` rule; a shared learned vector otherwise).
        init_std: std of the normal init of embedding tables.
        user_features: ``"on"`` / ``"off"`` / ``"auto"`` (on unless the user table is a bare id,
            whose embedding is untrained noise for a cold-start user), as in ColdNAS.
    """

    embedding_dim: int = 16
    hidden: tuple[int, ...] = (64, 32)
    context_dim: int = 8
    init_std: float = 0.01
    user_features: str = "auto"

    def __post_init__(self) -> None:
        if self.embedding_dim < 1 or self.context_dim < 1:
            raise ValueError("MPPConfig.embedding_dim and context_dim must be >= 1")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"MPPConfig.hidden must be positive sizes, got {self.hidden}")
        if self.init_std <= 0:
            raise ValueError(f"MPPConfig.init_std must be > 0, got {self.init_std}")
        if self.user_features not in ("auto", "on", "off"):
            raise ValueError(
                f"MPPConfig.user_features={self.user_features!r}, allowed ('auto', 'on', 'off')"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MPPConfig:
        return cls(**{**data, "hidden": tuple(data["hidden"])})


class MPPHead(nn.Module):
    """Dense head: ``[x, context] -> (Linear -> scale * . + shift -> ReLU)* -> Linear -> logit``."""

    def __init__(self, in_dim: int, config: MPPConfig) -> None:
        super().__init__()
        self.context = nn.Parameter(torch.zeros(config.context_dim))
        widths = (in_dim + config.context_dim, *config.hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.scale = nn.ParameterList(nn.Parameter(torch.ones(h)) for h in config.hidden)
        self.shift = nn.ParameterList(nn.Parameter(torch.zeros(h)) for h in config.hidden)
        self.out = nn.Linear(widths[-1], 1)

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer ``(*, H)`` for pair inputs ``x (*, D)`` (the top layer's input)."""
        context = self.context.expand(*x.shape[:-1], -1)  # (*, C)
        h = torch.cat([x, context], dim=-1)
        for layer, scale, shift in zip(self.layers, self.scale, self.shift, strict=True):
            h = torch.relu(scale * layer(h) + shift)
        return h

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(*, D)`` pair inputs. Returns ``(*,)`` click logits."""
        return self.out(self.features(x)).squeeze(-1)


class MPPNet(nn.Module):
    """Feature embeddings (ColdNAS's ``FeatureEmbedding``) plus the partitionable dense head.

    Args:
        config: architecture.
        users / items: the dataset's feature tables (rows = dense indices).
    """

    def __init__(self, config: MPPConfig, users: TableLike, items: TableLike) -> None:
        super().__init__()
        self.config = config
        self.item_embedding = FeatureEmbedding(items, config.embedding_dim)
        self.user_embedding = FeatureEmbedding(users, config.embedding_dim)
        self.use_user_features = _resolve_user_features(config.user_features, users)
        self.user_dim = self.user_embedding.out_dim if self.use_user_features else 0
        self.in_dim = self.item_embedding.out_dim + self.user_dim
        self.head = MPPHead(self.in_dim, config)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Seeded init: embeddings N(0, init_std) (padding row 0), Xavier dense weights."""
        with torch.no_grad():
            for emb in (self.item_embedding, self.user_embedding):
                for bag in emb.bags:
                    assert isinstance(bag, nn.EmbeddingBag)
                    nn.init.normal_(bag.weight, 0.0, self.config.init_std, generator=generator)
                    bag.weight[-1].zero_()
            for lin in (*self.head.layers, self.head.out):
                assert isinstance(lin, nn.Linear)
                nn.init.xavier_uniform_(lin.weight, generator=generator)
                lin.bias.zero_()

    def embed_users(self, users: Tensor) -> Tensor:
        """``(B,)`` user indices -> ``(B, Du)`` (``Du == 0`` without user features)."""
        if not self.use_user_features:
            return users.new_zeros((users.shape[0], 0), dtype=torch.float32)
        return self.user_embedding(users)

    def inputs(self, item_vectors: Tensor, user_vectors: Tensor) -> Tensor:
        """Pair inputs ``(B, N, D)`` from item vectors ``(B, N, Di)`` and user vectors ``(B, Du)``."""
        users = user_vectors[:, None, :].expand(-1, item_vectors.shape[1], -1)
        return torch.cat([item_vectors, users], dim=-1)

    def embed(self, users: Tensor, items: Tensor) -> Tensor:
        """``(B,)`` users and ``(B, N)`` items -> ``(B, N, D)`` head inputs."""
        return self.inputs(self.item_embedding(items), self.embed_users(users))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Click logits ``(B, N)`` with the shared (meta-initial) parameters, no adaptation."""
        return self.head(self.embed(users, items))


def head_call(net: MPPNet, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Head logits ``(*,)`` for inputs ``x (*, D)`` with head parameters keyed ``head.*``."""
    local = {k[len(ADAPTIVE_PREFIX) :]: v for k, v in params.items()}
    out: Tensor = functional_call(net.head, local, (x,), strict=True)
    return out


def masked_bce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean binary cross-entropy over valid entries of the last axis (0 when none is valid)."""
    m = mask.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return (loss * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def support_loss(
    net: MPPNet, adaptive: Params, fixed_head: Params, x: Tensor, y: Tensor, m: Tensor
) -> Tensor:
    """One user's support BCE: ``x (S, D)``, ``y (S,)``, ``m (S,)``."""
    return masked_bce(head_call(net, {**fixed_head, **adaptive}, x), y, m)


def adapt_one(
    net: MPPNet,
    adaptive: Params,
    fixed_head: Params,
    x: Tensor,
    y: Tensor,
    m: Tensor,
    lrs: Mapping[str, Tensor],
    steps: int,
    first_order: bool,
) -> Params:
    """Inner loop for one user: ``steps`` SGD steps on the adaptive part only.

    The fixed parameters enter only as constants of the loss; the update touches ``adaptive``'s
    keys and nothing else. ``first_order`` detaches the inner gradients (FOMAML).
    """

    def loss(a: Params) -> Tensor:
        return support_loss(net, a, fixed_head, x, y, m)

    grad_fn = grad(loss)
    for _ in range(steps):
        g = grad_fn(adaptive)
        adaptive = {
            k: v - lrs[k] * (g[k].detach() if first_order else g[k]) for k, v in adaptive.items()
        }
    return adaptive


def adapt(
    net: MPPNet,
    adaptive: Params,
    fixed_head: Params,
    x: Tensor,
    y: Tensor,
    m: Tensor,
    lrs: Mapping[str, Tensor],
    steps: int,
    first_order: bool = False,
) -> Params:
    """Inner loop for a batch of users in one ``vmap`` call.

    Args:
        adaptive: meta-initial adaptive parameters (shared by the batch, unbatched shapes).
        fixed_head: the fixed head parameters (shared).
        x: ``(B, S, D)`` support inputs; y / m: ``(B, S)`` labels / validity mask.
        lrs: step size per adaptive parameter (scalar tensors).

    Returns:
        Adapted parameters, each ``(B, *shape)``.
    """

    def one(xb: Tensor, yb: Tensor, mb: Tensor) -> Params:
        return adapt_one(net, adaptive, fixed_head, xb, yb, mb, lrs, steps, first_order)

    out: Params = vmap(one)(x, y, m)
    return out


def adapted_logits(net: MPPNet, adapted: Params, fixed_head: Params, x: Tensor) -> Tensor:
    """Logits ``(B, Q)`` for inputs ``x (B, Q, D)`` with per-user ``adapted (B, ...)``."""

    def one(a: Params, xb: Tensor) -> Tensor:
        return head_call(net, {**fixed_head, **a}, xb)

    out: Tensor = vmap(one)(adapted, x)
    return out


def fixed_head_params(fixed: Mapping[str, Tensor]) -> Params:
    """The head's share of the fixed parameters (embedding tables are applied before the head)."""
    return {k: v for k, v in fixed.items() if k.startswith(ADAPTIVE_PREFIX)}


TOP = ("head.out.weight", "head.out.bias")


def adapt_top(
    h: Tensor, y: Tensor, weight: Tensor, bias: Tensor, lr_w: float, lr_b: float, steps: int
) -> tuple[Tensor, Tensor]:
    """The inner loop of the ``top`` rule in closed form: the fixed layers' features ``h (S, H)``
    are computed once and the mean-BCE gradient of the logistic top layer is written out,
    ``dL/dw = h^T (p - y) / S``, ``dL/db = mean(p - y)``; same result as ``adapt_one``.

    Args: weight ``(1, H)``, bias ``(1,)``, y ``(S,)``. Returns the adapted ``(weight, bias)``.
    """
    n = max(int(y.numel()), 1)
    for _ in range(steps):
        r = (torch.sigmoid(h @ weight[0] + bias) - y) / n  # (S,)
        weight = weight - lr_w * (r @ h)[None]
        bias = bias - lr_b * r.sum().reshape(1)
    return weight, bias


def flat_size(params: Mapping[str, Tensor]) -> int:
    return sum(int(v.numel()) for v in params.values())


def flatten(params: Mapping[str, Tensor], names: Iterable[str]) -> Tensor:
    """Concatenate ``params[names]`` into one ``(P,)`` vector (the per-user state layout)."""
    return torch.cat([params[n].reshape(-1) for n in names])


def unflatten(vector: Tensor, shapes: Mapping[str, torch.Size]) -> Params:
    """Inverse of ``flatten``: ``(..., P)`` -> ``{name: (..., *shape)}`` in ``shapes`` order."""
    out, start = {}, 0
    lead = vector.shape[:-1]
    for name, shape in shapes.items():
        n = int(torch.Size(shape).numel())
        out[name] = vector[..., start : start + n].reshape(*lead, *shape)
        start += n
    if start != vector.shape[-1]:
        raise ValueError(f"unflatten: vector has {vector.shape[-1]} values, layout needs {start}")
    return out
