"""Benchmark: MPP per-user adaptation cost and meta-training throughput (same run, ratios).

Meta Parameter Partition (Zhao et al., arXiv 1912.04108) adapts only a small adaptive part per
user. Measured here, one thread (``torch.set_num_threads(1)``), one user per request:

1. Adaptation latency p50/p99 over real new users' support sets (ML-1M MeLU-protocol test
   users, their own support sizes; Last.fm-sized one-hot tables when the data is absent):
   - MPP through the serving API ``mpp_inference`` (``adapt``: ``inner_steps`` gradient steps on
     the adaptive part; the ``top`` rule uses its closed-form gradient), for each shipped rule;
   - full-parameter MAML: the MeLU-style baseline of ``coldstart/maml.py`` (embedding lookup and
     ``local_steps`` SGD steps on every dense parameter, ``torch.func`` inner loop);
   - ColdNAS: ``ColdStartRecommender.adapt`` (one hypernetwork forward pass, no gradient).
2. Bytes stored per user: ``UserState.to_bytes("float32")`` for MPP and ColdNAS; for full MAML the
   adapted dense weights (float32) plus the same 24-byte header. Also the per-user state as a
   share of the model's parameters (goal: < 2 %).
3. Offline meta-training throughput (users/s, forward + backward of the outer loss, second
   order) of the ``vmap`` path versus a Python loop over the same users and model (goal: >= 5x).

Weights are untrained: latency does not depend on their values. Sizes are those of the
comparison run in docs/mpp.md (embedding 16, hidden 64/32, 3 inner steps, item id field).

Usage:
    python benchmarks/bench_mpp.py [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import add_common_args, percentiles_ms, print_table, ratio, time_call, write_result
from warmstart.coldstart.inference import ColdStartRecommender, UserState
from warmstart.coldstart.maml import MAMLConfig, MeLUNet, adapt
from warmstart.coldstart.model import ColdNAS, ColdNASConfig
from warmstart.coldstart.mpp import MPPConfig, PartitionRule
from warmstart.coldstart.mpp_inference import MPPRecommender, load, save
from warmstart.coldstart.mpp_train import MetaConfig, meta_loss, meta_loss_loop, new_learner
from warmstart.coldstart.structure import Structure
from warmstart.data.types import EpisodeSplit, Task, collate_tasks

INNER_STEPS = 3
MODEL = MPPConfig(embedding_dim=16, hidden=(64, 32))
RULES = ("top", "film", "context")
HEADER_BYTES = 24  # UserState.to_bytes header


def episodes(data_dir: Path) -> tuple[EpisodeSplit, str]:
    """ML-1M cold-start episodes with an item id field (synthetic of the same shape if absent)."""
    from warmstart.coldstart.compare import with_item_ids
    from warmstart.coldstart.mpp_train import click_split

    try:
        from warmstart.data import coldstart_split

        split = coldstart_split("movielens-1m", data_dir, 0, "melu")
        return click_split(with_item_ids(split)), "movielens-1m (MeLU protocol, item ids)"
    except FileNotFoundError:
        from warmstart.data.synthetic import synthetic_split

        split = synthetic_split(n_users=2000, n_items=3706, interactions_per_user=(13, 100))
        return click_split(split), "synthetic (ML-1M sized; data not found)"


def mpp_recommender(split: EpisodeSplit, rule: str, tmp: Path) -> MPPRecommender:
    """An untrained MPP model through ``save`` + ``load`` (the serving path)."""
    learner = new_learner(split, MODEL, PartitionRule(rule), MetaConfig(inner_steps=INNER_STEPS))
    ds = split.dataset
    save(tmp / rule, learner.net, learner.rule, INNER_STEPS, learner.inner_lr_values(),
         ds.users, ds.items, {})  # fmt: skip
    return load(tmp / rule)


def latency(fn: Any, tasks: list[Task]) -> dict[str, float]:
    """p50/p90/p99 of ``fn(task)`` over tasks (one call each, after a warm-up pass over the first
    20), plus ``p99_best5_ms``: the p99 over tasks of each task's fastest of 5 calls, i.e. the
    tail that comes from the work (support sizes differ) rather than from the scheduler of a
    busy host preempting single calls."""
    for t in tasks[:20]:
        fn(t)
    once = np.array([time_call(lambda t=t: fn(t), repeats=1, warmup=0)[0] for t in tasks])
    best = np.array([time_call(lambda t=t: fn(t), repeats=5, warmup=0).min() for t in tasks])
    return {**percentiles_ms(once), "p99_best5_ms": float(np.percentile(best, 99) * 1e3)}


def maml_adapter(split: EpisodeSplit) -> tuple[Any, int, int]:
    """Full-parameter MAML (MeLU) adaptation of one user, its dense size and total size."""
    cfg = MAMLConfig(
        embedding_dim=MODEL.embedding_dim, hidden=MODEL.hidden, local_lr=0.5,
        local_steps=INNER_STEPS,
    )  # fmt: skip
    net = MeLUNet(split.dataset.users, split.dataset.items, (0.0, 1.0), cfg)
    net.reset_parameters(torch.Generator().manual_seed(0))
    net.eval()

    def run(t: Task) -> Any:
        users = torch.tensor([t.user])
        items = torch.as_tensor(t.support_items)[None]
        labels = torch.as_tensor(t.support_labels)[None]
        with torch.no_grad():
            x = net.embed(users, items)
            return adapt(net, x, labels, torch.ones_like(labels, dtype=torch.bool),
                         steps=cfg.local_steps, lr=cfg.local_lr, first_order=True)  # fmt: skip

    dense = sum(p.numel() for p in net.dense.parameters())
    return run, dense, sum(p.numel() for p in net.parameters())


def coldnas_recommender(split: EpisodeSplit) -> ColdStartRecommender:
    """An untrained ColdNAS at the paper sizes with the FiLM structure (scale + shift)."""
    ds = split.dataset
    model = ColdNAS(ColdNASConfig(), ds.users, ds.items, Structure.film(4))
    return ColdStartRecommender(model)


def throughput(split: EpisodeSplit, rule: str, users: int, repeats: int) -> dict[str, float]:
    """Users/s of the outer loss + backward: vmap over the batch vs a per-user Python loop."""
    learner = new_learner(split, MODEL, PartitionRule(rule), MetaConfig(inner_steps=INNER_STEPS))
    tasks = split.train[:users]
    batch = collate_tasks(tasks)

    def vmapped() -> None:
        learner.zero_grad(set_to_none=True)
        meta_loss(learner, batch).backward()

    def looped() -> None:
        learner.zero_grad(set_to_none=True)
        meta_loss_loop(learner, tasks).backward()

    t_vmap = float(np.median(time_call(vmapped, repeats)))
    t_loop = float(np.median(time_call(looped, max(2, repeats // 3))))
    return {
        "rule": rule,
        "users_per_step": users,
        "vmap_users_per_s": users / t_vmap,
        "loop_users_per_s": users / t_loop,
        "speedup": t_loop / t_vmap,
    }


def main() -> None:
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = args.parse_args()
    torch.set_num_threads(1)
    split, source = episodes(args.data_dir)
    tasks = split.test[: 150 if args.quick else 600]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rule in RULES:
            rec = mpp_recommender(split, rule, Path(tmp))
            state = rec.adapt(tasks[0].support_items, tasks[0].support_labels, tasks[0].user)
            times = latency(
                lambda t, r=rec: r.adapt(t.support_items, t.support_labels, t.user), tasks
            )
            rows.append({
                "method": f"MPP ({rule})", **times,
                "state_floats": rec.state_size, "bytes_per_user": len(state.to_bytes("float32")),
                "model_params": rec.n_params, "state_share_pct": 100 * rec.state_size / rec.n_params,
            })  # fmt: skip
    run, dense, total = maml_adapter(split)
    rows.append({
        "method": "full MAML (MeLU)", **latency(run, tasks),
        "state_floats": dense, "bytes_per_user": HEADER_BYTES + 4 * dense, "model_params": total,
        "state_share_pct": 100 * dense / total,
    })  # fmt: skip
    cold = coldnas_recommender(split)
    cold_state: UserState = cold.adapt(
        tasks[0].support_items, tasks[0].support_labels, tasks[0].user
    )
    n_cold = sum(p.numel() for p in cold.model.parameters())
    floats = cold_state.params.size + cold_state.user_vec.size
    rows.append({
        "method": "ColdNAS (FiLM structure)",
        **latency(lambda t: cold.adapt(t.support_items, t.support_labels, t.user), tasks),
        "state_floats": floats, "bytes_per_user": len(cold_state.to_bytes("float32")),
        "model_params": n_cold, "state_share_pct": 100 * floats / n_cold,
    })  # fmt: skip
    maml_row = rows[len(RULES)]
    for r in rows:
        r["p99_vs_maml"] = ratio(r["p99_ms"], maml_row["p99_ms"])
        r["bytes_vs_maml"] = ratio(r["bytes_per_user"], maml_row["bytes_per_user"])
    print(f"Adaptation, one user, one thread; {len(tasks)} users of {source}")
    print_table(rows, ["method", "p50_ms", "p90_ms", "p99_ms", "p99_best5_ms", "p99_vs_maml", "bytes_per_user",
                       "bytes_vs_maml", "state_floats", "model_params", "state_share_pct"])  # fmt: skip
    train = [throughput(split, rule, 32, 6 if args.quick else 15) for rule in RULES]
    print("Offline meta-training (outer loss + backward, second order), users/s")
    print_table(
        train, ["rule", "users_per_step", "vmap_users_per_s", "loop_users_per_s", "speedup"]
    )

    def plot(ax: Any) -> None:
        names = [r["method"] for r in rows]
        ax.barh(names, [r["p99_ms"] for r in rows], label="p99")
        ax.barh(names, [r["p50_ms"] for r in rows], label="p50")
        ax.axvline(2.0, color="k", linestyle="--", linewidth=1, label="goal p99 < 2 ms")
        ax.set_xscale("log")
        ax.set_xlabel("adaptation latency per user, ms (one thread)")
        ax.legend()

    write_result(
        "mpp",
        {"source": source, "users": len(tasks), "inner_steps": INNER_STEPS,
         "model": MODEL.to_dict(), "adaptation": rows, "meta_training": train},
        plot,
    )  # fmt: skip


if __name__ == "__main__":
    main()
