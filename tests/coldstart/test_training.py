"""ColdNAS training: resume, search/derive/retrain on validation only, quality vs popularity."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from warmstart.coldstart.baselines import ItemPopularity
from warmstart.coldstart.evaluate import evaluate
from warmstart.coldstart.model import ColdNASConfig
from warmstart.coldstart.structure import Structure
from warmstart.coldstart.training import (
    ColdNASPredictor,
    EpisodePools,
    TrainConfig,
    derive_structure,
    search_and_retrain,
    train_structure,
)
from warmstart.data import types
from warmstart.data.synthetic import synthetic_split

TINY = ColdNASConfig(embedding_dim=8, hidden_sizes=(16, 8, 8), adaptation_dim=16)


@pytest.fixture(scope="module")
def split() -> types.EpisodeSplit:
    return synthetic_split(n_users=200, n_items=60, interactions_per_user=(15, 40), seed=1)


def test_derive_top_k() -> None:
    gates = np.array(
        [[0.9, 0.1, 0.2, 0.8], [0.3, 0.3, 0.3, 0.3], [0.5, 0.95, 0.1, 0.1], [0.0, 0.0, 0.7, 0.0]]
    )
    assert derive_structure(gates, 3) == Structure.parse("max+add|-|min|-")
    assert derive_structure(gates, 4) == Structure.parse("max+add|-|min|mul")
    assert derive_structure(gates, 0).n_ops == 0
    # ties broken by (position, op) order
    assert derive_structure(np.full((4, 4), 0.5), 2) == Structure.parse("max+min|-|-|-")
    with pytest.raises(ValueError, match="k must be"):
        derive_structure(gates, 17)


def test_episode_pools_from_users_respect_train_users(split: types.EpisodeSplit) -> None:
    pools = EpisodePools.from_users(split)
    assert set(pools.users.tolist()) <= set(split.train_users.tolist())
    batch = pools.sample(np.random.default_rng(0))
    s, q = batch.support_mask.sum(1), batch.query_mask.sum(1)
    assert bool((s >= 1).all()) and bool((q >= 1).all())
    assert int(s.max()) <= pools.max_support and int((s + q).max()) <= pools.cap
    # every episode is a subset of its user's interactions, support and query disjoint
    inter = split.train_interactions()
    for row in range(0, len(batch), 17):
        user = int(batch.users[row])
        mine = inter[inter["user"] == user]
        support = batch.support_items[row][batch.support_mask[row]].tolist()
        query = batch.query_items[row][batch.query_mask[row]].tolist()
        assert set(support) | set(query) <= set(mine["item"].tolist())
        assert len(set(support) | set(query)) == len(support) + len(query)


def test_resampled_tasks_keep_task_sizes(split: types.EpisodeSplit) -> None:
    pools = EpisodePools.from_tasks(split.train)
    batch = pools.sample(np.random.default_rng(1))
    expected = [len(t.support_items) for t in split.train]
    assert batch.support_mask.sum(1).tolist() == expected


@pytest.mark.parametrize("episodes", ["fixed", "resample-users"])
def test_resume_after_interruption_matches_uninterrupted(
    split: types.EpisodeSplit, tmp_path: Path, episodes: str
) -> None:
    config = TrainConfig(
        epochs=4, eval_every=1, checkpoint_every=3, lr=3e-3, seed=5, train_episodes=episodes
    )
    full_model, full = train_structure(split, None, TINY, config, tmp_path / "full")
    # interrupted after 2 epochs (a checkpoint is written on stop), then resumed
    from warmstart.coldstart.training import build_model, fit, training_pools

    part = build_model(split, TINY, None, config.seed)
    stopped = fit(
        part,
        split.train,
        split.valid,
        config,
        tmp_path / "part",
        stop_after=2,
        pools=training_pools(split, config),
    )
    assert not stopped.completed
    resumed_model, resumed = train_structure(split, None, TINY, config, tmp_path / "part")
    assert resumed.best_epoch == full.best_epoch
    assert resumed.history == full.history
    for key, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, rtol=0, atol=0)
    assert full.best_gates is not None and resumed.best_gates is not None
    np.testing.assert_array_equal(full.best_gates, resumed.best_gates)


def test_best_checkpoint_is_a_copy(split: types.EpisodeSplit, tmp_path: Path) -> None:
    config = TrainConfig(epochs=6, eval_every=1, lr=1e-2, seed=0)
    model, result = train_structure(split, Structure.film(), TINY, config, tmp_path)
    best = load_file(str(tmp_path / "best.safetensors"))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(best[key], value)
    valid = [h["valid_mse"] for h in result.history]
    assert result.best_valid_mse == min(valid)
    assert result.best_epoch == result.history[int(np.argmin(valid))]["epoch"]


def test_search_uses_validation_only(split: types.EpisodeSplit, tmp_path: Path) -> None:
    no_test = dataclasses.replace(split, test=[], test_users=np.zeros(0, dtype=np.int64))
    config = TrainConfig(epochs=3, eval_every=1, lr=3e-3)
    outcome = search_and_retrain(no_test, TINY, config, k_values=(2, 5), out_dir=tmp_path)
    assert outcome.gates.shape == (4, 4)
    assert {c["k"] for c in outcome.candidates} == {2, 5}
    best = min(outcome.candidates, key=lambda c: c["valid_mse"])
    assert outcome.k == best["k"] and str(outcome.structure) == best["structure"]
    assert outcome.structure == derive_structure(outcome.gates, outcome.k)
    saved = json.loads((tmp_path / "gates.json").read_text())
    np.testing.assert_allclose(saved["gates"], outcome.gates)


def test_short_training_beats_popularity(split: types.EpisodeSplit) -> None:
    config = TrainConfig(epochs=30, eval_every=2, lr=3e-3, seed=0)
    coldnas = ColdNASPredictor(TINY, config, k_values=(8,))
    coldnas.fit(split)
    popularity = ItemPopularity("beta")
    popularity.fit(split)
    ours, theirs = evaluate(coldnas, split.test), evaluate(popularity, split.test)
    assert ours["MSE"] < theirs["MSE"]


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="train_episodes"):
        TrainConfig(train_episodes="sometimes")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_resume_refuses_a_different_config(split: types.EpisodeSplit, tmp_path: Path) -> None:
    train_structure(split, Structure.film(), TINY, TrainConfig(epochs=1, lr=1e-3), tmp_path)
    with pytest.raises(ValueError, match="different training config"):
        train_structure(split, Structure.film(), TINY, TrainConfig(epochs=2, lr=1e-2), tmp_path)


def test_supernet_can_train_under_its_own_config(split: types.EpisodeSplit, tmp_path: Path) -> None:
    retrain = TrainConfig(epochs=2, eval_every=1, lr=3e-3, weight_decay=3e-3)
    search = dataclasses.replace(retrain, weight_decay=1e-3)
    coldnas = ColdNASPredictor(TINY, retrain, k_values=(2,), out_dir=tmp_path, search_config=search)
    coldnas.fit(split)

    def stored(run: str) -> float:
        return json.loads((tmp_path / run / "last.json").read_text())["config"]["weight_decay"]

    assert stored("search") == 1e-3 and stored("retrain-k2") == 3e-3
    # by default the supernet trains without weight decay (it collapses the max/min clamps)
    default = ColdNASPredictor(TINY, retrain).search_config
    assert default == dataclasses.replace(retrain, weight_decay=0.0)


def test_stopped_fit_returns_the_best_weights(split: types.EpisodeSplit, tmp_path: Path) -> None:
    from warmstart.coldstart.training import build_model, fit

    config = TrainConfig(epochs=8, eval_every=1, lr=3e-2, seed=0, train_episodes="fixed")
    model = build_model(split, TINY, Structure.film(), 0)
    result = fit(model, split.train, split.valid, config, tmp_path, stop_after=6)
    assert not result.completed and not model.training
    best = load_file(str(tmp_path / "best.safetensors"))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0)
    valid = [h["valid_mse"] for h in result.history]
    assert result.best_valid_mse == min(valid) and len(valid) == 6
    if result.best_epoch < 6:  # the last weights (in the checkpoint) differ from the best
        last = load_file(str(tmp_path / "last.safetensors"))
        assert any(not torch.equal(last[f"model.{k}"], v) for k, v in best.items())


def test_config_is_checked_before_the_checkpoint_is_loaded(
    split: types.EpisodeSplit, tmp_path: Path
) -> None:
    from warmstart.coldstart.training import build_model, fit

    train_structure(split, Structure.film(), TINY, TrainConfig(epochs=1, lr=1e-3), tmp_path)
    model = build_model(split, TINY, Structure.film(), 7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="different training config"):
        fit(model, split.train, split.valid, TrainConfig(epochs=2, lr=1e-2), tmp_path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
