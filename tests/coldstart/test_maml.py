"""Tests for the MeLU-style MAML baseline: batched inner loop, adaptation, learning."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from warmstart.coldstart.maml import (
    MAMLConfig,
    MeLUMAML,
    MeLUNet,
    adapt,
    fit_grid,
    masked_mse,
    predict_adapted,
)
from warmstart.data.synthetic import synthetic_split
from warmstart.data.types import EpisodeSplit, Task, collate_tasks


@pytest.fixture(scope="module")
def split() -> EpisodeSplit:
    return synthetic_split(n_users=200, n_items=80, interactions_per_user=(14, 30), seed=3)


def _net(split: EpisodeSplit, config: MAMLConfig, seed: int = 0) -> MeLUNet:
    ds = split.dataset
    net = MeLUNet(ds.users, ds.items, ds.rating_range, config).double()
    net.reset_parameters(torch.Generator().manual_seed(seed))
    return net


def _ragged_tasks(split: EpisodeSplit) -> list[Task]:
    """Tasks with different support/query sizes, so the batch really is padded."""
    tasks = []
    for k, t in enumerate(split.train[:5]):
        s, q = 3 + 2 * k, 2 + k
        tasks.append(
            Task(
                t.user,
                t.support_items[:s],
                t.support_labels[:s],
                t.query_items[:q],
                t.query_labels[:q],
            )
        )
    return tasks


def _adapt_one(
    net: MeLUNet, task: Task, steps: int, lr: float, create_graph: bool
) -> dict[str, torch.Tensor]:
    """Reference inner loop for one unpadded task with plain autograd."""
    users = torch.tensor([task.user])
    x = net.embed(users, torch.as_tensor(task.support_items)[None])[0]  # (S, D)
    y = torch.as_tensor(task.support_labels, dtype=x.dtype)
    params = net.dense_params()
    for _ in range(steps):
        loss = ((net.head(params, x) - y) ** 2).mean()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = {k: p - lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
    return params


@pytest.mark.parametrize("steps", [1, 3])
def test_batched_adaptation_equals_per_task(split: EpisodeSplit, steps: int) -> None:
    net = _net(split, MAMLConfig.tiny())
    tasks = _ragged_tasks(split)
    batch = collate_tasks(tasks)
    x_s = net.embed(batch.users, batch.support_items)
    labels = batch.support_labels.double()
    batched = adapt(net, x_s, labels, batch.support_mask, steps=steps, lr=0.1, first_order=True)
    x_q = net.embed(batch.users, batch.query_items)
    pred = predict_adapted(net, batched, x_q)  # (B, Q)
    for i, task in enumerate(tasks):
        ref = _adapt_one(net, task, steps, 0.1, create_graph=False)
        for key, value in ref.items():
            torch.testing.assert_close(batched[key][i], value)
        x_qi = net.embed(torch.tensor([task.user]), torch.as_tensor(task.query_items)[None])[0]
        torch.testing.assert_close(pred[i, : len(task.query_items)], net.head(ref, x_qi))


def test_second_order_meta_gradient_equals_per_task(split: EpisodeSplit) -> None:
    net = _net(split, MAMLConfig.tiny())
    tasks = _ragged_tasks(split)
    batch = collate_tasks(tasks)
    x_s = net.embed(batch.users, batch.support_items)
    params = adapt(
        net,
        x_s,
        batch.support_labels.double(),
        batch.support_mask,
        steps=2,
        lr=0.1,
        first_order=False,
    )
    pred = predict_adapted(net, params, net.embed(batch.users, batch.query_items))
    batched_loss = masked_mse(pred, batch.query_labels.double(), batch.query_mask).sum()
    batched_grads = torch.autograd.grad(batched_loss, list(net.parameters()), allow_unused=True)
    ref_loss = torch.zeros((), dtype=torch.float64)
    for task in tasks:
        p = _adapt_one(net, task, 2, 0.1, create_graph=True)
        x_q = net.embed(torch.tensor([task.user]), torch.as_tensor(task.query_items)[None])[0]
        y_q = torch.as_tensor(task.query_labels, dtype=torch.float64)
        ref_loss = ref_loss + ((net.head(p, x_q) - y_q) ** 2).mean()
    ref_grads = torch.autograd.grad(ref_loss, list(net.parameters()), allow_unused=True)
    for g_batched, g_ref in zip(batched_grads, ref_grads, strict=True):
        if g_ref is None:
            assert g_batched is None or torch.count_nonzero(g_batched) == 0
        else:
            torch.testing.assert_close(g_batched, g_ref)


def test_first_order_differs_from_second_order_only_in_meta_gradient(split: EpisodeSplit) -> None:
    """Same adapted values either way; the second-order gradient reaches the support embeddings."""
    net = _net(split, MAMLConfig.tiny())
    batch = collate_tasks(_ragged_tasks(split))
    x_s = net.embed(batch.users, batch.support_items)
    first = adapt(
        net,
        x_s,
        batch.support_labels.double(),
        batch.support_mask,
        first_order=True,
        steps=2,
        lr=0.1,
    )
    second = adapt(
        net,
        x_s,
        batch.support_labels.double(),
        batch.support_mask,
        first_order=False,
        steps=2,
        lr=0.1,
    )
    for key in first:
        torch.testing.assert_close(first[key], second[key])
    w = "0.weight"
    assert torch.autograd.grad(first[w].sum(), x_s, allow_unused=True)[0] is None
    assert torch.autograd.grad(second[w].sum(), x_s)[0].abs().sum() > 0


def test_inner_steps_decrease_support_loss(split: EpisodeSplit) -> None:
    net = _net(split, MAMLConfig.tiny(), seed=1)
    batch = collate_tasks(split.train[:16])
    x_s = net.embed(batch.users, batch.support_items).detach()
    labels = batch.support_labels.double()
    init = {k: v.unsqueeze(0).expand(len(batch), *v.shape) for k, v in net.dense_params().items()}
    losses = []
    for steps in (1, 3):
        params = adapt(net, x_s, labels, batch.support_mask, steps=steps, lr=0.02, first_order=True)
        losses.append(masked_mse(predict_adapted(net, params, x_s), labels, batch.support_mask))
    before = masked_mse(predict_adapted(net, init, x_s), labels, batch.support_mask)
    assert torch.all(losses[0] < before)
    assert torch.all(losses[1] < losses[0])


def test_adapt_changes_only_dense_parameters(split: EpisodeSplit) -> None:
    net = _net(split, MAMLConfig.tiny())
    batch = collate_tasks(split.train[:4])
    x_s = net.embed(batch.users, batch.support_items)
    params = adapt(
        net,
        x_s,
        batch.support_labels.double(),
        batch.support_mask,
        steps=1,
        lr=0.1,
        first_order=True,
    )
    assert set(params) == set(net.dense_params())
    assert all(v.shape[0] == len(batch) for v in params.values())


def test_training_beats_global_mean_on_heldout_users(split: EpisodeSplit) -> None:
    model = MeLUMAML(replace(MAMLConfig.tiny(seed=0), epochs=12))
    model.fit(split)
    preds = model.predict(split.test)
    mean = float(np.mean(np.concatenate([t.query_labels for t in split.train])))
    model_mse = np.mean(
        [np.mean((p - t.query_labels) ** 2) for p, t in zip(preds, split.test, strict=True)]
    )
    mean_mse = np.mean([np.mean((mean - t.query_labels) ** 2) for t in split.test])
    assert model_mse < 0.95 * mean_mse
    assert 0 <= model.best_epoch < len(model.history)


def test_predict_shapes_and_range(split: EpisodeSplit) -> None:
    model = MeLUMAML(replace(MAMLConfig.tiny(), epochs=1))
    model.fit(split)
    preds = model.predict(split.test[:7])
    low, high = split.dataset.rating_range
    assert [len(p) for p in preds] == [len(t.query_items) for t in split.test[:7]]
    assert all(p.dtype == np.float32 and np.all((p >= low) & (p <= high)) for p in preds)


def test_fit_grid_keeps_the_lowest_valid_mse(split: EpisodeSplit) -> None:
    base = replace(MAMLConfig.tiny(), epochs=2)
    configs = [replace(base, local_lr=0.05), replace(base, local_lr=5.0, local_steps=3)]
    model, rows = fit_grid(split, configs)
    assert len(rows) == 2
    assert model.best_valid_mse == min(r["valid_mse"] for r in rows)
    assert model.best_valid_mse == pytest.approx(model.valid_mse(split.valid), rel=1e-5)


def test_predict_before_fit_raises(split: EpisodeSplit) -> None:
    with pytest.raises(RuntimeError, match="fit"):
        MeLUMAML().predict(split.test[:1])


@pytest.mark.parametrize(
    ("field", "value"),
    [("local_steps", 0), ("local_lr", 0.0), ("hidden", ()), ("output", "tanh"), ("batch_size", 0)],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        MAMLConfig(**{field: value})  # type: ignore[arg-type]
