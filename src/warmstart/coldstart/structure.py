"""ColdNAS modulation search space as data, and the reduction theorem as a pure function.

Implements the search space of Wu et al., "Modulation Search for User Cold-Start Recommendation"
(ColdNAS, WWW 2023, arXiv 2306.03387), Sec. 4. Each modulation position holds a subset of the four
elementwise operations ``max(h, p)``, ``min(h, p)``, ``h * p`` (``p >= 0``) and ``h + p``, always
applied in the canonical order ``max -> min -> mul -> add``. The reduction theorem says any
sequence of these operations (any order, any repetition) equals that canonical form with
re-derived parameters; :func:`canonicalize` derives them explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

OPS: tuple[str, ...] = ("max", "min", "mul", "add")
"""The four modulation operations, in canonical order."""


@dataclass(frozen=True)
class Structure:
    """A point of the search space: for each modulation position, the operations it applies.

    Attributes:
        positions: one tuple of operation names per position, each a subset of ``OPS`` in
            canonical order (``max, min, mul, add``). Position 0 is the embedding output,
            position k >= 1 the pre-activation of hidden layer k.
    """

    positions: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if not self.positions:
            raise ValueError("Structure.positions: need at least one position")
        for i, ops in enumerate(self.positions):
            unknown = [op for op in ops if op not in OPS]
            if unknown:
                raise ValueError(
                    f"Structure.positions[{i}]: unknown operations {unknown}, allowed {list(OPS)}"
                )
            canonical = tuple(op for op in OPS if op in ops)
            if tuple(ops) != canonical:
                raise ValueError(
                    f"Structure.positions[{i}]: {list(ops)} must be distinct and in canonical "
                    f"order {list(canonical)}"
                )

    @classmethod
    def from_ops(cls, chosen: Iterable[tuple[int, str]], n_positions: int) -> Structure:
        """Build from a set of ``(position, op)`` pairs; order of the pairs does not matter."""
        chosen = set(chosen)
        bad = [(p, o) for p, o in chosen if not 0 <= p < n_positions or o not in OPS]
        if bad:
            raise ValueError(f"Structure.from_ops: invalid (position, op) pairs {sorted(bad)}")
        return cls(tuple(tuple(o for o in OPS if (p, o) in chosen) for p in range(n_positions)))

    @classmethod
    def film(cls, n_positions: int = 4) -> Structure:
        """FiLM / TaNP-style modulation: ``h * p_mul + p_add`` at every position."""
        return cls(tuple(("mul", "add") for _ in range(n_positions)))

    @classmethod
    def full(cls, n_positions: int = 4) -> Structure:
        """Every operation at every position (the supernet's space)."""
        return cls(tuple(OPS for _ in range(n_positions)))

    @property
    def n_positions(self) -> int:
        return len(self.positions)

    @property
    def n_ops(self) -> int:
        return sum(len(ops) for ops in self.positions)

    def pairs(self) -> list[tuple[int, str]]:
        """The chosen ``(position, op)`` pairs, position-major, canonical order."""
        return [(p, op) for p, ops in enumerate(self.positions) for op in ops]

    def to_dict(self) -> dict[str, object]:
        return {"positions": [list(ops) for ops in self.positions]}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Structure:
        positions = data.get("positions")
        if not isinstance(positions, list) or not all(isinstance(p, list) for p in positions):
            raise ValueError(f"Structure: 'positions' must be a list of lists, got {positions!r}")
        return cls(tuple(tuple(str(op) for op in ops) for ops in positions))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Structure:
        return cls.from_dict(json.loads(text))

    @classmethod
    def parse(cls, spec: str, n_positions: int = 4) -> Structure:
        """Parse ``"film"``, ``"full"``, JSON, or the short form ``"add|add|max+add|-"``."""
        spec = spec.strip()
        if spec in ("film", "full"):
            return cls.film(n_positions) if spec == "film" else cls.full(n_positions)
        if spec.startswith("{"):
            return cls.from_json(spec)
        parts = [p.strip() for p in spec.split("|")]
        return cls(tuple(() if p in ("-", "") else tuple(p.split("+")) for p in parts))

    def __str__(self) -> str:
        return " | ".join(f"{i}:{'+'.join(ops) or '-'}" for i, ops in enumerate(self.positions))


@dataclass(frozen=True)
class CanonicalParams:
    """Parameters of ``min(max(h, max_), min_) * mul + add``; absent ops hold their identity.

    Identities: ``max_ = -inf``, ``min_ = +inf``, ``mul = 1``, ``add = 0``. All tensors broadcast
    against ``h``.
    """

    max_: torch.Tensor
    min_: torch.Tensor
    mul: torch.Tensor
    add: torch.Tensor

    def present(self) -> tuple[str, ...]:
        """Operations whose parameter differs from the identity somewhere, canonical order."""
        flags = {
            "max": bool(torch.isfinite(self.max_).any()),
            "min": bool(torch.isfinite(self.min_).any()),
            "mul": bool((self.mul != 1).any()),
            "add": bool((self.add != 0).any()),
        }
        return tuple(op for op in OPS if flags[op])


def apply_op(h: torch.Tensor, op: str, p: torch.Tensor) -> torch.Tensor:
    """One modulation operation, elementwise (``p`` broadcasts against ``h``; ``mul`` needs p >= 0)."""
    if op == "max":
        return torch.maximum(h, p)
    if op == "min":
        return torch.minimum(h, p)
    if op == "mul":
        return h * p
    if op == "add":
        return h + p
    raise ValueError(f"unknown modulation op {op!r}, allowed {list(OPS)}")


def apply_sequence(h: torch.Tensor, ops: Sequence[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """Apply ``ops`` left to right."""
    for op, p in ops:
        h = apply_op(h, op, p)
    return h


def apply_canonical(h: torch.Tensor, params: CanonicalParams) -> torch.Tensor:
    """``min(max(h, max_), min_) * mul + add``."""
    return torch.minimum(torch.maximum(h, params.max_), params.min_) * params.mul + params.add


def canonicalize(ops: Sequence[tuple[str, torch.Tensor]], like: torch.Tensor) -> CanonicalParams:
    """Derive canonical-form parameters equal to applying ``ops`` in sequence (reduction theorem).

    Invariant: after each step the composed map is ``min(max(h, a), b) * m + c`` with ``m >= 0``.
    ``+p``: ``c += p``. ``*p``: ``m *= p, c *= p``. ``max(., p)`` with ``m > 0`` and
    ``t = (p - c) / m``: ``a = max(a, t), b = max(b, t)`` (lattice distributivity);
    ``min(., p)``: ``b = min(b, t)``. When ``m == 0`` the map is the constant ``c`` and the op
    applies to ``c`` directly.

    Args:
        ops: ``(op, p)`` pairs, ``p`` broadcastable to ``like``; ``mul`` parameters must be >= 0.
        like: a tensor giving the shape/dtype of the parameters (e.g. the input ``h``).

    Returns:
        The canonical parameters, each shaped like ``like``.
    """
    a = torch.full_like(like, float("-inf"))
    b = torch.full_like(like, float("inf"))
    m, c = torch.ones_like(like), torch.zeros_like(like)
    for op, p in ops:
        p = torch.broadcast_to(p, like.shape).to(like.dtype)
        if op == "add":
            c = c + p
        elif op == "mul":
            if bool((p < 0).any()):
                raise ValueError("canonicalize: 'mul' parameters must be non-negative")
            m, c = m * p, c * p
        elif op in ("max", "min"):
            live = m > 0
            t = torch.where(live, (p - c) / torch.where(live, m, 1.0), p)
            if op == "max":
                a, b = (
                    torch.where(live, torch.maximum(a, t), a),
                    torch.where(live, torch.maximum(b, t), b),
                )
                c = torch.where(live, c, torch.maximum(c, p))
            else:
                b = torch.where(live, torch.minimum(b, t), b)
                c = torch.where(live, c, torch.minimum(c, p))
        else:
            raise ValueError(f"unknown modulation op {op!r}, allowed {list(OPS)}")
    return CanonicalParams(a, b, m, c)
