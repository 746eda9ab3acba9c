"""Cold-start baselines on tiny hand-made tables and seeded synthetic users."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from warmstart.cli import main
from warmstart.coldstart.baselines import (
    Constant,
    GlobalMean,
    ItemPopularity,
    MatrixFactorization,
    MFConfig,
    default_baselines,
    fit_als,
    fit_new_users,
    group_rows,
    popularity_scores,
    ridge_rows,
)
from warmstart.coldstart.evaluate import evaluate
from warmstart.data import coldstart_split
from warmstart.data.synthetic import synthetic_split
from warmstart.data.types import EpisodeSplit, FeatureTable, RecDataset, Task

SMALL_MF = MFConfig(dims=(4,), l2s=(1.0,), ridges=(1.0, 10.0), sweeps=8)


def _tiny_split(labels: list[float], rating_range: tuple[float, float]) -> EpisodeSplit:
    """Users 0, 1 train (items 0..2 rated), user 2 test with query items 0..3."""
    inter = pd.DataFrame(
        {
            "user": np.array([0, 0, 0, 1, 1, 2, 2], dtype=np.int64),
            "item": np.array([0, 1, 2, 0, 2, 0, 3], dtype=np.int64),
            "label": np.array([*labels, 9.0, 9.0], dtype=np.float32),  # test user's labels last
        }
    )
    test = Task(2, np.array([0]), np.array([9.0]), np.arange(4), np.zeros(4, dtype=np.float32))
    dataset = RecDataset(
        "tiny",
        inter,
        FeatureTable.one_hot_ids(np.arange(3)),
        FeatureTable.one_hot_ids(np.arange(4)),
        rating_range,
    )
    return EpisodeSplit(
        [], [], [test], np.array([0, 1]), np.array([], dtype=np.int64), np.array([2]), dataset
    )


def test_popularity_formulas_exact_on_binary_table() -> None:
    # item 0: labels 1, 0; item 1: 1; item 2: 0, 1; item 3: unseen. Global mean 3/5.
    split = _tiny_split([1, 1, 0, 0, 1], (0.0, 1.0))
    raw, smoothed = ItemPopularity("none"), ItemPopularity("beta")
    raw.fit(split)
    smoothed.fit(split)
    np.testing.assert_allclose(raw.predict(split.test)[0], [1 / 2, 1.0, 1 / 2, 3 / 5])
    np.testing.assert_allclose(smoothed.predict(split.test)[0], [2 / 4, 2 / 3, 2 / 4, 1 / 2])


def test_popularity_shrinks_ratings_toward_global_mean() -> None:
    items, labels = np.array([0, 0, 1]), np.array([5.0, 3.0, 1.0])
    mu = 3.0
    scores = popularity_scores(items, labels, 3, "beta", prior_weight=2.0)
    np.testing.assert_allclose(scores, [(8 + 2 * mu) / 4, (1 + 2 * mu) / 3, mu])
    with pytest.raises(ValueError, match="smoothing must be one of"):
        popularity_scores(items, labels, 3, "laplace", 1.0)


def test_global_mean_and_constant_ignore_test_users() -> None:
    split = _tiny_split([1, 2, 3, 4, 5], (1.0, 5.0))  # test user's 9.0 ratings must not count
    mean = GlobalMean()
    mean.fit(split)
    np.testing.assert_allclose(mean.predict(split.test)[0], np.full(4, 3.0))
    np.testing.assert_allclose(Constant(0.5).predict(split.test)[0], np.full(4, 0.5))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"ItemPopularity\.smoothing"):
        ItemPopularity("laplace")
    with pytest.raises(ValueError, match=r"MFConfig\.ridges"):
        MFConfig(ridges=(0.0,))
    with pytest.raises(ValueError, match=r"MFConfig\.dims"):
        MFConfig(dims=())
    with pytest.raises(ValueError, match="before predict"):
        MatrixFactorization().predict([])


def test_als_fits_a_low_rank_matrix() -> None:
    rng = np.random.default_rng(0)
    truth = 3.0 + rng.normal(size=(30, 2)) @ rng.normal(size=(2, 25))  # (U, I) rank 2 + mean
    users, items = np.divmod(np.arange(truth.size), truth.shape[1])
    model = fit_als(users, items, truth.ravel(), truth.shape, 2, 1e-3, 30, rng)
    recon = (
        model.mu
        + model.users[:, 2:3]
        + model.items[:, 2]
        + model.users[:, :2] @ model.items[:, :2].T
    )
    assert np.sqrt(np.mean((recon - truth) ** 2)) < 0.05 * truth.std()


def test_ridge_rows_equals_per_group_normal_equations() -> None:
    rng = np.random.default_rng(4)
    counts = np.array([1, 7, 3, 40, 2])  # row 5 has no interaction
    group = rng.permutation(np.repeat(np.arange(5), counts))
    other = rng.integers(0, 9, group.size)
    feats, target = rng.normal(size=(9, 3)), rng.normal(size=group.size)
    out = ridge_rows(feats, other, target, group_rows(group, budget=8), n_rows=6, lam=0.5)
    for g in range(5):
        x = feats[other[group == g]]
        expected = np.linalg.solve(x.T @ x + 0.5 * np.eye(3), x.T @ target[group == g])
        np.testing.assert_allclose(out[g], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out[5], 0.0)


def test_new_user_fit_batched_equals_one_at_a_time() -> None:
    split = synthetic_split(seed=1)
    rng = np.random.default_rng(0)
    inter = split.train_interactions()
    cols = [inter[c].to_numpy() for c in ("user", "item", "label")]
    model = fit_als(*cols, (split.dataset.n_users, split.dataset.n_items), 4, 1.0, 5, rng)
    tasks = split.test[:7]  # support sizes differ, so padding is exercised
    batched = fit_new_users(model, tasks, ridge=2.0)
    single = np.concatenate([fit_new_users(model, [t], ridge=2.0) for t in tasks])
    np.testing.assert_allclose(batched, single, rtol=1e-10, atol=1e-12)
    # an enormous ridge pins every new user to the mean train user
    np.testing.assert_allclose(
        fit_new_users(model, tasks, 1e12), np.tile(model.user_prior, (7, 1)), atol=1e-6
    )


@pytest.mark.parametrize("implicit", [False, True])
def test_mf_beats_popularity_on_held_out_users(implicit: bool) -> None:
    split = synthetic_split(implicit=implicit, seed=0)
    popularity, mf = ItemPopularity("beta"), MatrixFactorization(SMALL_MF)
    popularity.fit(split)
    mf.fit(split)
    pop_mse, mf_mse = evaluate(popularity, split.test)["MSE"], evaluate(mf, split.test)["MSE"]
    assert mf_mse < 0.9 * pop_mse
    assert mf.selected_["ridge"] in SMALL_MF.ridges
    low, high = split.dataset.rating_range
    assert all(((p >= low) & (p <= high)).all() for p in mf.predict(split.test))


def _hide_test_labels(split: EpisodeSplit, seed: int) -> EpisodeSplit:
    """The same split with test query labels shuffled and test users' stored labels replaced."""
    rng = np.random.default_rng(seed)
    test = [
        dataclasses.replace(t, query_labels=rng.permutation(t.query_labels)) for t in split.test
    ]
    inter = split.dataset.interactions.copy()
    is_test = inter["user"].isin(split.test_users).to_numpy()
    inter.loc[is_test, "label"] = rng.permutation(inter.loc[is_test, "label"].to_numpy())
    dataset = dataclasses.replace(split.dataset, interactions=inter)
    return dataclasses.replace(split, test=test, dataset=dataset)


FACTORIES = {
    "constant": lambda: Constant(0.5),
    "global mean": GlobalMean,
    "popularity": lambda: ItemPopularity("none"),
    "smoothed popularity": lambda: ItemPopularity("beta"),
    "mf": lambda: MatrixFactorization(SMALL_MF),
}


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_predictions_never_depend_on_test_labels(kind: str) -> None:
    split = synthetic_split(seed=2)
    hidden = _hide_test_labels(split, seed=3)
    assert any(
        not np.array_equal(a.query_labels, b.query_labels)
        for a, b in zip(split.test, hidden.test, strict=True)
    )
    seen, blind = FACTORIES[kind](), FACTORIES[kind]()
    seen.fit(split)
    blind.fit(hidden)
    for pa, pb in zip(seen.predict(split.test), blind.predict(hidden.test), strict=True):
        np.testing.assert_array_equal(pa, pb)


def test_default_baselines_names_are_unique() -> None:
    for binary in (False, True):
        names = [p.name for p in default_baselines(binary)]
        assert len(set(names)) == len(names)
        assert ("constant 0.5" in names) == binary


@pytest.mark.integration
def test_popularity_ordering_on_official_lastfm_tasks() -> None:
    root = Path(os.environ.get("WARMSTART_DATA", "data"))
    if not (root / "lastfm-coldnas" / "tasks.jsonl").is_file():
        pytest.skip(f"lastfm-coldnas not found under {root} (set WARMSTART_DATA)")
    split = coldstart_split("lastfm-coldnas", root)
    scores = {}
    for predictor in (Constant(0.5), ItemPopularity("none"), ItemPopularity("beta")):
        predictor.fit(split)
        report = evaluate(predictor, split.test)
        assert report["users"] == len(split.test)
        scores[predictor.name] = report["MSE"]
    assert scores["item popularity (smoothed)"] < scores["item popularity"] < scores["constant 0.5"]


@pytest.mark.parametrize("dataset", ["lastfm-coldnas", "movielens-100k"])
def test_cli_prints_a_table_and_writes_json(
    dataset: str, tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    argv = ["coldstart", "baselines", "--dataset", dataset, "--data-dir", str(tiny_data_dir)]
    threads = torch.get_num_threads()
    try:
        assert main([*argv, "--seeds", "0", "1", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # the command sets it for the whole process
    printed = capsys.readouterr().out
    assert "MF + per-user ridge" in printed and "±" in printed
    payload = json.loads(out.read_text())
    assert payload["seeds"] == [0, 1] and len(payload["per_seed"]) == 2
    assert set(payload["aggregate"]["item popularity"]) == {
        "MSE",
        "MAE",
        "nDCG@3",
        "nDCG@5",
        "users",
    }
