"""ColdNAS training: batched episodic training with resumable checkpoints, one-shot search,
structure derivation, retraining, and ``Predictor`` wrappers for the evaluation protocol.

Implements the search/derive/retrain procedure of Wu et al., "Modulation Search for User
Cold-Start Recommendation" (ColdNAS, WWW 2023, arXiv 2306.03387), Sec. 4.3, without the defects
of the public reference code: every position has its own gates, the best gates/weights are saved
as copies, and every selection (epoch, K, structure) uses validation users only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from warmstart.checkpoint import optimizer_state_tensors, restore_optimizer_state
from warmstart.coldstart.artifacts import save_model, state_to_cpu
from warmstart.coldstart.model import ColdNAS, ColdNASConfig
from warmstart.coldstart.structure import OPS, Structure
from warmstart.data.types import EpisodeSplit, Task, TaskBatch, collate_tasks

TRAIN_EPISODES = ("fixed", "resample-tasks", "resample-users")
MIN_POOL = 4  # smallest user history turned into a training episode (support >= 2, query >= 1)


@dataclass(frozen=True)
class TrainConfig:
    """One training run (search or retrain).

    Attributes:
        epochs: passes over the training tasks.
        batch_size: tasks per optimiser step.
        lr: Adam learning rate (weights and gate logits share one optimiser).
        weight_decay: Adam L2 penalty (reference: 0).
        gate_lr_scale: the supernet's gate logits use ``lr * gate_lr_scale`` (same optimiser,
            own parameter group): the best validation epoch comes early, and at the weights' lr
            the gates would barely leave 0.5 by then.
        eval_every: validate every this many epochs (and after the last one).
        checkpoint_every: write a resumable checkpoint every this many epochs (and at the end).
        seed: initial weights and task order.
        train_episodes: ``"fixed"``: the split's train tasks as given; ``"resample-tasks"``:
            each epoch re-cuts every train task's interactions into a fresh random
            support/query split of the same sizes; ``"resample-users"``: as before but from all
            interactions of every train-split user (users too small or too large to be tasks
            included, capped at the largest task size). Validation/test tasks are never touched.
    """

    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    eval_every: int = 5
    checkpoint_every: int = 10
    seed: int = 0
    train_episodes: str = "resample-users"
    weight_decay: float = 0.0
    gate_lr_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.train_episodes not in TRAIN_EPISODES:
            raise ValueError(
                f"TrainConfig.train_episodes={self.train_episodes!r}, allowed {TRAIN_EPISODES}"
            )
        for name in ("epochs", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.gate_lr_scale <= 0:
            raise ValueError(f"TrainConfig.gate_lr_scale must be > 0, got {self.gate_lr_scale}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Preset:
    """Model + training settings used together."""

    model: ColdNASConfig
    train: TrainConfig
    k_values: tuple[int, ...]


PRESETS: dict[str, Preset] = {
    # Reference architecture and epochs; lr 1e-3 instead of 1e-4 (chosen on Last.fm validation
    # users, see docs/coldstart.md); K chosen on validation among these values.
    # Validation every epoch: with lr 1e-3 the best epoch comes early (see docs/coldstart.md).
    "paper": Preset(ColdNASConfig(), TrainConfig(epochs=100, lr=1e-3, eval_every=1), (2, 4, 8)),
    # Small widths and few epochs: smoke runs and tests.
    "tiny": Preset(
        ColdNASConfig(embedding_dim=8, hidden_sizes=(16, 8, 8), adaptation_dim=32),
        TrainConfig(epochs=4, eval_every=1, checkpoint_every=1, lr=3e-3),
        (2, 4),
    ),
}


@dataclass
class FitResult:
    """Outcome of :func:`fit`; the model holds the best-validation weights afterwards.

    Attributes:
        best_epoch: epoch (1-based) of the best validation MSE (the last epoch without valid tasks).
        best_valid_mse: that MSE (``nan`` without valid tasks).
        history: one dict per evaluated epoch: ``epoch``, ``train_loss``, ``valid_mse``.
        best_gates: ``(n_positions, 4)`` gate values at the best epoch (supernet only).
        completed: False when stopped early by ``stop_after``.
    """

    best_epoch: int
    best_valid_mse: float
    history: list[dict[str, float]] = field(default_factory=list)
    best_gates: np.ndarray | None = None
    completed: bool = True


# --------------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class EpisodePools:
    """Per-user interaction pools that training episodes are re-cut from every epoch.

    Pools are stored padded so that an epoch's episodes are cut with a few array operations.

    Attributes:
        users: ``(U,)`` dense user indices.
        items / labels: ``(U, N)`` each user's interactions, padded (item 0, label 0).
        lengths: ``(U,)`` valid entries per row.
        support: ``(U,)`` fixed support size per pool, or -1 to use the size rule.
        cap: at most this many interactions per episode (a random subset of larger pools).
        query_fraction: size rule: ``q = max(1, round(n * query_fraction))``, ``s = n - q``
            capped at ``max_support`` (the rest goes to the query).
        max_support: see ``query_fraction``.
    """

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    support: np.ndarray
    cap: int
    query_fraction: float
    max_support: int

    @staticmethod
    def _pad(rows: Sequence[np.ndarray], dtype: type) -> np.ndarray:
        out: np.ndarray = np.zeros((len(rows), max(len(r) for r in rows)), dtype=dtype)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    @classmethod
    def from_tasks(cls, tasks: Sequence[Task]) -> EpisodePools:
        """Pools = each task's support + query, re-cut with the task's own sizes."""
        items = [np.concatenate([t.support_items, t.query_items]) for t in tasks]
        labels = [np.concatenate([t.support_labels, t.query_labels]) for t in tasks]
        return cls(
            users=np.array([t.user for t in tasks], dtype=np.int64),
            items=cls._pad(items, np.int64),
            labels=cls._pad(labels, np.float32),
            lengths=np.array([len(i) for i in items], dtype=np.int64),
            support=np.array([len(t.support_items) for t in tasks], dtype=np.int64),
            cap=max(len(i) for i in items),
            query_fraction=0.0,
            max_support=0,
        )

    @classmethod
    def from_users(cls, split: EpisodeSplit, store: int = 4) -> EpisodePools:
        """Pools = interactions of each train-split user; episode sizes follow the train tasks.

        A user with more than ``store * cap`` interactions keeps a fixed random subset of that
        size (seeded), which bounds memory and per-epoch work on long histories.
        """
        if not split.train:
            raise ValueError(
                "EpisodePools.from_users: the split has no train tasks to size episodes on"
            )
        inter = split.train_interactions().sort_values("user", kind="stable")
        users, starts = np.unique(inter["user"].to_numpy(), return_index=True)
        items = np.split(inter["item"].to_numpy(np.int64), starts[1:])
        labels = np.split(inter["label"].to_numpy(np.float32), starts[1:])
        sizes = np.array([(len(t.support_items), len(t.query_items)) for t in split.train])
        cap = int(sizes.sum(1).max())
        keep = [i for i, it in enumerate(items) if len(it) >= MIN_POOL]
        rng = np.random.default_rng(0)
        subsets = [rng.permutation(len(items[i]))[: store * cap] for i in keep]
        kept_items = [items[i][sub] for i, sub in zip(keep, subsets, strict=True)]
        kept_labels = [labels[i][sub] for i, sub in zip(keep, subsets, strict=True)]
        return cls(
            users=users[keep].astype(np.int64),
            items=cls._pad(kept_items, np.int64),
            labels=cls._pad(kept_labels, np.float32),
            lengths=np.array([len(i) for i in kept_items], dtype=np.int64),
            support=np.full(len(keep), -1, dtype=np.int64),
            cap=cap,
            query_fraction=float(np.median(sizes[:, 1] / sizes.sum(1))),
            max_support=int(sizes[:, 0].max()),
        )

    def sizes(self, n: np.ndarray) -> np.ndarray:
        """``(U,)`` support sizes for episodes of ``n`` interactions."""
        q = np.maximum(1, np.round(n * self.query_fraction)).astype(np.int64)
        rule = np.minimum(n - q, self.max_support)
        return np.where(self.support >= 0, self.support, rule)

    def sample(self, rng: np.random.Generator) -> TaskBatch:
        """One fresh episode per pool: random subset (up to ``cap``), random support/query cut."""
        n_rows, width = self.items.shape
        keys = rng.random((n_rows, width))
        keys[np.arange(width)[None, :] >= self.lengths[:, None]] = 2.0  # padding sorts last
        order = np.argsort(keys, axis=1)[:, : self.cap]  # (U, C)
        items = np.take_along_axis(self.items, order, 1)
        labels = np.take_along_axis(self.labels, order, 1)
        n = np.minimum(self.lengths, self.cap)  # (U,)
        s = self.sizes(n)  # (U,)
        width_s, width_q = int(s.max()), int((n - s).max())
        s_mask = np.arange(width_s)[None, :] < s[:, None]  # (U, S)
        q_pos = s[:, None] + np.arange(width_q)[None, :]  # (U, Q)
        q_mask = q_pos < n[:, None]
        q_pos = np.minimum(q_pos, items.shape[1] - 1)
        return TaskBatch(
            users=torch.as_tensor(self.users),
            support_items=torch.as_tensor(np.where(s_mask, items[:, :width_s], 0)),
            support_labels=torch.as_tensor(
                np.where(s_mask, labels[:, :width_s], 0).astype(np.float32)
            ),
            support_mask=torch.as_tensor(s_mask),
            query_items=torch.as_tensor(np.where(q_mask, np.take_along_axis(items, q_pos, 1), 0)),
            query_labels=torch.as_tensor(
                np.where(q_mask, np.take_along_axis(labels, q_pos, 1), 0).astype(np.float32)
            ),
            query_mask=torch.as_tensor(q_mask),
        )


def training_pools(split: EpisodeSplit, config: TrainConfig) -> EpisodePools | None:
    """The pools ``config.train_episodes`` asks for (``None`` for fixed tasks)."""
    if config.train_episodes == "resample-users":
        return EpisodePools.from_users(split)
    if config.train_episodes == "resample-tasks":
        return EpisodePools.from_tasks(split.train)
    return None


# --------------------------------------------------------------------------------- batching
def select(batch: TaskBatch, rows: torch.Tensor) -> TaskBatch:
    """Rows of a padded batch, trimmed to the longest support/query set among them."""
    s_mask, q_mask = batch.support_mask[rows], batch.query_mask[rows]
    s = int(s_mask.sum(1).max()) if len(rows) else 0
    q = int(q_mask.sum(1).max()) if len(rows) else 0
    return TaskBatch(
        users=batch.users[rows],
        support_items=batch.support_items[rows, :s],
        support_labels=batch.support_labels[rows, :s],
        support_mask=s_mask[:, :s],
        query_items=batch.query_items[rows, :q],
        query_labels=batch.query_labels[rows, :q],
        query_mask=q_mask[:, :q],
    )


def per_task_mse(pred: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """``(B, Q)`` predictions -> ``(B,)`` mean squared error over each task's valid query items."""
    w = batch.query_mask.to(pred.dtype)
    return ((pred - batch.query_labels) ** 2 * w).sum(1) / w.sum(1).clamp_min(1.0)


@torch.no_grad()
def predict_batch(model: ColdNAS, batch: TaskBatch, chunk: int = 512) -> torch.Tensor:
    """Predictions ``(B, Q)`` for a padded batch, in chunks of tasks, eval mode."""
    was_training = model.training
    model.eval()
    out = torch.zeros_like(batch.query_labels)
    for start in range(0, len(batch), chunk):
        rows = torch.arange(start, min(start + chunk, len(batch)))
        sub = select(batch, rows)
        out[rows, : sub.query_items.shape[1]] = model(sub)
    model.train(was_training)
    return out


def predict_tasks(model: ColdNAS, tasks: Sequence[Task]) -> list[np.ndarray]:
    """One prediction array per task, aligned with ``task.query_items``."""
    if not tasks:
        return []
    pred = predict_batch(model, collate_tasks(tasks)).numpy()
    return [pred[i, : len(t.query_items)].astype(np.float32) for i, t in enumerate(tasks)]


def valid_mse(model: ColdNAS, batch: TaskBatch | None) -> float:
    """Mean over tasks of the per-task query MSE (the evaluation protocol's MSE)."""
    if batch is None:
        return float("nan")
    return float(per_task_mse(predict_batch(model, batch), batch).mean())


# --------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(
    directory: Path,
    model: ColdNAS,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    state: dict[str, Any],
) -> None:
    """Write ``last.safetensors`` (weights, Adam moments, RNG) and ``last.json`` atomically-ish."""
    tensors = {f"model.{k}": v for k, v in state_to_cpu(model).items()}
    opt_state = opt.state_dict()
    tensors.update(optimizer_state_tensors(opt, prefix="opt."))
    tensors["rng"] = gen.get_state()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "last.safetensors.tmp"))
    meta = {**state, "param_groups": opt_state["param_groups"]}
    (directory / "last.json.tmp").write_text(json.dumps(meta, default=_json_default))
    (directory / "last.safetensors.tmp").replace(directory / "last.safetensors")
    (directory / "last.json.tmp").replace(directory / "last.json")


def _json_default(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _load_checkpoint(
    directory: Path, model: ColdNAS, opt: torch.optim.Optimizer, gen: torch.Generator
) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((directory / "last.json").read_text())
    tensors = load_file(str(directory / "last.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer_state(opt, tensors, prefix="opt.", param_groups=meta.pop("param_groups"))
    gen.set_state(tensors["rng"])
    return meta


# --------------------------------------------------------------------------------- training
class Objective(Protocol):
    """What ``fit`` minimises and selects epochs by (default: query MSE, the paper's loss).

    ``loss`` returns the scalar training loss of a batch (``gen`` is the trainer's generator,
    for objectives that sample, e.g. negatives); ``valid_score`` scores the valid tasks, lower
    is better (``FitResult.best_valid_mse`` then holds it). See ``coldstart/ranking.py``.
    """

    name: str

    def loss(self, model: ColdNAS, batch: TaskBatch, gen: torch.Generator) -> torch.Tensor: ...

    def valid_score(self, model: ColdNAS, batch: TaskBatch) -> float: ...


ObjectiveFactory = Callable[[EpisodeSplit], Objective]
"""Builds an ``Objective`` for a split (e.g. popularity counts for negative sampling)."""


def fit(
    model: ColdNAS,
    train_tasks: Sequence[Task],
    valid_tasks: Sequence[Task],
    config: TrainConfig,
    checkpoint_dir: Path | None = None,
    progress: bool = False,
    stop_after: int | None = None,
    desc: str = "train",
    pools: EpisodePools | None = None,
    objective: Objective | None = None,
) -> FitResult:
    """Train ``model`` on query MSE (or ``objective``); keep (a copy of) the best-validation
    weights.

    On return (also when stopped by ``stop_after``) the model holds the best-validation weights,
    in eval mode. Resumes from ``checkpoint_dir/last.*`` when present (its config and objective
    are checked before anything is loaded); the result equals an uninterrupted run with the same
    seed. ``stop_after`` stops (with a checkpoint) after that many epochs in total,
    which is how interruption is simulated in tests. With ``pools`` the epoch's training tasks are
    re-cut from them (``train_tasks`` is then unused); each epoch's cut depends only on
    ``(seed, epoch)``, so resuming reproduces it.
    """
    train = collate_tasks(train_tasks) if pools is None else None
    valid = collate_tasks(valid_tasks) if valid_tasks else None
    gen = torch.Generator().manual_seed(config.seed)
    opt = _optimizer(model, config)
    state: dict[str, Any] = {
        "config": asdict(config),
        "objective": objective.name if objective is not None else "mse",
        "epoch": 0,
        "best_epoch": 0,
        "best_valid_mse": float("inf"),
        "history": [],
    }
    best = state_to_cpu(model)
    if checkpoint_dir is not None and (checkpoint_dir / "last.json").is_file():
        # before anything is loaded into the model
        _check_checkpoint_config(checkpoint_dir, config, state["objective"])
        state = _load_checkpoint(checkpoint_dir, model, opt, gen)
        best_path = checkpoint_dir / "best.safetensors"
        best = load_file(str(best_path)) if best_path.is_file() else state_to_cpu(model)
    model.train()
    bar = tqdm(range(state["epoch"], config.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        if pools is not None:
            train = pools.sample(np.random.default_rng((config.seed, epoch)))
        assert train is not None
        loss = _train_epoch(model, opt, train, config.batch_size, gen, objective)
        done = epoch + 1
        if done % config.eval_every == 0 or done == config.epochs:
            mse = (
                valid_mse(model, valid)
                if objective is None or valid is None
                else objective.valid_score(model, valid)
            )
            state["history"].append({"epoch": done, "train_loss": loss, "valid_mse": mse})
            bar.set_postfix(loss=f"{loss:.4f}", valid=f"{mse:.4f}")
            if valid is None or mse < state["best_valid_mse"]:
                state["best_epoch"], state["best_valid_mse"] = done, mse
                best = state_to_cpu(model)
                if checkpoint_dir is not None:
                    checkpoint_dir.mkdir(parents=True, exist_ok=True)
                    save_file(best, str(checkpoint_dir / "best.safetensors"))
        state["epoch"] = done
        stopping = stop_after is not None and done >= stop_after and done < config.epochs
        if checkpoint_dir is not None and (
            done % config.checkpoint_every == 0 or done == config.epochs or stopping
        ):
            _save_checkpoint(checkpoint_dir, model, opt, gen, state)
        if stopping:  # the checkpoint above holds the last weights; the model gets the best
            return _best_result(model, best, state, valid is not None, completed=False)
    return _best_result(model, best, state, valid is not None)


def _check_checkpoint_config(directory: Path, config: TrainConfig, objective: str) -> None:
    """Refuse a checkpoint written under another training config or objective (``last.json``)."""
    path = directory / "last.json"
    stored = json.loads(path.read_text())
    if stored.get("config") != asdict(config) or stored.get("objective", "mse") != objective:
        raise ValueError(
            f"{path}: checkpoint was written with a different training config "
            f"{stored.get('config')} (objective {stored.get('objective', 'mse')}); use another "
            "--out folder or delete it"
        )


def _best_result(
    model: ColdNAS,
    best: dict[str, torch.Tensor],
    state: dict[str, Any],
    has_valid: bool,
    completed: bool = True,
) -> FitResult:
    """Load the best-validation weights into ``model`` (eval mode) and describe the fit."""
    model.load_state_dict(best)
    model.eval()
    gates = model.gates()
    return FitResult(
        best_epoch=state["best_epoch"],
        best_valid_mse=state["best_valid_mse"] if has_valid else float("nan"),
        history=state["history"],
        best_gates=None if gates is None else gates.detach().numpy().copy(),
        completed=completed,
    )


def _optimizer(model: ColdNAS, config: TrainConfig) -> torch.optim.Optimizer:
    """One Adam for weights and gate logits; the gates get ``gate_lr_scale * lr`` and no decay."""
    gates = [model.gate_logits] if model.gate_logits is not None else []
    weights = [p for p in model.parameters() if all(p is not g for g in gates)]
    groups: list[dict[str, Any]] = [{"params": weights}]
    if gates:
        groups.append(
            {"params": gates, "lr": config.lr * config.gate_lr_scale, "weight_decay": 0.0}
        )
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def _train_epoch(
    model: ColdNAS,
    opt: torch.optim.Optimizer,
    train: TaskBatch,
    batch_size: int,
    gen: torch.Generator,
    objective: Objective | None = None,
) -> float:
    """One shuffled pass; returns the mean task loss."""
    order = torch.randperm(len(train), generator=gen)
    total = 0.0
    for start in range(0, len(train), batch_size):
        batch = select(train, order[start : start + batch_size])
        loss = (
            per_task_mse(model(batch), batch).mean()
            if objective is None
            else objective.loss(model, batch, gen)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach().item() * len(batch)
    return total / len(train)


# --------------------------------------------------------------------------------- search
def derive_structure(gates: np.ndarray, k: int) -> Structure:
    """Keep the ``k`` (position, op) pairs with the largest gates (ties: earlier position/op).

    Args:
        gates: ``(n_positions, 4)`` gate values, columns in ``OPS`` order.
        k: number of pairs to keep, ``0 <= k <= gates.size``.
    """
    gates = np.asarray(gates, dtype=np.float64)
    if gates.ndim != 2 or gates.shape[1] != len(OPS):
        raise ValueError(
            f"derive_structure: gates must be (n_positions, {len(OPS)}), got {gates.shape}"
        )
    if not 0 <= k <= gates.size:
        raise ValueError(f"derive_structure: k must be in [0, {gates.size}], got {k}")
    order = np.argsort(-gates.reshape(-1), kind="stable")[:k]
    pairs = [(int(i) // len(OPS), OPS[int(i) % len(OPS)]) for i in order]
    return Structure.from_ops(pairs, gates.shape[0])


def gates_table(gates: np.ndarray) -> str:
    """Gate values as a small text table (rows = positions, columns = ops)."""
    lines = ["pos  " + "  ".join(f"{op:>5}" for op in OPS)]
    lines += [
        f"{p:>3}  " + "  ".join(f"{v:5.3f}" for v in row) for p, row in enumerate(np.asarray(gates))
    ]
    return "\n".join(lines)


@dataclass
class SearchOutcome:
    """Everything :func:`search_and_retrain` selected, and why.

    Attributes:
        structure: the selected structure (best validation MSE after retraining).
        k: its number of (position, op) pairs.
        model: the retrained model with that structure (best-validation weights).
        gates: ``(n_positions, 4)`` supernet gates at the best search epoch.
        candidates: one dict per K tried: ``k``, ``structure``, ``valid_mse``, ``best_epoch``.
        search: the supernet's fit result.
    """

    structure: Structure
    k: int
    model: ColdNAS
    gates: np.ndarray
    candidates: list[dict[str, Any]]
    search: FitResult


def build_model(
    split: EpisodeSplit, config: ColdNASConfig, structure: Structure | None, seed: int
) -> ColdNAS:
    """A fresh model for ``split``'s dataset (rating range taken from the dataset)."""
    low, high = split.dataset.rating_range
    config = replace(config, rating_range=(float(low), float(high)))
    gen = torch.Generator().manual_seed(seed)
    model = ColdNAS(config, split.dataset.users, split.dataset.items, structure, generator=gen)
    if config.item_prior:
        model.item_prior.copy_(torch.as_tensor(item_prior_logits(split), dtype=torch.float32))
    return model


def item_prior_logits(split: EpisodeSplit, strength: float = 2.0) -> np.ndarray:
    """``(n_items,)`` logit of each item's smoothed mean label among train-split users.

    Labels are scaled to [0, 1] by the rating range; the mean is shrunk toward the global mean
    with ``strength`` pseudo-counts (for 0/1 labels with mean 0.5: ``(pos + 1) / (n + 2)``).
    """
    low, high = split.dataset.rating_range
    inter = split.train_interactions()
    y = (inter["label"].to_numpy(np.float64) - low) / (high - low)
    items = inter["item"].to_numpy(np.int64)
    n_items = split.dataset.n_items
    total = np.bincount(items, weights=y, minlength=n_items)
    count = np.bincount(items, minlength=n_items)
    mu = float(y.mean()) if y.size else 0.5
    p = np.clip((total + strength * mu) / (count + strength), 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def train_structure(
    split: EpisodeSplit,
    structure: Structure | None,
    model_config: ColdNASConfig,
    train_config: TrainConfig,
    checkpoint_dir: Path | None = None,
    progress: bool = False,
    desc: str = "train",
    objective: Objective | None = None,
) -> tuple[ColdNAS, FitResult]:
    """Train a fixed structure (or the supernet when ``structure is None``) on ``split``."""
    model = build_model(split, model_config, structure, train_config.seed)
    pools = training_pools(split, train_config)
    result = fit(
        model,
        split.train,
        split.valid,
        train_config,
        checkpoint_dir,
        progress,
        desc=desc,
        pools=pools,
        objective=objective,
    )
    return model, result


def search_and_retrain(
    split: EpisodeSplit,
    model_config: ColdNASConfig,
    train_config: TrainConfig,
    k_values: Sequence[int] = (4,),
    retrain_config: TrainConfig | None = None,
    out_dir: Path | None = None,
    progress: bool = False,
    objective: Objective | None = None,
) -> SearchOutcome:
    """One-shot search, derive top-K for each K, retrain each from scratch, select K on validation.

    ``train_config`` trains the supernet (keep its weight decay at 0: L2 collapses the max/min
    clamps, see ``ColdNASPredictor``), ``retrain_config`` (default: the same) the candidates.
    """
    retrain_config = retrain_config or train_config
    sub = (lambda name: out_dir / name) if out_dir is not None else (lambda name: None)
    supernet, search = train_structure(
        split, None, model_config, train_config, sub("search"), progress, "search", objective
    )
    assert search.best_gates is not None
    gates = search.best_gates
    if out_dir is not None:
        (out_dir / "gates.json").write_text(json.dumps({"gates": gates.tolist(), "ops": list(OPS)}))
    best: tuple[float, int, Structure, ColdNAS] | None = None
    candidates = []
    for k in k_values:
        structure = derive_structure(gates, k)
        model, res = train_structure(
            split,
            structure,
            model_config,
            retrain_config,
            sub(f"retrain-k{k}"),
            progress,
            f"retrain K={k}",
            objective,
        )
        candidates.append(
            {
                "k": k,
                "structure": str(structure),
                "valid_mse": res.best_valid_mse,
                "best_epoch": res.best_epoch,
            }
        )
        if best is None or res.best_valid_mse < best[0]:
            best = (res.best_valid_mse, k, structure, model)
    if best is None:
        raise ValueError("search_and_retrain: k_values is empty")
    del supernet
    return SearchOutcome(best[2], best[1], best[3], gates, candidates, search)


# --------------------------------------------------------------------------------- predictors
class ColdNASPredictor:
    """ColdNAS as a ``Predictor``: search + derive + retrain on ``fit``, batched ``predict``."""

    def __init__(
        self,
        model_config: ColdNASConfig | None = None,
        train_config: TrainConfig | None = None,
        k_values: Sequence[int] = (4,),
        out_dir: Path | None = None,
        progress: bool = False,
        name: str = "ColdNAS",
        search_config: TrainConfig | None = None,
        objective: ObjectiveFactory | None = None,
    ) -> None:
        self.name = name
        self.objective = objective  # built from the split in fit (None: query MSE)
        self.model_config = model_config or PRESETS["paper"].model
        self.train_config = train_config or PRESETS["paper"].train
        # The supernet trains under its own settings; by default train_config without weight
        # decay (the reference's 0): L2 holds its max/min heads at their shared threshold 0, where
        # min(max(h, 0), 0) = 0 cuts the item off (docs/coldstart.md, Last.fm). Retraining
        # uses train_config.
        self.search_config = search_config or replace(self.train_config, weight_decay=0.0)
        self.k_values = tuple(k_values)
        self.out_dir = out_dir
        self.progress = progress
        self.outcome: SearchOutcome | None = None

    def fit(self, split: EpisodeSplit) -> None:
        self.outcome = search_and_retrain(
            split,
            self.model_config,
            self.search_config,
            self.k_values,
            retrain_config=self.train_config,
            out_dir=self.out_dir,
            progress=self.progress,
            objective=None if self.objective is None else self.objective(split),
        )

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        if self.outcome is None:
            raise ValueError(f"{self.name}: call fit() before predict()")
        return predict_tasks(self.outcome.model, tasks)


class FixedStructurePredictor:
    """A fixed modulation structure trained in the ColdNAS framework (default: FiLM)."""

    def __init__(
        self,
        structure: Structure | None = None,
        model_config: ColdNASConfig | None = None,
        train_config: TrainConfig | None = None,
        out_dir: Path | None = None,
        progress: bool = False,
        name: str = "fixed FiLM",
        objective: ObjectiveFactory | None = None,
    ) -> None:
        self.objective = objective  # built from the split in fit (None: query MSE)
        self.model_config = model_config or PRESETS["paper"].model
        self.structure = structure or Structure.film(self.model_config.n_positions)
        self.train_config = train_config or PRESETS["paper"].train
        self.out_dir = out_dir
        self.progress = progress
        self.name = name
        self.model: ColdNAS | None = None
        self.result: FitResult | None = None

    def fit(self, split: EpisodeSplit) -> None:
        self.model, self.result = train_structure(
            split,
            self.structure,
            self.model_config,
            self.train_config,
            self.out_dir,
            self.progress,
            self.name,
            None if self.objective is None else self.objective(split),
        )

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        if self.model is None:
            raise ValueError(f"{self.name}: call fit() before predict()")
        return predict_tasks(self.model, tasks)


export = save_model
"""Save a trained model for :func:`warmstart.coldstart.inference.load_recommender` (the
trainer's name for ``artifacts.save_model``: weights, config, raw id maps, item display info)."""


def fit_summary(result: FitResult) -> dict[str, Any]:
    """JSON-friendly summary of a fit."""
    out = asdict(result)
    if result.best_gates is not None:
        out["best_gates"] = result.best_gates.tolist()
    return out
