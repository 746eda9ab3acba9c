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


# ----------------------------------------------------------------------------- empty support
def test_empty_support_is_the_no_information_state(saved: tuple[Path, torch.nn.Module]) -> None:
    rec = load_recommender(saved[0])
    state = rec.adapt([], [])
    with torch.no_grad():
        expected = rec.model._activate(rec.model.head.bias[None])[0].numpy()
    np.testing.assert_allclose(state.params, expected, rtol=1e-6)
    assert state.user is None
    scores = rec.score(state, np.arange(rec.n_items))
    assert scores.shape == (rec.n_items,) and np.isfinite(scores).all()
    low, high = rec.rating_range
    assert ((scores >= low) & (scores <= high)).all()
    # same state for every user without interactions (the model has no user features here)
    np.testing.assert_array_equal(
        rec.adapt(np.array([], dtype=np.int64), [], user=3).params, state.params
    )


# ----------------------------------------------------------------------------- validation
def _raises_before_compute(
    rec: ColdStartRecommender, monkeypatch: pytest.MonkeyPatch, match: str, call: object
) -> None:
    """``call()`` raises ValueError matching ``match`` and never reaches the model."""

    def boom(*_: object, **__: object) -> None:
        raise AssertionError("compute reached before validation")

    monkeypatch.setattr(rec.model, "adapt_embedded", boom)
    monkeypatch.setattr(rec.model, "predict_from_fc1", boom)
    monkeypatch.setattr(rec.model, "predict_embedded", boom)
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
    monkeypatch.undo()


@pytest.mark.parametrize(
    ("items", "labels", "match"),
    [
        ([1, 2], [1.0, float("nan")], r"support_labels\[1\] = .*nan.*finite and lie in \[1, 5\]"),
        ([1, 2], [float("inf"), 3.0], r"support_labels\[0\] = .*inf.*\[1, 5\]"),
        ([1, 2], [1.0, 9.0], r"support_labels\[1\] = .*9.*\[1, 5\]"),
        ([1.0, 1.7], [1.0, 2.0], r"support_items\[1\] = .*1\.7.*integers in \[0, 40\)"),
        ([1, float("nan")], [1.0, 2.0], r"support_items\[1\] = .*nan"),
        ([[1, 2], [3, 4]], [1.0, 2.0], r"support_items: expected a 1-D .* shape \(2, 2\)"),
        ([1, 2], [[1.0, 2.0]], r"support_labels: expected a 1-D .* shape \(1, 2\)"),
        ([1, 40], [1.0, 2.0], r"support_items\[1\] = 40: item indices must lie in \[0, 40\)"),
        ([-1], [1.0], r"support_items\[0\] = -1: .*\[0, 40\)"),
        (["a", "b"], [1.0, 2.0], r"support_items: item indices must be integers .* dtype <U1"),
        ([True], [1.0], r"support_items: item indices must be integers"),
        ([1, 2], [1.0], r"support_labels: 1 labels for 2 support items"),
        ([1, 2], ["x", "y"], r"support_labels: labels must be numbers"),
    ],
)
def test_adapt_rejects_bad_input_before_compute(
    saved: tuple[Path, torch.nn.Module],
    monkeypatch: pytest.MonkeyPatch,
    items: object,
    labels: object,
    match: str,
) -> None:
    rec = load_recommender(saved[0])
    assert rec.n_items == 40 and rec.rating_range == (1.0, 5.0)
    _raises_before_compute(rec, monkeypatch, match, lambda: rec.adapt(items, labels))
    _raises_before_compute(
        rec,
        monkeypatch,
        match.replace("support_items", r"supports\[0\] rows").replace(
            "support_labels", r"supports\[0\] labels"
        ),
        lambda: rec.adapt_many([([1], [2.0]), (items, labels)][1:]),
    )


@pytest.mark.parametrize("user", [80, -1, 1.5, True, "3"])
def test_adapt_rejects_a_wrong_user_index(
    saved: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch, user: object
) -> None:
    rec = load_recommender(saved[0])
    match = r"user = .*: user index must be None .* integer in \[0, 80\)"
    _raises_before_compute(rec, monkeypatch, match, lambda: rec.adapt([1], [2.0], user=user))
    _raises_before_compute(
        rec,
        monkeypatch,
        match.replace("user =", r"users\[1\] ="),
        lambda: rec.adapt_many([([1], [2.0])] * 2, [0, user]),
    )


def test_integral_float_rows_are_accepted(saved: tuple[Path, torch.nn.Module]) -> None:
    rec = load_recommender(saved[0])
    a = rec.adapt([1.0, 2.0], [1, 5], user=2.0)
    b = rec.adapt(np.array([1, 2], dtype=np.int32), np.array([1.0, 5.0]), user=np.int64(2))
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(rec.score(a, [3.0, 4.0]), rec.score(a, [3, 4]))


def test_score_rejects_bad_input_before_compute(
    saved: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = load_recommender(saved[0])
    state = rec.adapt([1, 2], [1.0, 5.0])
    cases = [
        (
            lambda: rec.score(state, []),
            r"item_ids: empty; pass at least one item row index in \[0, 40\)",
        ),
        (lambda: rec.score([], [1, 2]), r"states: empty"),
        (lambda: rec.score(state, [0, 1.7]), r"item_ids\[1\] = .*1\.7"),
        (lambda: rec.score(state, [[0, 1]]), r"item_ids: expected a 1-D .* shape \(1, 2\)"),
        (lambda: rec.score(state, [0, 99]), r"item_ids\[1\] = 99: .*\[0, 40\)"),
        (lambda: rec.score_many([state], [[1], [2]]), r"candidates: 2 lists for 1 states"),
        (lambda: rec.score_many([state, state], [[1], []]), r"candidates\[1\]: empty"),
        (lambda: rec.score_many([state], [[1, -3]]), r"candidates\[0\]\[1\] = -3"),
        (lambda: rec.score_many(["state"], [[1]]), r"states: states \[0\] do not match"),  # type: ignore[list-item]
    ]
    for call, match in cases:
        _raises_before_compute(rec, monkeypatch, match, call)
    assert rec.score_many([], []) == [] and rec.adapt_many([]) == []


def test_recommender_is_immutable(saved: tuple[Path, torch.nn.Module]) -> None:
    rec = load_recommender(saved[0])
    with pytest.raises(AttributeError, match="immutable"):
        rec._fast_fc1 = False


# ----------------------------------------------------------------------------- batched forms
def _supports(
    split: types.EpisodeSplit,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int | None]]:
    """Mixed support sizes (full, 1, a few, empty) and users (known rows and None)."""
    tasks = split.test[:5]
    supports = [(t.support_items, t.support_labels) for t in tasks]
    supports[1] = (tasks[1].support_items[:1], tasks[1].support_labels[:1])
    supports[3] = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    supports.append((tasks[4].support_items[:3], tasks[4].support_labels[:3]))
    users: list[int | None] = [t.user for t in tasks] + [None]
    users[2] = None
    return supports, users


@pytest.mark.parametrize(
    "structure", ["max+add|mul|-|min+mul+add", "mul+add|add|mul|-", "add|-|-|-"]
)
def test_many_equals_one_at_a_time(split: types.EpisodeSplit, structure: str) -> None:
    config = ColdNASConfig(
        embedding_dim=8, hidden_sizes=(16, 8, 8), adaptation_dim=16, user_features="on"
    )
    model, _ = train_structure(
        split, Structure.parse(structure), config, TrainConfig(epochs=1, lr=1e-2)
    )
    rec = ColdStartRecommender(model)
    supports, users = _supports(split)
    many = rec.adapt_many(supports, users)
    assert len(many) == len(supports)
    for state, (items, labels), user in zip(many, supports, users, strict=True):
        one = rec.adapt(items, labels, user)
        assert state.user == user
        np.testing.assert_allclose(state.params, one.params, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(state.user_vec, one.user_vec)
    rng = np.random.default_rng(0)
    candidates = [rng.choice(rec.n_items, size=n, replace=False) for n in (5, 1, 40, 12, 7, 3)]
    scored = rec.score_many(many, candidates)
    assert [s.shape for s in scored] == [c.shape for c in candidates]
    for state, cand, got in zip(many, candidates, scored, strict=True):
        np.testing.assert_allclose(got, rec.score(state, cand), rtol=1e-5, atol=1e-6)
    # and the end-to-end answer equals the model's own forward pass over a padded TaskBatch
    tasks = split.test[:3]
    with torch.no_grad():
        expected = model.eval()(collate_tasks(tasks))
    states = rec.adapt_many(
        [(t.support_items, t.support_labels) for t in tasks], [t.user for t in tasks]
    )
    for i, got in enumerate(rec.score_many(states, [t.query_items for t in tasks])):
        np.testing.assert_allclose(
            got, expected[i, : len(tasks[i].query_items)].numpy(), rtol=1e-5, atol=1e-6
        )


# ----------------------------------------------------------------------------- raw ids
def _string_id_split(split: types.EpisodeSplit) -> types.EpisodeSplit:
    from dataclasses import replace

    items = split.dataset.items
    named = replace(items, ids=np.array([f"movie-{i:03d}" for i in range(len(items))]))
    users = replace(split.dataset.users, ids=np.arange(len(split.dataset.users)) * 10 + 7)
    return replace(split, dataset=replace(split.dataset, items=named, users=users))


def test_raw_ids_round_trip(split: types.EpisodeSplit, tmp_path: Path) -> None:
    import json

    from warmstart.coldstart.catalog import IdMap, ItemInfo

    named = _string_id_split(split)
    model, _ = train_structure(named, Structure.parse("add|mul|-|-"), TINY, TrainConfig(epochs=1))
    ids = named.dataset.items.ids
    info = ItemInfo.aligned(
        ids,
        {
            i: {"title": f"Title {i}", "year": 1990 + k % 10, "genres": ["Drama"]}
            for k, i in enumerate(ids)
        },
        ("title", "year", "genres"),
    )
    export(tmp_path, model, named.dataset.users, named.dataset.items, {"seed": 0}, item_info=info)
    stored = json.loads((tmp_path / "ids.json").read_text())  # plain JSON, no pickle
    assert stored["items"]["kind"] == "str" and stored["users"]["kind"] == "int"
    rec = load_recommender(tmp_path)
    assert rec.item_ids == IdMap(ids.tolist()) and len(rec.user_ids) == named.dataset.n_users
    rows = np.array([5, 0, 39, 5])
    raw = rec.item_ids.to_raw(rows)
    assert raw == ["movie-005", "movie-000", "movie-039", "movie-005"]
    np.testing.assert_array_equal(rec.item_ids.to_rows(raw), rows)
    assert rec.user_ids.to_raw([2]) == [27] and rec.user_ids.to_rows([27]).tolist() == [2]
    t = named.test[0]
    by_ids = rec.adapt_ids(
        rec.item_ids.to_raw(t.support_items), t.support_labels, user_id=t.user * 10 + 7
    )
    by_rows = rec.adapt(t.support_items, t.support_labels, t.user)
    np.testing.assert_array_equal(by_ids.params, by_rows.params)
    np.testing.assert_array_equal(rec.score_ids(by_ids, raw), rec.score(by_rows, rows))
    [many] = rec.score_many_ids(rec.adapt_many_ids([(raw, [1, 2, 3, 4])]), [raw])
    np.testing.assert_allclose(many, rec.score(rec.adapt(rows, [1, 2, 3, 4]), rows), rtol=1e-5)
    assert rec.describe([5]) == [
        {"row": 5, "id": "movie-005", "title": "Title movie-005", "year": 1995, "genres": ["Drama"]}
    ]
    with pytest.raises(
        ValueError, match=r"item_ids: unknown item id\(s\) 'movie-999', 5; .*40 str item ids"
    ):
        rec.score_ids(by_ids, ["movie-999", 5])
    with pytest.raises(ValueError, match=r"user_id: unknown user id\(s\) 2;"):
        rec.adapt_ids(raw, [1, 2, 3, 4], user_id=2)
    with pytest.raises(
        ValueError, match=r"rows\[0\] = 40: item rows must be integers in \[0, 40\)"
    ):
        rec.item_ids.to_raw([40])


def test_models_without_id_file_fall_back_to_integer_ids(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(saved[0], copy)
    (copy / "ids.json").unlink()
    old, new = load_recommender(copy), load_recommender(saved[0])
    assert old.item_ids == new.item_ids and old.user_ids == new.user_ids
    assert new.item_info is None and "title" not in new.describe([0])[0]


def test_id_map_rejects_bad_ids() -> None:
    from warmstart.coldstart.catalog import IdMap

    with pytest.raises(ValueError, match="duplicate id 3"):
        IdMap([1, 3, 3])
    with pytest.raises(ValueError, match="mix types"):
        IdMap([1, "a"])
    with pytest.raises(ValueError, match=r"raw ids must be int or str, got 1\.5"):
        IdMap([1.5])
    ids = IdMap(np.array([10, 20, 30]))
    assert ids.to_rows([np.int64(30), 10]).tolist() == [2, 0] and 20 in ids and "20" not in ids
    with pytest.raises(ValueError, match=r"ids: unknown item id\(s\) '20'"):
        ids.to_rows(["20"])
    assert IdMap.from_json(ids.to_json()) == ids


def test_many_users_split_into_passes_give_the_same_answers(
    saved: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long candidate lists are scored in several padded passes; answers do not change."""
    import warmstart.coldstart.inference as inference

    rec = load_recommender(saved[0])
    rng = np.random.default_rng(1)
    supports = [(rng.choice(40, n), rng.integers(1, 6, n)) for n in (20, 0, 30, 5, 20, 1, 2)]
    states = rec.adapt_many(supports)
    candidates = [rng.choice(40, size=n, replace=False) for n in (40, 3, 25, 40, 1, 17, 9)]
    one_pass = rec.score_many(states, candidates)
    shared = rec.score(states, np.arange(40))
    monkeypatch.setattr(inference, "_PASS_ELEMENTS", 16 * 45)  # H1 = 16: 45 padded rows a pass
    assert rec._passes([c.size for c in candidates]) == [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
        (4, 6),
        (6, 7),
    ]
    assert rec._passes([100]) == [(0, 1)]  # one user never splits
    for a, b in zip(rec.score_many(states, candidates), one_pass, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.score(states, np.arange(40)), shared, rtol=1e-5, atol=1e-6)
    for i, state in enumerate(states):
        np.testing.assert_allclose(shared[i], rec.score(state, np.arange(40)), rtol=1e-5)
    # adaptation: A = 16, so 45 padded support pairs a pass
    assert rec._passes([s[0].size for s in supports], 16) == [(0, 2), (2, 3), (3, 5), (5, 7)]
    for a, b in zip(rec.adapt_many(supports), states, strict=True):
        np.testing.assert_allclose(a.params, b.params, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- folded scoring
@pytest.mark.parametrize("structure", ["mul+add|mul+add|mul+add", "-|add|mul", "max+add|mul|add"])
def test_folded_and_bfloat16_scoring(split: types.EpisodeSplit, structure: str) -> None:
    """mul/add everywhere: modulations folded into per-user layer weights, same scores as the
    model's forward; bfloat16 close to it; any max/min keeps the model's path in float32."""
    config = ColdNASConfig(
        embedding_dim=8, hidden_sizes=(16, 8), adaptation_dim=16, user_features="on"
    )
    model, _ = train_structure(
        split, Structure.parse(structure), config, TrainConfig(epochs=1, lr=1e-2)
    )
    rec, low = ColdStartRecommender(model), ColdStartRecommender(model, precision="bfloat16")
    foldable = "max" not in structure
    assert rec._folded == low._folded == foldable
    assert low.precision == ("bfloat16" if foldable else "float32")
    tasks = split.test[:4]
    with torch.no_grad():
        expected = model.eval()(collate_tasks(tasks))
    states = rec.adapt_many(
        [(t.support_items, t.support_labels) for t in tasks], [t.user for t in tasks]
    )
    items = [t.query_items for t in tasks]
    for i, (got, approx) in enumerate(
        zip(rec.score_many(states, items), low.score_many(states, items), strict=True)
    ):
        want = expected[i, : len(tasks[i].query_items)].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(approx, want, atol=0.05)  # 1-5 scale, 8-bit mantissa
    shared = rec.score(states, items[0])  # the same items for every user: broadcast path
    np.testing.assert_allclose(shared[1], rec.score(states[1], items[0]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="precision"):
        ColdStartRecommender(model, precision="float16")
