"""Serving API: load without training code, adapt/score equal the model, compact user states."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from warmstart.coldstart.inference import ColdStartRecommender, UserState, load_recommender
from warmstart.coldstart.model import ColdNASConfig
from warmstart.coldstart.structure import Structure
from warmstart.coldstart.training import TrainConfig, export, train_structure
from warmstart.data import types
from warmstart.data.synthetic import synthetic_split
from warmstart.data.types import collate_tasks

TINY = ColdNASConfig(embedding_dim=8, hidden_sizes=(16, 8, 8), adaptation_dim=16, item_prior=True)


@pytest.fixture(scope="module")
def split() -> types.EpisodeSplit:
    return synthetic_split(n_users=80, n_items=40, interactions_per_user=(15, 25), seed=2)


@pytest.fixture(scope="module")
def saved(
    split: types.EpisodeSplit, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("model")
    model, _ = train_structure(
        split, Structure.parse("max+add|mul|-|min+mul+add"), TINY, TrainConfig(epochs=2, lr=1e-2)
    )
    export(
        directory, model, split.dataset.users, split.dataset.items, {"seed": 0, "git_sha": "test"}
    )
    return directory, model


def test_import_does_not_load_training_code() -> None:
    code = (
        "import sys, warmstart.coldstart.inference\n"
        "bad = [m for m in ('warmstart.coldstart.training', 'warmstart.data', 'warmstart.data.episodes',"
        " 'warmstart.coldstart.evaluate') if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_loaded_recommender_matches_trained_model(
    split: types.EpisodeSplit, saved: tuple[Path, torch.nn.Module]
) -> None:
    directory, model = saved
    rec = load_recommender(directory)
    assert rec.structure == Structure.parse("max+add|mul|-|min+mul+add")
    assert rec.config["seed"] == 0 and "structure" in rec.config
    tasks = split.test[:5]
    with torch.no_grad():
        expected = model.eval()(collate_tasks(tasks))
    states = [rec.adapt(t.support_items, t.support_labels, t.user) for t in tasks]
    for i, (t, s) in enumerate(zip(tasks, states, strict=True)):
        got = rec.score(s, t.query_items)
        np.testing.assert_allclose(
            got, expected[i, : len(t.query_items)].numpy(), rtol=1e-5, atol=1e-6
        )


def test_score_batched_over_users_and_items(
    split: types.EpisodeSplit, saved: tuple[Path, torch.nn.Module]
) -> None:
    rec = load_recommender(saved[0])
    states = [rec.adapt(t.support_items, t.support_labels, t.user) for t in split.test[:4]]
    items = np.arange(rec.n_items)
    together = rec.score(states, items)
    assert together.shape == (4, rec.n_items)
    for i, s in enumerate(states):
        np.testing.assert_allclose(together[i], rec.score(s, items), rtol=1e-6)


def test_user_state_bytes_round_trip(
    split: types.EpisodeSplit, saved: tuple[Path, torch.nn.Module]
) -> None:
    rec = load_recommender(saved[0])
    t = split.test[0]
    state = rec.adapt(t.support_items, t.support_labels, t.user)
    exact = UserState.from_bytes(state.to_bytes("float32"))
    np.testing.assert_array_equal(exact.params, state.params)
    np.testing.assert_array_equal(exact.user_vec, state.user_vec)
    assert exact.user == t.user
    half = state.to_bytes("float16")
    assert len(half) < len(state.to_bytes("float32"))
    approx = UserState.from_bytes(half)
    np.testing.assert_allclose(
        rec.score(approx, t.query_items), rec.score(state, t.query_items), atol=1e-2
    )
    anonymous = UserState(state.user_vec, state.params, None)
    assert UserState.from_bytes(anonymous.to_bytes()).user is None


def test_bad_inputs_raise(saved: tuple[Path, torch.nn.Module]) -> None:
    rec = load_recommender(saved[0])
    with pytest.raises(ValueError, match="item indices"):
        rec.adapt([10_000], [1.0])
    with pytest.raises(ValueError, match="labels"):
        rec.adapt([1, 2], [1.0])
    with pytest.raises(ValueError, match="bytes"):
        UserState.from_bytes(b"WSUS")
    state = rec.adapt([1, 2], [1.0, 5.0])
    with pytest.raises(ValueError, match="do not match"):
        rec.score(UserState(state.user_vec, state.params[:-1]), [0, 1])
    with pytest.raises(FileNotFoundError):
        load_recommender(saved[0] / "missing")


def test_recommender_rejects_supernet(split: types.EpisodeSplit) -> None:
    from warmstart.coldstart.training import build_model

    with pytest.raises(ValueError, match="supernet"):
        ColdStartRecommender(build_model(split, TINY, None, 0))


@pytest.mark.parametrize("first", ["-", "add", "mul", "mul+add", "min+add"])
def test_fast_first_layer_matches_model(split: types.EpisodeSplit, first: str) -> None:
    """The serving shortcut for fc1 (position 0 with only mul/add) equals the model's forward."""
    config = ColdNASConfig(
        embedding_dim=8,
        hidden_sizes=(16, 8),
        adaptation_dim=16,
        user_features="on",
        set_encoder="interaction",
        encoder_layers=2,
    )
    structure = Structure.parse(f"{first}|mul+add|add")
    model, _ = train_structure(split, structure, config, TrainConfig(epochs=1, lr=1e-2))
    rec = ColdStartRecommender(model)
    assert rec._fast_fc1 == (first != "min+add")
    tasks = split.test[:3]
    with torch.no_grad():
        expected = model.eval()(collate_tasks(tasks))
    states = [rec.adapt(t.support_items, t.support_labels, t.user) for t in tasks]
    together = rec.score(states, tasks[0].query_items)
    for i, t in enumerate(tasks):
        got = rec.score(states[i], t.query_items)
        np.testing.assert_allclose(
            got, expected[i, : len(t.query_items)].numpy(), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(together[0], rec.score(states[0], tasks[0].query_items), rtol=1e-6)
