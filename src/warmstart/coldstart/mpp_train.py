"""MPP offline and online meta-learning (Zhao et al., arXiv 1912.04108).

Offline (training users): the inner loop adapts only the adaptive part θ_a on each user's support
set (``mpp.adapt``, one ``vmap`` call per batch of users); the outer loop updates the fixed part
θ_f, the meta-initialisation of θ_a and (optionally) the inner step sizes on the query BCE,
second-order by default (``first_order`` drops the inner Hessian terms).

Online (a stream of new users in arrival order, θ_f frozen): for each user adapt θ_a from the
current meta-init on the support set, score the query set *before* any update (prequential),
then update the meta-init with that user's query loss (online MAML) or a Reptile step. The
forgetting check variant also updates θ_f.

Also here: the conventional (pooled) trainer of the same network and the step-capped loop that
drives MPP, pooled training and the MeLU-style MAML baseline with the same budget.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from warmstart.checkpoint import (
    optimizer_state_tensors,
    restore_optimizer_state,
    save_tensors_atomic,
)
from warmstart.coldstart.mpp import (
    MPPConfig,
    MPPNet,
    Params,
    PartitionRule,
    adapt,
    adapt_one,
    adapted_logits,
    fixed_head_params,
    head_call,
    masked_bce,
    partition,
)
from warmstart.data.types import EpisodeSplit, Task, TaskBatch, collate_tasks
from warmstart.metrics import auc

ONLINE_MODES = ("maml", "reptile")


@dataclass(frozen=True)
class MetaConfig:
    """Offline meta-training (and the inner loop used everywhere after it).

    Attributes:
        inner_steps: SGD steps on the support set (``k``).
        inner_lr: inner step size (initial value when learned).
        learn_inner_lr: learn one log step size per adaptive tensor in the outer loop.
        first_order: first-order MAML (inner gradients detached).
        lr: outer Adam learning rate.
        weight_decay: outer Adam L2 penalty.
        batch_size: users per outer step.
        steps: outer steps (the budget every compared method gets).
        eval_every: validation AUC every this many steps (the convergence curve).
        seed: init, batch order.
    """

    inner_steps: int = 3
    inner_lr: float = 0.5
    learn_inner_lr: bool = True
    first_order: bool = False
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    steps: int = 300
    eval_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"MetaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.inner_steps < 0:
            raise ValueError(f"MetaConfig.inner_steps must be >= 0, got {self.inner_steps}")
        for name in ("inner_lr", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MetaConfig.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class OnlineConfig:
    """Online meta-learning over the stream of new users.

    Attributes:
        mode: ``"maml"`` (SGD on the user's query loss through the inner loop) or ``"reptile"``
            (move the meta-init toward the parameters adapted on support + query).
        lr: online SGD step size (``maml``) or interpolation step ε (``reptile``); the fixed
            part, when updated, takes SGD steps of this size on the query loss.
        update_fixed: also update θ_f (the forgetting-check variant; MPP keeps it frozen).
    """

    mode: str = "maml"
    lr: float = 0.05
    update_fixed: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ONLINE_MODES:
            raise ValueError(f"OnlineConfig.mode={self.mode!r}, allowed {ONLINE_MODES}")
        if not self.lr > 0:
            raise ValueError(f"OnlineConfig.lr must be > 0, got {self.lr}")


class MetaLearner(nn.Module):
    """An ``MPPNet``, its partition rule and the inner step sizes (one per adaptive tensor)."""

    def __init__(self, net: MPPNet, rule: PartitionRule, config: MetaConfig) -> None:
        super().__init__()
        self.net = net
        self.rule = rule
        self.config = config
        _, adaptive = partition(net.named_parameters(), rule)
        self.adaptive_names = list(adaptive)
        # ParameterDict keys may not contain dots.
        self.log_lr = nn.ParameterDict(
            {
                _key(n): nn.Parameter(
                    torch.tensor(math.log(config.inner_lr)), requires_grad=config.learn_inner_lr
                )
                for n in self.adaptive_names
            }
        )

    def parts(self) -> tuple[Params, Params]:
        """The live ``(fixed, adaptive)`` parameters of the network."""
        return partition(self.net.named_parameters(), self.rule)

    def lrs(self) -> dict[str, Tensor]:
        return {n: self.log_lr[_key(n)].exp() for n in self.adaptive_names}

    def inner_lr_values(self) -> dict[str, float]:
        return {n: float(v.detach()) for n, v in self.lrs().items()}

    def query_logits(self, batch: TaskBatch, first_order: bool | None = None) -> Tensor:
        """Adapt every user of ``batch`` on its support set (one vmap call); ``(B, Q)`` logits."""
        fo = self.config.first_order if first_order is None else first_order
        fixed, adaptive = self.parts()
        head = fixed_head_params(fixed)
        x_s = self.net.embed(batch.users, batch.support_items)  # (B, S, D)
        x_q = self.net.embed(batch.users, batch.query_items)  # (B, Q, D)
        steps = self.config.inner_steps
        adapted = adapt(
            self.net, adaptive, head, x_s, batch.support_labels, batch.support_mask,
            self.lrs(), steps, fo,
        )  # fmt: skip
        return adapted_logits(self.net, adapted, head, x_q)


def _key(name: str) -> str:
    return name.replace(".", "__")


# ----------------------------------------------------------------------------- losses
def meta_loss(learner: MetaLearner, batch: TaskBatch) -> Tensor:
    """Outer loss: per-user query BCE after adaptation, averaged over users."""
    logits = learner.query_logits(batch)
    return masked_bce(logits, batch.query_labels, batch.query_mask).mean()


def meta_loss_loop(learner: MetaLearner, tasks: Sequence[Task]) -> Tensor:
    """``meta_loss`` as a Python loop over users (the reference for the vmap path)."""
    net, cfg = learner.net, learner.config
    fixed, adaptive = learner.parts()
    head, lrs = fixed_head_params(fixed), learner.lrs()
    losses = []
    for t in tasks:
        user = torch.tensor([t.user])
        s_items = torch.as_tensor(t.support_items)[None]
        q_items = torch.as_tensor(t.query_items)[None]
        x_s, x_q = net.embed(user, s_items)[0], net.embed(user, q_items)[0]  # (S, D), (Q, D)
        y_s = torch.as_tensor(t.support_labels)
        m_s = torch.ones_like(y_s, dtype=torch.bool)
        a = adapt_one(net, adaptive, head, x_s, y_s, m_s, lrs, cfg.inner_steps, cfg.first_order)
        y_q = torch.as_tensor(t.query_labels)
        losses.append(masked_bce(head_call(net, {**head, **a}, x_q), y_q, torch.ones_like(y_q)))
    return torch.stack(losses).mean()


def pooled_loss(net: MPPNet, batch: TaskBatch) -> Tensor:
    """Conventional training: BCE over every (support and query) row of the batch's users."""
    items = torch.cat([batch.support_items, batch.query_items], dim=1)  # (B, S + Q)
    labels = torch.cat([batch.support_labels, batch.query_labels], dim=1)
    mask = torch.cat([batch.support_mask, batch.query_mask], dim=1)
    m = mask.float()
    loss = masked_bce(net(batch.users, items), labels, mask) * m.sum(-1)
    return loss.sum() / m.sum().clamp(min=1.0)  # per row, not per user


# ----------------------------------------------------------------------------- prediction
def _chunks(tasks: Sequence[Task], size: int) -> Iterable[Sequence[Task]]:
    for start in range(0, len(tasks), size):
        yield tasks[start : start + size]


def _unpad(probs: Tensor, tasks: Sequence[Task]) -> list[np.ndarray]:
    return [probs[i, : len(t.query_items)].numpy().astype(np.float32) for i, t in enumerate(tasks)]


def predict_adapted(learner: MetaLearner, tasks: Sequence[Task]) -> list[np.ndarray]:
    """Click probabilities of each task's query items after adapting on its support set.

    Reads support items/labels and query items only, never query labels.
    """
    out: list[np.ndarray] = []
    for chunk in _chunks(tasks, 256):
        batch = _masked_query_batch(chunk)
        with torch.no_grad():
            probs = torch.sigmoid(learner.query_logits(batch, first_order=True))
        out += _unpad(probs, chunk)
    return out


def predict_pooled(net: MPPNet, tasks: Sequence[Task]) -> list[np.ndarray]:
    """Click probabilities of the query items with the shared parameters (no adaptation)."""
    out: list[np.ndarray] = []
    for chunk in _chunks(tasks, 256):
        batch = _masked_query_batch(chunk)
        with torch.no_grad():
            probs = torch.sigmoid(net(batch.users, batch.query_items))
        out += _unpad(probs, chunk)
    return out


def _masked_query_batch(tasks: Sequence[Task]) -> TaskBatch:
    """A batch whose query labels are zeroed: prediction code cannot read them."""
    batch = collate_tasks(tasks)
    batch.query_labels = torch.zeros_like(batch.query_labels)
    return batch


def per_user_auc(preds: Sequence[np.ndarray], tasks: Sequence[Task]) -> np.ndarray:
    """``(U,)`` AUC of each user's query set; NaN where the query holds one class only."""
    out = np.full(len(tasks), np.nan)
    for i, (p, t) in enumerate(zip(preds, tasks, strict=True)):
        if 0 < (t.query_labels > 0).sum() < t.query_labels.size:
            out[i] = auc(p, t.query_labels)
    return out


def global_auc(preds: Sequence[np.ndarray], tasks: Sequence[Task]) -> float:
    """AUC of all query rows pooled over users."""
    return auc(np.concatenate(preds), np.concatenate([t.query_labels for t in tasks]))


def mean_user_auc(preds: Sequence[np.ndarray], tasks: Sequence[Task]) -> float:
    return float(np.nanmean(per_user_auc(preds, tasks)))


# ----------------------------------------------------------------------------- training loop
@dataclass
class TrainResult:
    """What a step-capped run returns: the best step's weights are loaded into the module."""

    history: list[dict[str, float]]
    best_step: int
    best_valid_auc: float


@dataclass
class _Loop:
    """Resumable state of ``train_steps`` (besides the module and optimizer)."""

    step: int
    order: np.ndarray
    pos: int
    best: float
    best_step: int
    best_state: dict[str, Tensor]
    history: list[dict[str, float]]


def train_steps(
    module: nn.Module,
    loss_fn: Callable[[TaskBatch], Tensor],
    valid_auc: Callable[[], float],
    tasks: Sequence[Task],
    config: MetaConfig,
    progress: bool = False,
    desc: str = "meta-train",
    checkpoint: Path | None = None,
) -> TrainResult:
    """Adam on ``module``'s trainable parameters for ``config.steps`` steps of ``batch_size`` users.

    Validation AUC is measured at step 0 and every ``eval_every`` steps; the weights of the best
    measurement are kept (model selection on valid users only). With ``checkpoint`` (a folder),
    the run is saved at every measurement and a rerun continues from the last one.
    """
    if not tasks:
        raise ValueError("train_steps: no train tasks")
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    loop = _resume(checkpoint, module, opt, rng, config) if checkpoint else None
    if loop is None:
        first = valid_auc()
        loop = _Loop(0, rng.permutation(len(tasks)), 0, first, 0, _snapshot(module),
                     [{"step": 0.0, "valid_auc": first, "train_loss": float("nan")}])  # fmt: skip
    steps = range(loop.step + 1, config.steps + 1)
    for step in tqdm(steps, desc=desc, disable=not progress, leave=False):
        if loop.pos + config.batch_size > len(loop.order):
            loop.order, loop.pos = rng.permutation(len(tasks)), 0
        idx = loop.order[loop.pos : loop.pos + config.batch_size]
        loop.pos += config.batch_size
        loss = loss_fn(collate_tasks([tasks[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % config.eval_every == 0 or step == config.steps:
            value = valid_auc()
            loop.history.append(
                {"step": float(step), "valid_auc": value, "train_loss": float(loss.detach())}
            )
            if value > loop.best:
                loop.best, loop.best_step, loop.best_state = value, step, _snapshot(module)
            loop.step = step
            if checkpoint:
                _save_loop(checkpoint, module, opt, rng, loop, config)
    module.load_state_dict(loop.best_state)
    return TrainResult(loop.history, loop.best_step, loop.best)


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _save_loop(
    directory: Path,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    loop: _Loop,
    config: MetaConfig,
) -> None:
    """``last.safetensors`` (weights, best weights, Adam slots) + ``last.json`` (loop state)."""
    tensors = {f"model.{k}": v.contiguous() for k, v in _snapshot(module).items()}
    tensors |= {f"best.{k}": v.contiguous() for k, v in loop.best_state.items()}
    tensors |= optimizer_state_tensors(opt, "opt.")
    save_tensors_atomic(tensors, directory / "last.safetensors")
    meta = {
        "config": asdict(config), "step": loop.step, "order": loop.order.tolist(),
        "pos": loop.pos, "best": loop.best, "best_step": loop.best_step,
        "history": loop.history, "rng": rng.bit_generator.state,
    }  # fmt: skip
    tmp = directory / "last.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(directory / "last.json")


def _resume(
    directory: Path,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    config: MetaConfig,
) -> _Loop | None:
    """The saved loop state (weights and optimizer restored) or None when there is none or it
    was written with another config."""
    path = directory / "last.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if meta["config"] != json.loads(json.dumps(asdict(config))):
        return None
    tensors = load_file(str(directory / "last.safetensors"))
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    restore_optimizer_state(opt, tensors, "opt.")
    rng.bit_generator.state = meta["rng"]
    order = np.asarray(meta["order"], dtype=np.int64)
    return _Loop(meta["step"], order, meta["pos"], meta["best"], meta["best_step"], best,
                 meta["history"])  # fmt: skip


def new_learner(
    split: EpisodeSplit, net_config: MPPConfig, rule: PartitionRule, config: MetaConfig
) -> MetaLearner:
    """A freshly initialised ``MetaLearner`` over ``split``'s feature tables (seeded)."""
    net = MPPNet(net_config, split.dataset.users, split.dataset.items)
    net.reset_parameters(torch.Generator().manual_seed(config.seed))
    return MetaLearner(net, rule, config)


def train_offline(
    learner: MetaLearner,
    split: EpisodeSplit,
    progress: bool = False,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Offline MPP meta-training on ``split.train``, selected on ``split.valid`` AUC."""
    return train_steps(
        learner,
        lambda b: meta_loss(learner, b),
        lambda: mean_user_auc(predict_adapted(learner, split.valid), split.valid),
        split.train,
        learner.config,
        progress,
        "offline MPP",
        checkpoint,
    )


def train_pooled(
    net: MPPNet,
    split: EpisodeSplit,
    config: MetaConfig,
    progress: bool = False,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Conventional training of the same network on train users' rows, selected on valid AUC."""
    return train_steps(
        net,
        lambda b: pooled_loss(net, b),
        lambda: mean_user_auc(predict_pooled(net, split.valid), split.valid),
        split.train,
        config,
        progress,
        "pooled",
        checkpoint,
    )


# ----------------------------------------------------------------------------- online stage
@dataclass
class StreamResult:
    """Prequential predictions (one per stream user, in stream order) and per-user update time."""

    preds: list[np.ndarray]
    update_s: list[float]


def stream(
    learner: MetaLearner,
    tasks: Sequence[Task],
    config: OnlineConfig,
    progress: bool = False,
) -> StreamResult:
    """Online meta-learning over ``tasks`` in the given (arrival) order; updates ``learner``.

    For each user: adapt on the support set and predict the query set with the current
    parameters (prequential; the query labels are not yet visible), then update the
    meta-initialisation (and θ_f when ``config.update_fixed``) with that user's labels.
    """
    import time

    preds, times = [], []
    for task in tqdm(tasks, desc="online", disable=not progress, leave=False):
        preds += predict_adapted(learner, [task])  # before any update with this user's labels
        start = time.perf_counter()
        online_update(learner, task, config)
        times.append(time.perf_counter() - start)
    return StreamResult(preds, times)


def online_update(learner: MetaLearner, task: Task, config: OnlineConfig) -> None:
    """One online meta-update from one user whose query labels are now revealed."""
    fixed, adaptive = learner.parts()
    batch = collate_tasks([task])
    if config.mode == "reptile":
        _reptile_step(learner, task, adaptive, config.lr)
        if not config.update_fixed:
            return
    targets = list(adaptive.values()) if config.mode == "maml" else []
    if config.update_fixed:
        targets += list(fixed.values())
    loss = meta_loss(learner, batch)
    grads = torch.autograd.grad(loss, targets, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(targets, grads, strict=True):
            if g is not None:
                p.sub_(config.lr * g)


def _reptile_step(learner: MetaLearner, task: Task, adaptive: Params, step: float) -> None:
    """θ_a <- θ_a + ε (θ_a' − θ_a), θ_a' adapted on the user's support and query rows."""
    whole = Task(
        task.user,
        np.concatenate([task.support_items, task.query_items]),
        np.concatenate([task.support_labels, task.query_labels]),
        task.query_items,
        task.query_labels,
    )
    batch = collate_tasks([whole])
    net, cfg = learner.net, learner.config
    fixed, _ = learner.parts()
    with torch.no_grad():
        x = net.embed(batch.users, batch.support_items)
        adapted = adapt(
            net, adaptive, fixed_head_params(fixed), x, batch.support_labels,
            batch.support_mask, learner.lrs(), max(cfg.inner_steps, 1), True,
        )  # fmt: skip
        for name, p in adaptive.items():
            p.add_(step * (adapted[name][0] - p))


def online_copy(learner: MetaLearner) -> MetaLearner:
    """An independent copy to stream on (the offline model stays as it was)."""
    return copy.deepcopy(learner)


# ----------------------------------------------------------------------------- data
def click_split(split: EpisodeSplit, threshold: float = 4.0) -> EpisodeSplit:
    """Click labels: ``rating >= threshold`` -> 1, else 0 (a 0/1 dataset is returned as is)."""
    if tuple(split.dataset.rating_range) == (0.0, 1.0):
        return split

    def clicks(t: Task) -> Task:
        return replace(
            t,
            support_labels=(t.support_labels >= threshold).astype(np.float32),
            query_labels=(t.query_labels >= threshold).astype(np.float32),
        )

    inter = split.dataset.interactions.copy()
    inter["label"] = (inter["label"] >= threshold).astype(np.float32)
    dataset = replace(split.dataset, interactions=inter, rating_range=(0.0, 1.0))
    return replace(
        split,
        train=[clicks(t) for t in split.train],
        valid=[clicks(t) for t in split.valid],
        test=[clicks(t) for t in split.test],
        dataset=dataset,
        meta={**split.meta, "click_threshold": threshold},
    )


def stream_order(
    tasks: Sequence[Task], first_seen: dict[int, float] | None, seed: int
) -> tuple[list[Task], str]:
    """Arrival order of new users: by first timestamp where known, the rest after in a seeded
    order. Returns the ordered tasks and a one-line description of how they were ordered."""
    rng = np.random.default_rng(seed)
    shuffled = [tasks[i] for i in rng.permutation(len(tasks))]
    if not first_seen:
        return shuffled, f"seeded random order (seed {seed}; no timestamps)"
    known = sorted((t for t in shuffled if t.user in first_seen), key=lambda t: first_seen[t.user])
    rest = [t for t in shuffled if t.user not in first_seen]
    how = (
        f"{len(known)} users by first timestamp, then {len(rest)} without one "
        f"in seeded order (seed {seed})"
    )
    return known + rest, how


def config_dict(config: MetaConfig | OnlineConfig) -> dict[str, object]:
    return asdict(config)
