"""The MPP comparison: five conditions on the same stream of new users, per seed, then tables.

Meta Parameter Partition (Zhao et al., arXiv 1912.04108), public-data proxy of its claims:
1. ``pooled``: conventional training of the same network on train users' rows, no adaptation;
2. ``offline MPP``: offline meta-training, new users adapted from the meta-init (no online stage);
3. ``offline+online MPP``: then online meta-learning over the stream, fixed part frozen,
   scored prequentially;
4. ``full MAML (MeLU)``: the MeLU-style baseline of ``coldstart/maml.py`` (every dense parameter
   adapted; its own MSE loss on the sigmoid output) on the same click labels and step budget;
5. ``online, fixed updated``: the online stage also updating the fixed part (forgetting check).
``item popularity`` (smoothed) is printed as a reference row.

Every method gets the same number of outer steps and batch size and is selected on valid users'
AUC; the test users are the stream. AUC is computed per user over the query set (users whose
query holds one class only are left out), then averaged; the paired bootstrap over users is
``warmstart.metrics.paired_bootstrap``, as in ``coldstart compare``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from warmstart.coldstart.baselines import ItemPopularity
from warmstart.coldstart.evaluate import _aligned
from warmstart.coldstart.maml import MAMLConfig, MeLUMAML, MeLUNet, query_loss
from warmstart.coldstart.mpp import MPPConfig, PartitionRule
from warmstart.coldstart.mpp_inference import save
from warmstart.coldstart.mpp_train import (
    MetaConfig,
    OnlineConfig,
    click_split,
    global_auc,
    mean_user_auc,
    new_learner,
    online_copy,
    per_user_auc,
    predict_adapted,
    predict_pooled,
    stream,
    stream_order,
    train_offline,
    train_pooled,
    train_steps,
)
from warmstart.data.types import EpisodeSplit, Task
from warmstart.metrics import paired_bootstrap

POOLED, OFFLINE, ONLINE, MAML, ONLINE_FIXED, POPULARITY = (
    "pooled",
    "offline MPP",
    "offline+online MPP",
    "full MAML (MeLU)",
    "online, fixed updated",
    "item popularity",
)
CONDITIONS = (POOLED, OFFLINE, ONLINE, MAML, ONLINE_FIXED)
# (A, B, claim): the paired differences A - B the paper's claims are about.
PAIRS = (
    (OFFLINE, POOLED, "offline MPP beats pooled training"),
    (ONLINE, OFFLINE, "online meta-training adds a gain on the stream"),
    (OFFLINE, MAML, "offline MPP vs full-parameter MAML"),
    (ONLINE, ONLINE_FIXED, "freezing the fixed part online vs updating it"),
)
CURVES = (POOLED, OFFLINE, MAML)


@dataclass(frozen=True)
class CompareConfig:
    """Everything one comparison run uses (written into ``compare.json``)."""

    model: MPPConfig = field(default_factory=MPPConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    rule: PartitionRule = field(default_factory=PartitionRule)
    maml_local_lr: float = 0.5
    forget_fraction: float = 0.2
    online_lrs: tuple[float, ...] = (0.01, 0.05, 0.2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "meta": asdict(self.meta),
            "online": asdict(self.online),
            "rule": self.rule.to_dict(),
            "maml_local_lr": self.maml_local_lr,
            "forget_fraction": self.forget_fraction,
            "online_lrs": list(self.online_lrs),
        }

    def maml(self, seed: int) -> MAMLConfig:
        """The MeLU baseline at this run's sizes, inner steps and outer learning rate."""
        return MAMLConfig(
            embedding_dim=self.model.embedding_dim,
            hidden=self.model.hidden,
            local_lr=self.maml_local_lr,
            local_steps=max(self.meta.inner_steps, 1),
            first_order=self.meta.first_order,
            lr=self.meta.lr,
            init_std=self.model.init_std,
            batch_size=self.meta.batch_size,
            seed=seed,
        )


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_seed(
    split: EpisodeSplit,
    seed: int,
    config: CompareConfig,
    out_dir: Path,
    first_seen: dict[int, float] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """All conditions for one seed; resumable (a finished seed's ``result.json`` is reused)."""
    path = out_dir / "result.json"
    if path.is_file():
        done: dict[str, Any] = json.loads(path.read_text())
        if done.get("config") == json.loads(json.dumps(config.to_dict())):
            log(f"seed {seed}: reusing {path}")
            return done
    split = click_split(split)
    meta = config.meta if config.meta.seed == seed else _with_seed(config.meta, seed)
    tasks, how = stream_order(split.test, first_seen, seed)
    preds: dict[str, list[np.ndarray]] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    fit_s: dict[str, float] = {}

    pooled = new_learner(split, config.model, config.rule, meta).net
    res, fit_s[POOLED] = _timed(
        lambda: train_pooled(pooled, split, meta, progress, out_dir / "ckpt" / "pooled")
    )
    curves[POOLED], preds[POOLED] = res.history, predict_pooled(pooled, tasks)
    log(f"seed {seed} {POOLED}: valid AUC {res.best_valid_auc:.4f} ({fit_s[POOLED]:.0f}s)")

    learner = new_learner(split, config.model, config.rule, meta)
    res, fit_s[OFFLINE] = _timed(
        lambda: train_offline(learner, split, progress, out_dir / "ckpt" / "offline")
    )
    curves[OFFLINE], preds[OFFLINE] = res.history, predict_adapted(learner, tasks)
    log(f"seed {seed} {OFFLINE}: valid AUC {res.best_valid_auc:.4f} ({fit_s[OFFLINE]:.0f}s)")
    save(
        out_dir / "offline_mpp", learner.net, learner.rule, meta.inner_steps,
        learner.inner_lr_values(), split.dataset.users, split.dataset.items,
        {"seed": seed, "meta": asdict(meta), "best_step": res.best_step},
    )  # fmt: skip

    online_lr, lr_scores = select_online_lr(learner, split.valid, config, seed)
    log(f"seed {seed} online lr {online_lr:g} (valid prequential AUC {lr_scores})")
    forgetting = {}
    n_first = max(1, round(config.forget_fraction * len(tasks)))
    for name, update_fixed in ((ONLINE, False), (ONLINE_FIXED, True)):
        online = online_copy(learner)
        cfg = replace(config.online, lr=online_lr, update_fixed=update_fixed)
        sres, fit_s[name] = _timed(functools.partial(stream, online, tasks, cfg, progress))
        preds[name] = sres.preds
        forgetting[name] = _forgetting(learner, online, split.valid, tasks[:n_first], sres.preds)
        log(f"seed {seed} {name}: stream AUC {mean_user_auc(sres.preds, tasks):.4f}")

    melu = MeLUMAML(config.maml(seed))
    melu.net = MeLUNet(split.dataset.users, split.dataset.items, (0.0, 1.0), melu.config)
    melu.net.reset_parameters(torch.Generator().manual_seed(seed))
    net, mcfg = melu.net, melu.config

    def train_melu() -> Any:
        return train_steps(
            net,
            lambda b: query_loss(net, b, mcfg),
            lambda: mean_user_auc(melu.predict(split.valid), split.valid),
            split.train,
            meta,
            progress,
            MAML,
            out_dir / "ckpt" / "maml",
        )

    res, fit_s[MAML] = _timed(train_melu)
    curves[MAML], preds[MAML] = res.history, melu.predict(tasks)
    log(f"seed {seed} {MAML}: valid AUC {res.best_valid_auc:.4f} ({fit_s[MAML]:.0f}s)")

    pop = ItemPopularity(smoothing="beta")
    pop.fit(split)
    preds[POPULARITY] = pop.predict(tasks)

    result = {
        "seed": seed,
        "config": config.to_dict(),
        "stream_order": how,
        "stream_users": [int(t.user) for t in tasks],
        "auc": {n: mean_user_auc(p, tasks) for n, p in preds.items()},
        "global_auc": {n: global_auc(p, tasks) for n, p in preds.items()},
        "per_user_auc": {n: _jsonable(per_user_auc(p, tasks)) for n, p in preds.items()},
        "curves": curves,
        "forgetting": forgetting,
        "fit_s": fit_s,
        "inner_lr": learner.inner_lr_values(),
        "online_lr": online_lr,
        "online_lr_valid_auc": lr_scores,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def select_online_lr(
    learner: Any, valid: Sequence[Task], config: CompareConfig, seed: int
) -> tuple[float, dict[str, float]]:
    """The online step size with the best prequential AUC on a stream of the *valid* users
    (fixed part frozen); the test stream is never used to choose it."""
    order, _ = stream_order(valid, None, seed)
    scores = {}
    for lr in config.online_lrs:
        online = online_copy(learner)
        result = stream(online, order, replace(config.online, lr=lr, update_fixed=False))
        scores[f"{lr:g}"] = mean_user_auc(result.preds, order)
    best = max(config.online_lrs, key=lambda lr: scores[f"{lr:g}"])
    return best, scores


def _with_seed(meta: MetaConfig, seed: int) -> MetaConfig:
    return MetaConfig(**{**asdict(meta), "seed": seed})


def _jsonable(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def _forgetting(
    before: Any,
    after: Any,
    valid: Sequence[Task],
    first: Sequence[Task],
    prequential: Sequence[np.ndarray],
) -> dict[str, float]:
    """AUC of the first stream users when they arrived vs re-measured after the whole stream,
    and of the valid users (never in the stream) before vs after it."""
    return {
        "first_users": float(len(first)),
        "first_auc_prequential": mean_user_auc(list(prequential[: len(first)]), first),
        "first_auc_after": mean_user_auc(predict_adapted(after, first), first),
        "valid_auc_before": mean_user_auc(predict_adapted(before, valid), valid),
        "valid_auc_after": mean_user_auc(predict_adapted(after, valid), valid),
    }


# ----------------------------------------------------------------------------- summaries
def _cell(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    std = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():.4f} ± {std:.4f}" if v.size > 1 else f"{v.mean():.4f}"


def auc_table(per_seed: Sequence[Mapping[str, Any]]) -> str:
    """Mean ± std over seeds of the per-user AUC (and of the pooled-rows AUC) per condition."""
    names = [*CONDITIONS, POPULARITY]
    header = ["method", "user AUC", "global AUC", "users"]
    rows = []
    for n in names:
        users = [sum(v is not None for v in r["per_user_auc"][n]) for r in per_seed]
        rows.append(
            [
                n,
                _cell([r["auc"][n] for r in per_seed]),
                _cell([r["global_auc"][n] for r in per_seed]),
                f"{np.mean(users):.0f}",
            ]
        )
    return _aligned(header, rows)


def _per_user(result: Mapping[str, Any], name: str, users: Sequence[int]) -> np.ndarray:
    """``(U,)`` per-user AUC of ``name`` for ``users`` in that order (NaN where undefined)."""
    by_user = dict(zip(result["stream_users"], result["per_user_auc"][name], strict=True))
    return np.array([np.nan if by_user[u] is None else by_user[u] for u in users], dtype=float)


def paired(per_seed: Sequence[Mapping[str, Any]], n_boot: int = 10_000) -> dict[str, Any]:
    """Paired bootstrap of each claim's difference A - B over users (per-user AUC).

    When every seed streamed the same users (Last.fm's official tasks, in a seeded order each),
    users are aligned by id and resampled jointly across seeds; otherwise within each seed.
    """
    first = set(per_seed[0]["stream_users"])
    shared = all(set(r["stream_users"]) == first for r in per_seed)
    out = {}
    for a, b, claim in PAIRS:
        pairs = []
        for r in per_seed:
            users = sorted(first) if shared else r["stream_users"]
            pairs.append((_per_user(r, a, users), _per_user(r, b, users)))
        ok = [np.isfinite(va) & np.isfinite(vb) for va, vb in pairs]
        if shared:  # the same users in every seed's array
            ok = [np.logical_and.reduce(ok)] * len(ok)
        diffs = [(va - vb)[m] for (va, vb), m in zip(pairs, ok, strict=True)]
        out[f"{a} - {b}"] = {"claim": claim, **paired_bootstrap(diffs, shared, n_boot=n_boot)}
    return {"shared_users": shared, "pairs": out}


def paired_text(result: Mapping[str, Any]) -> str:
    header = ["A - B (per-user AUC)", "delta", "95% CI", "P(<0)"]
    rows = []
    for key, r in result["pairs"].items():
        rows.append(
            [key, f"{r['delta']:+.4f}", f"[{r['lo']:+.4f}, {r['hi']:+.4f}]",
             f"{r['frac_below_zero']:.3f}"]
        )  # fmt: skip
    return _aligned(header, rows)


def forgetting_table(per_seed: Sequence[Mapping[str, Any]]) -> str:
    header = ["online variant", "first users: at arrival", "after stream", "change"]
    header += ["valid: before", "after", "change"]
    rows = []
    for n in (ONLINE, ONLINE_FIXED):
        f = [r["forgetting"][n] for r in per_seed]
        first = [x["first_auc_after"] - x["first_auc_prequential"] for x in f]
        valid = [x["valid_auc_after"] - x["valid_auc_before"] for x in f]
        rows.append(
            [
                n,
                _cell([x["first_auc_prequential"] for x in f]),
                _cell([x["first_auc_after"] for x in f]),
                _cell(first),
                _cell([x["valid_auc_before"] for x in f]),
                _cell([x["valid_auc_after"] for x in f]),
                _cell(valid),
            ]
        )
    return _aligned(header, rows)


def convergence_table(per_seed: Sequence[Mapping[str, Any]]) -> str:
    """Validation AUC (mean over seeds) at each evaluation step, for pooled, MPP and MAML."""
    steps = [h["step"] for h in per_seed[0]["curves"][CURVES[0]]]
    header, rows = ["step", *CURVES], []
    for i, s in enumerate(steps):
        rows.append(
            [f"{s:.0f}", *(f"{np.mean([r['curves'][n][i]['valid_auc'] for r in per_seed]):.4f}"
                           for n in CURVES)]
        )  # fmt: skip
    return _aligned(header, rows)


def plot_convergence(per_seed: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Validation AUC against meta-training steps (mean ± std band over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for n in CURVES:
        steps = np.array([h["step"] for h in per_seed[0]["curves"][n]])
        values = np.array([[h["valid_auc"] for h in r["curves"][n]] for r in per_seed])
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=n)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("outer (meta-)training steps")
    ax.set_ylabel("validation user AUC")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
