"""ColdNAS model: embeddings, batching, supernet gates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from warmstart.coldstart.model import PAD, ColdNAS, ColdNASConfig, FeatureEmbedding
from warmstart.coldstart.structure import OPS, Structure
from warmstart.data import types
from warmstart.data.synthetic import synthetic_split
from warmstart.data.types import FeatureField, FeatureTable, collate_tasks

TINY = ColdNASConfig(
    embedding_dim=4, hidden_sizes=(8, 6, 4), adaptation_dim=8, rating_range=(1.0, 5.0)
)


@pytest.fixture(scope="module")
def split() -> types.EpisodeSplit:
    return synthetic_split(n_users=60, n_items=40, interactions_per_user=(15, 25), seed=3)


def _model(
    split: types.EpisodeSplit,
    structure: Structure | None,
    seed: int = 0,
    config: ColdNASConfig = TINY,
) -> ColdNAS:
    g = torch.Generator().manual_seed(seed)
    return ColdNAS(config, split.dataset.users, split.dataset.items, structure, generator=g)


def test_pad_matches_data_types() -> None:
    assert PAD == types.PAD


def test_multi_hot_embedding_is_mean_of_valid_entries() -> None:
    index = np.array([[0, 2, PAD], [PAD, PAD, PAD], [1, PAD, PAD]])
    table = FeatureTable(np.arange(3), (FeatureField("genre", 3, index),))
    emb = FeatureEmbedding(table, 5)
    out = emb(torch.tensor([[0, 1], [2, 0]]))  # (2, 2, 5)
    w = emb.bags[0].weight
    torch.testing.assert_close(out[0, 0], (w[0] + w[2]) / 2)
    torch.testing.assert_close(out[0, 1], torch.zeros(5))
    torch.testing.assert_close(out[1, 0], w[1])


def test_config_validation_names_field() -> None:
    with pytest.raises(ValueError, match="mul_activation"):
        ColdNASConfig(mul_activation="exp")
    with pytest.raises(ValueError, match="user_features"):
        ColdNASConfig(user_features="maybe")
    with pytest.raises(ValueError, match="set_encoder"):
        ColdNASConfig(set_encoder="deepsets")
    with pytest.raises(ValueError, match="encoder_layers"):
        ColdNASConfig(encoder_layers=0)


@pytest.mark.parametrize(
    "structure", [Structure.film(), None, Structure.parse("max|min+add|-|max+min+mul+add")]
)
@pytest.mark.parametrize("encoder", ["paper", "interaction"])
def test_batched_equals_per_user(
    split: types.EpisodeSplit, structure: Structure | None, encoder: str
) -> None:
    config = replace(TINY, set_encoder=encoder, encoder_layers=1 if encoder == "paper" else 2)
    model = _model(split, structure, config=config).eval()
    tasks = split.train[:6]
    with torch.no_grad():
        batched = model(collate_tasks(tasks))
        for i, t in enumerate(tasks):
            alone = model(collate_tasks([t]))[0]
            torch.testing.assert_close(batched[i, : len(t.query_items)], alone)


def test_adapt_predict_compose_to_forward(split: types.EpisodeSplit) -> None:
    model = _model(split, Structure.film()).eval()
    batch = collate_tasks(split.train[:4])
    with torch.no_grad():
        params = model.adapt(batch)
        assert params.shape == (4, model.layout.size)
        torch.testing.assert_close(
            model.predict(params, batch.users, batch.query_items), model(batch)
        )


def test_predictions_in_rating_range(split: types.EpisodeSplit) -> None:
    out = _model(split, None)(collate_tasks(split.train[:5]))
    assert bool((out > 1.0).all()) and bool((out < 5.0).all())


def test_mul_parameters_non_negative(split: types.EpisodeSplit) -> None:
    model = _model(split, Structure.film())
    with torch.no_grad():
        model.head.weight.normal_(0, 5.0)
        params = model.adapt(collate_tasks(split.train[:5]))
    for (_, op), sl in model.layout.slices.items():
        if op == "mul":
            assert bool((params[:, sl] >= 0).all())


def test_every_position_has_its_own_gates(split: types.EpisodeSplit) -> None:
    model = _model(split, None)
    assert model.gate_logits is not None and model.gate_logits.shape == (4, len(OPS))
    batch = collate_tasks(split.train[:8])
    loss = ((model(batch) - batch.query_labels) ** 2 * batch.query_mask).sum()
    loss.backward()
    grad = model.gate_logits.grad
    assert grad is not None
    # Each position's gates get their own, different gradient (no row is shared or unused).
    assert bool((grad.abs().sum(1) > 0).all())
    assert len({tuple(np.round(row.tolist(), 12)) for row in grad}) == 4


def test_saturated_supernet_equals_derived_structure(split: types.EpisodeSplit) -> None:
    """Gates at 1 for the chosen ops and 0 elsewhere reproduce the fixed-structure model."""
    structure = Structure.parse("max+add|mul|-|min+mul")
    supernet, fixed = _model(split, None, seed=1), _model(split, structure, seed=2)
    fixed.load_state_dict(
        {
            k: v
            for k, v in supernet.state_dict().items()
            if not k.startswith("head.") and k != "gate_logits"
        },
        strict=False,
    )
    with torch.no_grad():
        for key, sl in fixed.layout.slices.items():
            fixed.head.weight[sl] = supernet.head.weight[supernet.layout.slices[key]]
            fixed.head.bias[sl] = supernet.head.bias[supernet.layout.slices[key]]
        assert supernet.gate_logits is not None
        supernet.gate_logits.fill_(-1e4)
        for p, op in structure.pairs():
            supernet.gate_logits[p, OPS.index(op)] = 1e4
        batch = collate_tasks(split.train[:5])
        torch.testing.assert_close(supernet(batch), fixed(batch))


def test_user_features_auto_off_for_bare_ids() -> None:
    ids = FeatureTable.one_hot_ids(np.arange(5))
    assert not ColdNAS(ColdNASConfig(), ids, ids).use_user_features
    assert ColdNAS(ColdNASConfig(user_features="on"), ids, ids).use_user_features


@pytest.mark.parametrize("op", OPS)
def test_gated_relaxation_matches_definition(op: str) -> None:
    from warmstart.coldstart.model import _gated
    from warmstart.coldstart.structure import apply_op

    g = torch.Generator().manual_seed(0)
    h, p = torch.randn(3, 5, 7, generator=g), torch.randn(3, 1, 7, generator=g)
    if op == "mul":
        p = p.abs()
    for a in (0.0, 0.3, 1.0):
        alpha = torch.tensor(a)
        expected = alpha * apply_op(h, op, p) + (1 - alpha) * h
        torch.testing.assert_close(_gated(h, op, p, alpha), expected)


def test_user_without_support_pools_to_zero(split: types.EpisodeSplit) -> None:
    model = _model(split, Structure.film()).eval()
    batch = collate_tasks(split.train[:3])
    mask = batch.support_mask.clone()
    mask[1] = False  # user 1 has no support pair at all
    user_vec = model.embed_users(batch.users)
    with torch.no_grad():
        params = model.adapt_embedded(user_vec, batch.support_items, batch.support_labels, mask)
        empty = model._activate(model.head(torch.zeros(1, model.config.adaptation_dim)))
        alone = model.adapt_embedded(
            user_vec[:1], batch.support_items[:1], batch.support_labels[:1], mask[:1]
        )
    torch.testing.assert_close(params[1], empty[0])
    torch.testing.assert_close(params[0], alone[0])  # packed and dense paths agree
    assert torch.isfinite(params).all()


@pytest.mark.parametrize("encoder", ["paper", "interaction"])
@pytest.mark.parametrize("precomputed", [False, True])
def test_zero_support_pairs_give_the_no_information_state(
    split: types.EpisodeSplit, encoder: str, precomputed: bool
) -> None:
    """``S == 0`` (a new user with no interaction) is a valid input, also with cached vectors."""
    config = replace(TINY, set_encoder=encoder)
    model = _model(split, Structure.parse("max+add|mul|-|min+mul+add"), config=config).eval()
    users = torch.tensor([0, 1])
    items = torch.zeros((2, 0), dtype=torch.int64)
    labels = torch.zeros((2, 0))
    mask = torch.zeros((2, 0), dtype=torch.bool)
    vectors = model.item_embedding(items) if precomputed else None  # (2, 0, Di)
    with torch.no_grad():
        params = model.adapt_embedded(model.embed_users(users), items, labels, mask, vectors)
        empty = model._activate(model.head(torch.zeros(1, model.config.adaptation_dim)))
    assert params.shape == (2, model.layout.size)
    torch.testing.assert_close(params, empty.expand(2, -1))
