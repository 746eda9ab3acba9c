"""MPP serving API: artifact round trip, UserState bytes, batched == single, validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from warmstart.coldstart.mpp import MPPConfig, PartitionRule, adapt_one
from warmstart.coldstart.mpp_inference import MPPRecommender, UserState, load, save
from warmstart.coldstart.mpp_train import MetaConfig, click_split, new_learner, predict_adapted
from warmstart.data.synthetic import synthetic_split
from warmstart.data.types import EpisodeSplit

TINY = MPPConfig(embedding_dim=4, hidden=(6, 5), context_dim=3, init_std=0.3)


@pytest.fixture(scope="module")
def split() -> EpisodeSplit:
    return click_split(synthetic_split(n_users=120, n_items=40, seed=0))


def _saved(split: EpisodeSplit, rule: str, tmp: Path) -> tuple[MPPRecommender, object]:
    learner = new_learner(split, TINY, PartitionRule(rule), MetaConfig(inner_steps=2))
    with torch.no_grad():  # move the adaptive init away from its zero/one init
        for p in learner.parts()[1].values():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    save(tmp, learner.net, learner.rule, 2, learner.inner_lr_values(),
         split.dataset.users, split.dataset.items, {"seed": 0})  # fmt: skip
    return load(tmp), learner


@pytest.mark.parametrize("rule", ["top", "film", "context"])
def test_loaded_model_adapts_and_scores_like_training(
    split: EpisodeSplit, rule: str, tmp_path: Path
) -> None:
    rec, learner = _saved(split, rule, tmp_path)
    assert rec.rule == PartitionRule(rule)
    tasks = split.test[:4]
    expected = predict_adapted(learner, tasks)  # type: ignore[arg-type]
    for t, e in zip(tasks, expected, strict=True):
        state = rec.adapt(t.support_items, t.support_labels, user=t.user)
        np.testing.assert_allclose(rec.score(state, t.query_items), e, rtol=1e-5, atol=1e-6)


def test_top_rule_closed_form_equals_generic_inner_loop(
    split: EpisodeSplit, tmp_path: Path
) -> None:
    rec, _ = _saved(split, "top", tmp_path)
    t = split.test[0]
    fast = rec.adapt(t.support_items, t.support_labels, user=t.user)
    x = rec._inputs(torch.as_tensor(t.support_items), t.user)
    y = torch.as_tensor(t.support_labels)
    generic = adapt_one(
        rec.net, rec._params(rec.initial_state()), rec._head, x, y,
        torch.ones_like(y, dtype=torch.bool), rec._lrs, rec.inner_steps, True,
    )  # fmt: skip
    np.testing.assert_allclose(
        fast.params, torch.cat([generic[k].reshape(-1) for k in rec._shapes]).numpy(), rtol=1e-5
    )


@pytest.mark.parametrize("rule", ["top", "film"])
def test_many_equals_single(split: EpisodeSplit, rule: str, tmp_path: Path) -> None:
    rec, _ = _saved(split, rule, tmp_path)
    tasks = split.test[:5]
    supports = [(t.support_items, t.support_labels) for t in tasks] + [([], [])]
    users = [t.user for t in tasks] + [None]
    many = rec.adapt_many(supports, users)
    assert len(many) == len(supports)
    for (rows, labels), user, state in zip(supports, users, many, strict=True):
        single = rec.adapt(rows, labels, user=user)
        np.testing.assert_allclose(state.params, single.params, rtol=1e-5, atol=1e-6)
    candidates = [t.query_items for t in tasks] + [np.arange(3)]
    scored = rec.score_many(many, candidates)
    for state, cand, s in zip(many, candidates, scored, strict=True):
        np.testing.assert_allclose(s, rec.score(state, cand), rtol=1e-5, atol=1e-6)


def test_user_state_bytes_round_trip(split: EpisodeSplit, tmp_path: Path) -> None:
    rec, _ = _saved(split, "film", tmp_path)
    t = split.test[0]
    state = rec.adapt(t.support_items, t.support_labels, user=t.user)
    data = state.to_bytes("float32")
    assert len(data) == 24 + 4 * rec.state_size
    back = UserState.from_bytes(data)
    assert back.user == t.user
    np.testing.assert_array_equal(back.params, state.params)
    np.testing.assert_array_equal(rec.score(back, t.query_items), rec.score(state, t.query_items))
    half = UserState.from_bytes(state.to_bytes("float16"))
    np.testing.assert_allclose(
        rec.score(half, t.query_items), rec.score(state, t.query_items), atol=5e-3
    )


def test_raw_ids_round_trip(split: EpisodeSplit, tmp_path: Path) -> None:
    rec, _ = _saved(split, "top", tmp_path)
    t = split.test[0]
    raw_items = split.dataset.items.ids[t.support_items].tolist()
    raw_user = split.dataset.users.ids[t.user].item()
    by_id = rec.adapt_ids(raw_items, t.support_labels, user_id=raw_user)
    by_row = rec.adapt(t.support_items, t.support_labels, user=t.user)
    np.testing.assert_array_equal(by_id.params, by_row.params)
    query = split.dataset.items.ids[t.query_items].tolist()
    np.testing.assert_array_equal(rec.score_ids(by_id, query), rec.score(by_row, t.query_items))


def test_empty_support_is_the_meta_init_and_observe_moves_on(
    split: EpisodeSplit, tmp_path: Path
) -> None:
    rec, _ = _saved(split, "top", tmp_path)
    empty = rec.adapt([], [])
    np.testing.assert_array_equal(empty.params, rec.initial_state().params)
    t = split.test[0]
    later = rec.observe(empty, t.support_items, t.support_labels)
    np.testing.assert_allclose(
        later.params, rec.adapt(t.support_items, t.support_labels).params, rtol=1e-6
    )
    assert rec.observe(later, [], []) is later


def test_bad_input_raises_before_compute(split: EpisodeSplit, tmp_path: Path) -> None:
    rec, _ = _saved(split, "top", tmp_path)
    with pytest.raises(ValueError, match=r"rows\[1\] = 999: item indices must lie in"):
        rec.adapt([0, 999], [1, 0])
    with pytest.raises(ValueError, match="1 labels for 2 support items"):
        rec.adapt([0, 1], [1])
    with pytest.raises(ValueError, match=r"labels\[1\] = .*5.*must be finite and lie in \[0, 1\]"):
        rec.adapt([0, 1], [1, 5])
    with pytest.raises(ValueError, match="item"):
        rec.adapt_ids(["no-such-item"], [1])
    bad = UserState(np.zeros(0, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="parameters"):
        rec.score(bad, [0])
    with pytest.raises(ValueError, match="2 states but 1 candidate"):
        rec.score_many([rec.initial_state()] * 2, [[0]])
    with pytest.raises(ValueError, match="kind"):
        (tmp_path / "config.json").write_text('{"kind": "coldnas"}')
        load(tmp_path)


def test_serving_module_imports_no_training_code() -> None:
    code = (
        "import sys, warmstart.coldstart.mpp_inference; "
        "bad = [m for m in sys.modules if m.startswith(('warmstart.coldstart.mpp_train', "
        "'warmstart.coldstart.training', 'warmstart.coldstart.maml', 'warmstart.data'))]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
