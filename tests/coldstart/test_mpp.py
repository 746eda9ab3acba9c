"""MPP model, partition, inner loop, offline/online meta-learning (Zhao et al., 1912.04108)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from warmstart.coldstart.baselines import ItemPopularity
from warmstart.coldstart.mpp import (
    RULES,
    MPPConfig,
    PartitionRule,
    adapt,
    fixed_head_params,
    partition,
)
from warmstart.coldstart.mpp_train import (
    MetaConfig,
    MetaLearner,
    OnlineConfig,
    click_split,
    mean_user_auc,
    meta_loss,
    meta_loss_loop,
    new_learner,
    online_copy,
    predict_adapted,
    stream,
    stream_order,
    train_offline,
)
from warmstart.data.synthetic import synthetic_split
from warmstart.data.types import EpisodeSplit, collate_tasks

TINY = MPPConfig(embedding_dim=4, hidden=(6, 5), context_dim=3, init_std=0.3)


@pytest.fixture(scope="module")
def split() -> EpisodeSplit:
    return click_split(synthetic_split(n_users=120, n_items=40, seed=0))


def _learner(split: EpisodeSplit, rule: str = "top", **meta: object) -> MetaLearner:
    return new_learner(split, TINY, PartitionRule(rule), MetaConfig(**meta))  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_partition_covers_every_parameter_exactly_once(split: EpisodeSplit, rule: str) -> None:
    net = _learner(split, rule).net
    names = [n for n, _ in net.named_parameters()]
    fixed, adaptive = partition(net.named_parameters(), PartitionRule(rule))
    assert sorted([*fixed, *adaptive]) == sorted(names)
    assert not set(fixed) & set(adaptive)
    assert adaptive and all(n.startswith("head.") for n in adaptive)


def test_partition_rule_is_config(split: EpisodeSplit) -> None:
    rule = PartitionRule.parse('{"adaptive": ["head.out.bias", "head.shift.*"]}')
    assert PartitionRule.from_dict(rule.to_dict()) == rule
    _, adaptive = partition(_learner(split).net.named_parameters(), rule)
    assert set(adaptive) == {"head.out.bias", "head.shift.0", "head.shift.1"}
    with pytest.raises(ValueError, match="matches no parameter"):
        partition(_learner(split).net.named_parameters(), PartitionRule("custom", ("head.nope",)))
    with pytest.raises(ValueError, match="must start with"):
        PartitionRule("custom", ("item_embedding.*",))
    with pytest.raises(ValueError, match="allowed"):
        PartitionRule("bottom")


@pytest.mark.parametrize("rule", ["top", "film", "context"])
def test_inner_loop_never_changes_a_fixed_parameter(split: EpisodeSplit, rule: str) -> None:
    learner = _learner(split, rule, inner_steps=3)
    before = {n: p.detach().clone() for n, p in learner.net.named_parameters()}
    fixed, adaptive = learner.parts()
    batch = collate_tasks(split.train[:5])
    x = learner.net.embed(batch.users, batch.support_items)
    out = adapt(
        learner.net, adaptive, fixed_head_params(fixed), x, batch.support_labels,
        batch.support_mask, learner.lrs(), 3,
    )  # fmt: skip
    assert set(out) == set(adaptive)  # the inner loop returns adaptive tensors only
    assert any(not torch.equal(out[n][0], adaptive[n]) for n in out)  # and it did move them
    # The frozen-fixed online stage (updates the meta-init) leaves every fixed tensor untouched.
    stream(learner, split.test[:4], OnlineConfig(update_fixed=False))
    for name, p in learner.net.named_parameters():
        if name in fixed:
            assert torch.equal(p, before[name]), name
    assert any(not torch.equal(learner.net.get_parameter(n), before[n]) for n in adaptive)


def _finite_difference(f, p: torch.Tensor, idx: tuple[int, ...], eps: float = 1e-6) -> float:
    with torch.no_grad():
        old = p[idx].item()
        p[idx] = old + eps
        up = f().item()
        p[idx] = old - eps
        down = f().item()
        p[idx] = old
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("rule", ["top", "film"])
def test_second_order_meta_gradient_matches_finite_differences(
    split: EpisodeSplit, rule: str
) -> None:
    learner = _learner(split, rule, inner_steps=2, inner_lr=0.7).double()
    batch = collate_tasks(split.train[:3])
    batch.support_labels, batch.query_labels = (
        batch.support_labels.double(), batch.query_labels.double(),
    )  # fmt: skip

    def loss() -> torch.Tensor:
        return meta_loss(learner, batch)

    params = dict(learner.net.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss(), list(params.values())), strict=True))
    log_lr = next(iter(learner.log_lr.values()))
    (g_lr,) = torch.autograd.grad(loss(), [log_lr])
    checks = [
        ("head.out.weight", (0, 1)),
        ("head.layers.0.weight", (1, 2)),
        ("head.layers.1.bias", (3,)),
        ("item_embedding.bags.0.weight", (int(split.train[0].query_items[0]) % 3, 1)),
    ]
    for name, idx in checks:
        fd = _finite_difference(loss, params[name], idx)
        assert grads[name][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), name
    assert g_lr.item() == pytest.approx(_finite_difference(loss, log_lr, ()), rel=1e-5, abs=1e-9)


def test_first_order_meta_gradient_matches_finite_differences(split: EpisodeSplit) -> None:
    """FOMAML's meta-gradient is the query-loss gradient at the adapted point, the adapted
    parameters held constant (checked by finite differences of that loss)."""
    from warmstart.coldstart.mpp import adapted_logits, masked_bce

    learner = _learner(split, "film", inner_steps=2, inner_lr=0.7, first_order=True).double()
    net = learner.net
    batch = collate_tasks(split.train[:3])
    yq = batch.query_labels.double()
    params = dict(net.named_parameters())
    fo_grads = dict(
        zip(
            params,
            torch.autograd.grad(meta_loss(learner, batch), list(params.values())),
            strict=True,
        )
    )
    fixed, adaptive = learner.parts()
    with torch.no_grad():
        x_s = net.embed(batch.users, batch.support_items)
        adapted = adapt(
            net, adaptive, fixed_head_params(fixed), x_s, batch.support_labels.double(),
            batch.support_mask, learner.lrs(), 2, True,
        )  # fmt: skip
    phi = {k: v.clone() for k, v in adapted.items()}

    def loss_at_phi() -> torch.Tensor:  # query loss with the adapted parameters as constants
        f, _ = learner.parts()
        x_q = net.embed(batch.users, batch.query_items)
        return masked_bce(
            adapted_logits(net, phi, fixed_head_params(f), x_q), yq, batch.query_mask
        ).mean()

    # Fixed part: d/dθ_f of the query loss at constant adapted parameters.
    for name, idx in (("head.layers.0.weight", (1, 2)), ("head.out.weight", (0, 3))):
        fd = _finite_difference(loss_at_phi, params[name], idx)
        assert fo_grads[name][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), name
    # Adaptive part: the gradient w.r.t. the adapted parameters, summed over users.
    for name in ("head.scale.0", "head.shift.1"):
        fd = sum(_finite_difference(loss_at_phi, phi[name], (u, 1)) for u in range(3))
        assert fo_grads[name][1].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), name


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_over_users_equals_per_user_loop(split: EpisodeSplit, first_order: bool) -> None:
    learner = _learner(split, "film", inner_steps=2, first_order=first_order)
    tasks = split.train[:6]  # support sets of different lengths: the batch is padded
    assert len({len(t.support_items) for t in tasks}) > 1
    batched = meta_loss(learner, collate_tasks(tasks))
    looped = meta_loss_loop(learner, tasks)
    assert batched.item() == pytest.approx(looped.item(), rel=1e-5)
    params = [p for p in learner.parameters() if p.requires_grad]
    g_batched = torch.autograd.grad(batched, params)
    g_looped = torch.autograd.grad(meta_loss_loop(learner, tasks), params)
    for a, b in zip(g_batched, g_looped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_prequential_scoring_never_sees_the_users_own_query_labels(split: EpisodeSplit) -> None:
    learner = _learner(split, "top")
    tasks = split.test[:6]
    k = 3
    flipped = [*tasks]
    flipped[k] = replace(tasks[k], query_labels=1.0 - tasks[k].query_labels)
    a = stream(online_copy(learner), tasks, OnlineConfig(lr=0.5))
    b = stream(online_copy(learner), flipped, OnlineConfig(lr=0.5))
    for i in range(k + 1):  # users up to and including k: identical predictions
        np.testing.assert_array_equal(a.preds[i], b.preds[i])
    assert any(not np.array_equal(a.preds[i], b.preds[i]) for i in range(k + 1, len(tasks)))
    # Offline prediction does not read query labels either.
    np.testing.assert_array_equal(
        predict_adapted(learner, tasks)[k], predict_adapted(learner, flipped)[k]
    )


def test_stream_order_by_first_timestamp_then_seeded(split: EpisodeSplit) -> None:
    tasks = split.test[:5]
    seen = {tasks[3].user: 10.0, tasks[1].user: 20.0}
    ordered, how = stream_order(tasks, seen, seed=0)
    assert [t.user for t in ordered[:2]] == [tasks[3].user, tasks[1].user]
    assert sorted(t.user for t in ordered) == sorted(t.user for t in tasks)
    assert "2 users by first timestamp" in how
    again, _ = stream_order(tasks, None, seed=0)
    assert [t.user for t in again] == [t.user for t in stream_order(tasks, None, 0)[0]]


def test_click_labels_from_ratings() -> None:
    ratings = synthetic_split(n_users=60, n_items=40, seed=1)
    clicks = click_split(ratings)
    assert clicks.dataset.rating_range == (0.0, 1.0)
    t0, c0 = ratings.train[0], clicks.train[0]
    np.testing.assert_array_equal(c0.query_labels, (t0.query_labels >= 4).astype(np.float32))
    assert click_split(clicks) is clicks


def test_short_run_beats_popularity_on_held_out_users() -> None:
    data = click_split(synthetic_split(seed=0))
    config = MetaConfig(steps=80, eval_every=20, lr=3e-2, seed=0)
    model = MPPConfig(embedding_dim=8, hidden=(16,), init_std=0.1)
    learner = new_learner(data, model, PartitionRule("film"), config)
    train_offline(learner, data)
    pop = ItemPopularity(smoothing="beta")
    pop.fit(data)
    ours = mean_user_auc(predict_adapted(learner, data.test), data.test)
    assert ours > mean_user_auc(pop.predict(data.test), data.test)


def test_reptile_step_moves_the_meta_init_only(split: EpisodeSplit) -> None:
    learner = _learner(split, "film")
    fixed, adaptive = learner.parts()
    before = {n: p.detach().clone() for n, p in learner.net.named_parameters()}
    stream(learner, split.test[:3], OnlineConfig(mode="reptile", lr=0.5))
    after = dict(learner.net.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in fixed)
    assert any(not torch.equal(after[n], before[n]) for n in adaptive)
    stream(learner, split.test[:3], OnlineConfig(mode="reptile", lr=0.5, update_fixed=True))
    assert any(not torch.equal(after[n], before[n]) for n in fixed)


def test_interrupted_meta_training_resumes_to_the_same_result(
    split: EpisodeSplit, tmp_path: Path
) -> None:
    full = _learner(split, "film", steps=6, eval_every=2)
    expected = train_offline(full, split)
    part = _learner(split, "film", steps=6, eval_every=2)
    # Stop after the step-4 checkpoint (a run killed there), then rerun the same command.
    calls = {"n": 0}
    real_auc = mean_user_auc

    def dying_auc(preds, tasks):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:  # step 0, 2, 4 done; die while measuring step 6
            raise KeyboardInterrupt
        return real_auc(preds, tasks)

    import warmstart.coldstart.mpp_train as mt

    mt.mean_user_auc = dying_auc  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            train_offline(part, split, checkpoint=tmp_path)
    finally:
        mt.mean_user_auc = real_auc
    resumed = _learner(split, "film", steps=6, eval_every=2)
    measured = {"n": 0}

    def counting_auc(preds, tasks):  # type: ignore[no-untyped-def]
        measured["n"] += 1
        return real_auc(preds, tasks)

    mt.mean_user_auc = counting_auc  # type: ignore[assignment]
    try:
        result = train_offline(resumed, split, checkpoint=tmp_path)
    finally:
        mt.mean_user_auc = real_auc
    assert measured["n"] == 1  # only step 6 was run again
    assert [h["step"] for h in result.history] == [0, 2, 4, 6]
    assert result.history[-1]["valid_auc"] == pytest.approx(expected.history[-1]["valid_auc"])
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=n)


def test_paired_bootstrap_aligns_shared_users_across_seed_orders() -> None:
    from warmstart.coldstart.mpp_compare import CONDITIONS, paired

    def result(users: list[int], offset: float) -> dict[str, object]:
        base = {u: 0.5 + 0.01 * u for u in users}
        per_user = {n: [base[u] for u in users] for n in CONDITIONS}
        per_user["offline MPP"] = [base[u] + offset for u in users]
        return {"stream_users": users, "per_user_auc": per_user}

    a = result([1, 2, 3, 4], 0.1)
    b = result([4, 2, 1, 3], 0.1)  # same users, another arrival order
    out = paired([a, b], n_boot=200)
    assert out["shared_users"]
    r = out["pairs"]["offline MPP - pooled"]
    assert r["delta"] == pytest.approx(0.1) and r["lo"] == pytest.approx(0.1)
