"""Search-space data type and the reduction theorem (ColdNAS Sec. 4.2)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.coldstart.structure import (
    OPS,
    Structure,
    apply_canonical,
    apply_sequence,
    canonicalize,
)

subsets = st.lists(st.sampled_from(OPS), unique=True).map(
    lambda ops: tuple(o for o in OPS if o in ops)
)
structures = st.lists(subsets, min_size=1, max_size=5).map(lambda ps: Structure(tuple(ps)))


@given(structures)
def test_json_round_trip(structure: Structure) -> None:
    assert Structure.from_json(structure.to_json()) == structure
    assert Structure.parse(structure.to_json()) == structure


@given(structures)
def test_short_form_round_trip(structure: Structure) -> None:
    short = "|".join("+".join(ops) or "-" for ops in structure.positions)
    assert Structure.parse(short) == structure


def test_all_subsets_are_valid_and_distinct() -> None:
    subsets_all = [
        tuple(o for o, keep in zip(OPS, bits, strict=True) if keep)
        for bits in itertools.product([0, 1], repeat=4)
    ]
    assert len({Structure((s,)) for s in subsets_all}) == 16


@pytest.mark.parametrize("bad", [(("add", "mul"),), (("max", "max"),), (("scale",),), ()])
def test_invalid_structures_raise(bad: tuple[tuple[str, ...], ...]) -> None:
    with pytest.raises(ValueError, match="Structure"):
        Structure(bad)


def test_presets() -> None:
    assert Structure.film(4).positions == (("mul", "add"),) * 4
    assert Structure.full(3).n_ops == 12
    assert Structure.from_ops([(2, "add"), (0, "max"), (2, "max")], 4).positions == (
        ("max",),
        (),
        ("max", "add"),
        (),
    )


op_sequences = st.lists(st.sampled_from(OPS), min_size=0, max_size=8)


@settings(max_examples=200, deadline=None)
@given(op_sequences, st.integers(0, 2**31 - 1))
def test_reduction_theorem(ops: list[str], seed: int) -> None:
    """Any op sequence equals its canonical form with the derived parameters."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(64, generator=g, dtype=torch.float64) * 2
    seq = []
    for op in ops:
        p = torch.randn(64, generator=g, dtype=torch.float64)
        seq.append((op, torch.nn.functional.softplus(p) if op == "mul" else p))
    params = canonicalize(seq, h)
    torch.testing.assert_close(apply_canonical(h, params), apply_sequence(h, seq))
    # The canonical form uses only operation types that occur in the sequence.
    assert set(params.present()) <= set(ops)


def test_reduction_with_zero_scale() -> None:
    h = torch.linspace(-3, 3, 13, dtype=torch.float64)
    seq = [
        ("mul", torch.zeros(13, dtype=torch.float64)),
        ("max", torch.full((13,), 0.5, dtype=torch.float64)),
        ("add", torch.ones(13, dtype=torch.float64)),
    ]
    torch.testing.assert_close(apply_canonical(h, canonicalize(seq, h)), apply_sequence(h, seq))


def test_negative_scale_rejected() -> None:
    h = torch.zeros(3)
    with pytest.raises(ValueError, match="non-negative"):
        canonicalize([("mul", -torch.ones(3))], h)


def test_canonical_form_of_canonical_sequence_is_itself() -> None:
    rng = np.random.default_rng(0)
    h = torch.as_tensor(rng.normal(size=10))
    lo, hi = torch.as_tensor(rng.normal(size=10) - 2), torch.as_tensor(rng.normal(size=10) + 2)
    m, c = torch.as_tensor(rng.uniform(0.5, 2, size=10)), torch.as_tensor(rng.normal(size=10))
    params = canonicalize([("max", lo), ("min", hi), ("mul", m), ("add", c)], h)
    torch.testing.assert_close(params.max_, lo)
    torch.testing.assert_close(params.min_, hi)
    torch.testing.assert_close(params.mul, m)
    torch.testing.assert_close(params.add, c)
