"""MF serving artifact: export/load round trip, ridge fit = the baseline's, exact top-N."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.mf import tiny_als
from warmstart.coldstart.baselines import fit_new_users
from warmstart.coldstart.mf_inference import export_mf, load_mf
from warmstart.data.synthetic import synthetic_split


@pytest.fixture(scope="module")
def fitted():
    split = synthetic_split(n_users=60, n_items=40, interactions_per_user=(15, 25), seed=1)
    model = tiny_als(split)
    return split, model


def test_round_trip_and_ridge_fit_match_the_baseline(fitted, tmp_path):
    split, model = fitted
    export_mf(tmp_path, model, 7.0, split.dataset.items.ids, (1.0, 5.0), {"dataset": "synthetic"})
    mf = load_mf(tmp_path)
    tasks = split.test[:5]
    rows = mf.fit_users([(t.support_items, t.support_labels) for t in tasks])
    np.testing.assert_allclose(rows, fit_new_users(model, tasks, 7.0), rtol=1e-4, atol=1e-5)
    assert list(mf.item_ids.ids) == split.dataset.items.ids.tolist()
    assert mf.config["dataset"] == "synthetic" and mf.bounds == (1.0, 5.0)


def test_candidates_are_the_top_predicted_ratings(fitted, tmp_path):
    split, model = fitted
    export_mf(tmp_path, model, 7.0, split.dataset.items.ids, (-1e9, 1e9))
    mf = load_mf(tmp_path)
    t = split.test[0]
    (user,) = mf.fit_users([(t.support_items, t.support_labels)])
    _, rows = mf.candidates(user[None], 10)
    full = mf.predict(user, np.arange(mf.n_items))
    np.testing.assert_allclose(np.sort(full)[::-1][:10], full[rows[0]], rtol=1e-5)


def test_empty_support_is_the_prior_and_bad_input_raises(fitted, tmp_path):
    split, model = fitted
    export_mf(tmp_path, model, 7.0, split.dataset.items.ids, (1.0, 5.0))
    mf = load_mf(tmp_path)
    (row,) = mf.fit_users([(np.zeros(0, np.int64), np.zeros(0))])
    np.testing.assert_allclose(row, model.user_prior, rtol=1e-5)
    assert mf.fit_users([]).shape == (0, mf.dim + 1)
    with pytest.raises(ValueError, match="support 0 item rows"):
        mf.fit_users([([mf.n_items], [3.0])])
    with pytest.raises(ValueError, match="2 items but 1 labels"):
        mf.fit_users([([0, 1], [3.0])])
    with pytest.raises(ValueError, match="item ids"):
        export_mf(tmp_path, model, 7.0, np.arange(3), (1.0, 5.0))
    with pytest.raises(FileNotFoundError, match=r"mf\.json"):
        load_mf(tmp_path / "missing")
