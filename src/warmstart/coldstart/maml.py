"""MeLU-style MAML baseline for user cold-start recommendation.

Implements the baseline of: H. Lee, J. Im, S. Jang, H. Cho, S. Chung. "MeLU: Meta-Learned User
Preference Estimator for Cold-Start Recommendation". KDD 2019 (arXiv 1908.00413), as compared
against in ColdNAS (Wu et al., WWW 2023).

Users and items are embedded field by field (32 dims per categorical / multi-hot field, the same
embedding scheme as the ColdNAS model), concatenated and fed to a small MLP decision layer. Each
user is a task: the dense layers take a few gradient steps on the user's support set (the *inner*
or local update) with the embeddings held fixed, and the adapted layers predict the query set.
The *outer* update trains embeddings and the initial dense weights on the query loss.

The inner loop runs over a whole padded batch of users at once: ``torch.func.vmap`` over tasks of
``torch.func.grad`` of a masked support loss, evaluated with ``torch.func.functional_call``. There
is no Python loop over users. First-order MAML (inner gradients detached) is the default;
``first_order=False`` differentiates through the inner steps.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from warmstart.data.types import PAD, EpisodeSplit, FeatureTable, Task, TaskBatch, collate_tasks

OUTPUTS = ("sigmoid", "linear")

Params = dict[str, Tensor]


@dataclass(frozen=True)
class MAMLConfig:
    """Hyperparameters of the MeLU-style MAML baseline.

    Attributes:
        embedding_dim: embedding size per feature field (MeLU and ColdNAS: 32).
        hidden: hidden sizes of the adapted MLP (MeLU: 64, 64).
        local_lr: inner-loop SGD step size on the dense layers.
        local_steps: number of inner-loop steps (1..5 in MeLU's experiments).
        first_order: drop second-order terms (inner gradients are treated as constants).
        lr: outer-loop Adam learning rate.
        weight_decay: outer-loop L2 penalty (Adam ``weight_decay``) on all weights; id-only
            datasets (Last.fm) overfit quickly without it.
        init_std: std of the normal init of embedding tables (ColdNAS reference: N(0, 0.01)).
            Kept small because unseen (test) users' id embeddings stay at their init.
        batch_size: tasks (users) per outer step.
        epochs: maximum number of outer epochs over the train tasks.
        patience: stop after this many epochs without a better validation MSE.
        output: ``"sigmoid"`` maps the logit to ``low + (high - low) * sigmoid``; ``"linear"``
            predicts ``low + (high - low) * z`` and clamps to the rating range at predict time.
        seed: seeds weight init and task shuffling (no global RNG is touched).
        show_progress: draw a tqdm bar over epochs.
    """

    embedding_dim: int = 32
    hidden: tuple[int, ...] = (64, 64)
    local_lr: float = 5e-3
    local_steps: int = 1
    first_order: bool = True
    lr: float = 5e-4
    weight_decay: float = 0.0
    init_std: float = 0.01
    batch_size: int = 32
    epochs: int = 30
    patience: int = 5
    output: str = "sigmoid"
    seed: int = 0
    show_progress: bool = False

    def __post_init__(self) -> None:
        positive_ints = ("embedding_dim", "local_steps", "batch_size", "epochs", "patience")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"MAMLConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"MAMLConfig.hidden must be non-empty sizes >= 1, got {self.hidden}")
        for name in ("local_lr", "lr", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MAMLConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"MAMLConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.output not in OUTPUTS:
            raise ValueError(f"MAMLConfig.output must be one of {OUTPUTS}, got {self.output!r}")

    @classmethod
    def tiny(cls, seed: int = 0) -> MAMLConfig:
        """Small and fast, for tests and smoke runs."""
        # 8-dim fields and one 16-unit layer: enough capacity for the synthetic data.
        # Larger local_lr: with so few weights, one step must move the prediction visibly.
        # Larger outer lr and init_std: a short run must learn the (few) embeddings quickly.
        return cls(
            embedding_dim=8,
            hidden=(16,),
            local_lr=0.05,
            lr=1e-2,
            init_std=0.1,
            epochs=15,
            seed=seed,
        )


class FieldEmbedding(nn.Module):
    """Embeds every row of a ``FeatureTable``: one table per field, mean over multi-hot values.

    A field with cardinality ``C`` gets a ``(C + 1, dim)`` table whose last row is a fixed zero
    padding row, so multi-hot rows padded with ``PAD`` average only their real values.
    """

    def __init__(self, table: FeatureTable, dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList()
        for i, f in enumerate(table.fields):
            self.tables.append(nn.Embedding(f.cardinality + 1, dim, padding_idx=f.cardinality))
            index = np.where(f.index == PAD, f.cardinality, f.index)
            self.register_buffer(f"index_{i}", torch.as_tensor(index, dtype=torch.int64))
        self.out_dim = dim * len(table.fields)

    def forward(self, rows: Tensor) -> Tensor:
        """Embed rows ``(...)`` int64 into ``(..., n_fields * dim)``."""
        parts = []
        for i, emb in enumerate(self.tables):
            assert isinstance(emb, nn.Embedding)
            idx = getattr(self, f"index_{i}")[rows]  # (..., L)
            count = (idx != emb.padding_idx).sum(-1, keepdim=True).clamp(min=1)  # (..., 1)
            parts.append(emb(idx).sum(-2) / count)  # (..., dim)
        return torch.cat(parts, dim=-1)


class MeLUNet(nn.Module):
    """Embeddings (outer loop only) plus an MLP decision layer (adapted per user).

    Args:
        users / items: feature tables of the dataset.
        rating_range: ``(low, high)``; predictions are mapped into this range.
        config: sizes and output mapping.
    """

    def __init__(
        self,
        users: FeatureTable,
        items: FeatureTable,
        rating_range: tuple[float, float],
        config: MAMLConfig,
    ) -> None:
        super().__init__()
        self.user_embedding = FieldEmbedding(users, config.embedding_dim)
        self.item_embedding = FieldEmbedding(items, config.embedding_dim)
        layers: list[nn.Module] = []
        width = self.user_embedding.out_dim + self.item_embedding.out_dim
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.dense = nn.Sequential(*layers)
        self.low, self.span = float(rating_range[0]), float(rating_range[1] - rating_range[0])
        self.sigmoid_output = config.output == "sigmoid"
        self.init_std = config.init_std

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Seeded init: embeddings N(0, init_std), Kaiming-uniform dense weights, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.init_std, generator=generator)
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(module.bias)

    def dense_params(self) -> Params:
        """The adapted parameters (initial values), keyed as in ``self.dense``."""
        return dict(self.dense.named_parameters())

    def embed(self, users: Tensor, items: Tensor) -> Tensor:
        """Model input for each (user, item) pair.

        Args:
            users: ``(B,)`` user indices.
            items: ``(B, N)`` item indices.

        Returns:
            ``(B, N, D)`` concatenated item and user embeddings.
        """
        e_item = self.item_embedding(items)  # (B, N, Di)
        e_user = self.user_embedding(users)[:, None, :].expand(-1, items.shape[1], -1)  # (B, N, Du)
        return torch.cat([e_item, e_user], dim=-1)

    def head(self, params: Params, x: Tensor) -> Tensor:
        """Prediction in rating units from inputs ``(..., D)`` with dense weights ``params``."""
        z = functional_call(self.dense, params, (x,)).squeeze(-1)  # (...)
        return self.low + self.span * (torch.sigmoid(z) if self.sigmoid_output else z)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the valid entries of the last axis (0 when none is valid)."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def adapt(
    net: MeLUNet,
    x: Tensor,
    labels: Tensor,
    mask: Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool,
) -> Params:
    """Inner loop for a batch of users: SGD on each user's support MSE, all users at once.

    Args:
        net: the model; only its dense parameters are adapted.
        x: ``(B, S, D)`` support inputs (embeddings, treated as fixed by the inner loop).
        labels: ``(B, S)`` support labels.
        mask: ``(B, S)`` True for real (unpadded) support items.
        steps: number of SGD steps.
        lr: SGD step size.
        first_order: detach the inner gradients (first-order MAML).

    Returns:
        Per-user dense parameters, each of shape ``(B, *param.shape)``.
    """

    def support_loss(params: Params, xb: Tensor, yb: Tensor, mb: Tensor) -> Tensor:
        return masked_mse(net.head(params, xb), yb, mb)

    task_grad = vmap(grad(support_loss), in_dims=(0, 0, 0, 0))
    x_fixed = x.detach() if first_order else x
    batch = x.shape[0]
    params = {k: v.unsqueeze(0).expand(batch, *v.shape) for k, v in net.dense_params().items()}
    for _ in range(steps):
        grads = task_grad(params, x_fixed, labels, mask)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        params = {k: p - lr * grads[k] for k, p in params.items()}
    return params


def predict_adapted(net: MeLUNet, params: Params, x: Tensor) -> Tensor:
    """Predictions ``(B, Q)`` for query inputs ``x (B, Q, D)`` with per-user ``params``."""
    return vmap(net.head, in_dims=(0, 0))(params, x)


def query_predictions(net: MeLUNet, batch: TaskBatch, config: MAMLConfig) -> Tensor:
    """Adapt on each user's support set, then predict the query set: ``(B, Q)``."""
    x_support = net.embed(batch.users, batch.support_items)  # (B, S, D)
    x_query = net.embed(batch.users, batch.query_items)  # (B, Q, D)
    params = adapt(
        net,
        x_support,
        batch.support_labels,
        batch.support_mask,
        steps=config.local_steps,
        lr=config.local_lr,
        first_order=config.first_order,
    )
    return predict_adapted(net, params, x_query)


def query_loss(net: MeLUNet, batch: TaskBatch, config: MAMLConfig) -> Tensor:
    """Outer (meta) loss: per-user query MSE, averaged over users."""
    pred = query_predictions(net, batch, config)
    return masked_mse(pred, batch.query_labels, batch.query_mask).mean()


class MeLUMAML:
    """MeLU-style MAML as a cold-start ``Predictor`` (``fit`` on train/valid, ``predict`` tasks).

    Model selection: after each epoch the validation users' query MSE (after adaptation) is
    measured; the weights of the best epoch are kept and training stops after ``patience``
    epochs without improvement. Test tasks are never seen by ``fit``.
    """

    def __init__(self, config: MAMLConfig | None = None, name: str = "MeLU-MAML") -> None:
        self.config = config or MAMLConfig()
        self.name = name
        self.net: MeLUNet | None = None
        self.history: list[dict[str, float]] = []
        self.best_epoch = -1
        self.best_valid_mse = float("nan")

    def fit(self, split: EpisodeSplit) -> None:
        """Meta-train on ``split.train`` tasks, selecting the epoch on ``split.valid`` tasks."""
        if not split.train:
            raise ValueError("MeLUMAML.fit: the split has no train tasks")
        cfg = self.config
        ds = split.dataset
        net = MeLUNet(ds.users, ds.items, ds.rating_range, cfg)
        net.reset_parameters(torch.Generator().manual_seed(cfg.seed))
        self.net = net
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        rng = np.random.default_rng(cfg.seed)
        best, best_state, stale = float("inf"), copy.deepcopy(net.state_dict()), 0
        self.history = []
        for epoch in tqdm(range(cfg.epochs), desc=self.name, disable=not cfg.show_progress):
            train_loss = self._train_epoch(net, opt, split.train, rng)
            valid = self.valid_mse(split.valid) if split.valid else train_loss
            self.history.append({"epoch": epoch, "train_loss": train_loss, "valid_mse": valid})
            if valid < best:
                best, stale, self.best_epoch = valid, 0, epoch
                best_state = copy.deepcopy(net.state_dict())  # a copy, not a live reference
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        net.load_state_dict(best_state)
        self.best_valid_mse = best

    def _train_epoch(
        self,
        net: MeLUNet,
        opt: torch.optim.Optimizer,
        tasks: Sequence[Task],
        rng: np.random.Generator,
    ) -> float:
        """One pass over the train tasks in shuffled batches; returns the mean outer loss."""
        net.train()
        order = rng.permutation(len(tasks))
        losses = []
        for start in range(0, len(order), self.config.batch_size):
            batch = collate_tasks([tasks[i] for i in order[start : start + self.config.batch_size]])
            loss = query_loss(net, batch, self.config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    def valid_mse(self, tasks: Sequence[Task]) -> float:
        """Per-user query MSE after adaptation, averaged over ``tasks``."""
        preds = self.predict(tasks)
        return float(
            np.mean([np.mean((p - t.query_labels) ** 2) for p, t in zip(preds, tasks, strict=True)])
        )

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        """Adapt to each task's support set and predict its query items.

        Returns:
            One ``(Q_i,)`` float32 array per task, in rating units.
        """
        net = self._require_net()
        net.eval()
        out: list[np.ndarray] = []
        for start in range(0, len(tasks), self.config.batch_size):
            chunk = tasks[start : start + self.config.batch_size]
            batch = collate_tasks(chunk)
            with torch.no_grad():
                pred = query_predictions(net, batch, replace(self.config, first_order=True))
            pred = pred.clamp(net.low, net.low + net.span)
            out += [
                pred[i, : len(t.query_items)].numpy().astype(np.float32)
                for i, t in enumerate(chunk)
            ]
        return out

    def _require_net(self) -> MeLUNet:
        if self.net is None:
            raise RuntimeError("MeLUMAML: call fit(split) before predict(tasks)")
        return self.net


def fit_grid(
    split: EpisodeSplit, configs: Sequence[MAMLConfig]
) -> tuple[MeLUMAML, list[dict[str, float]]]:
    """Fit one model per config and keep the one with the lowest validation MSE.

    This is how ``local_lr`` / ``local_steps`` are tuned: on the valid users, never the test users.

    Returns:
        The selected (fitted) model and one summary row per config, in order.
    """
    if not split.valid:
        raise ValueError("fit_grid: the split has no valid tasks to select on")
    if not configs:
        raise ValueError("fit_grid: no configs given")
    best: MeLUMAML | None = None
    rows = []
    for config in configs:
        model = MeLUMAML(config)
        model.fit(split)
        rows.append(
            {
                "local_lr": config.local_lr,
                "local_steps": float(config.local_steps),
                "valid_mse": model.best_valid_mse,
                "best_epoch": float(model.best_epoch),
            }
        )
        if best is None or model.best_valid_mse < best.best_valid_mse:
            best = model
    assert best is not None
    return best, rows
