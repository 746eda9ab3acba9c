"""Benchmark: latency of serving one new user, ColdNAS versus MeLU-style MAML.

A request = adapt to a new user's 20 support interactions, then score 1,000 candidate items.

- ColdNAS ("ours"): the serving API ``warmstart.coldstart.inference`` — ``load_recommender(dir)``,
  ``.adapt(items, labels)`` (one hypernetwork forward pass), ``.score(state, candidates)``;
  the per-user state is ``UserState.to_bytes()``.
- MeLU-MAML (baseline): ``warmstart.coldstart.maml`` — ``local_steps`` SGD steps on the dense
  layers over the support set (``torch.func`` inner loop), then the adapted MLP scores the
  candidates; its per-user state is the adapted dense weights (float32).

Latency does not depend on the weight values, so both models are UNTRAINED, built with the
real feature tables and the paper sizes (ColdNAS: embedding 32, hidden 128/64/32, adaptation
256; MAML: embedding 32, MLP 64/64). ColdNAS structure per dataset: Last.fm the released reference
structure ``add | add | max+add | -``; ML-1M the one our search found there (seed 0, see
docs/coldstart.md) ``mul | mul+add | mul+add | max+mul+add``, which scales the input embedding
and so takes the slower per-user-weight branch of the fc1 shortcut in ``score``.
The ColdNAS model goes through ``export`` + ``load_recommender`` so the timed path is the
serving path. One thread (``torch.set_num_threads(1)``), ``torch.no_grad`` where applicable.

Micro-batches (ColdNAS only): ``adapt_many`` / ``score_many`` on B = 1, 8, 32, 64 different new
users at once (each its own 20 support interactions and its own 1,000, or 100, candidates), one
call each (padded passes). Printed: p50/p99 per call, the cost per user (p50 / B) and its ratio
to B = 1 (the speed-up a micro-batcher buys), all measured in the same run.

Usage:
    python benchmarks/bench_coldnas_inference.py [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import add_common_args, percentiles_ms, print_table, ratio, time_call, write_result
from warmstart.coldstart.inference import ColdStartRecommender, load_recommender
from warmstart.coldstart.maml import MAMLConfig, MeLUNet, adapt, predict_adapted
from warmstart.coldstart.model import ColdNAS
from warmstart.coldstart.structure import Structure
from warmstart.coldstart.training import PRESETS, export
from warmstart.data import load_dataset
from warmstart.data.types import FeatureTable, RecDataset

SUPPORT = 20
CANDIDATES = 1000
MAML_STEPS = 5  # MeLU's upper setting: the most expensive baseline request
MAML_MAX_REPEATS = 500  # the baseline is ~10x slower; 500 samples still resolve its p99
BATCH_SIZES = (1, 8, 32, 64)
# the request's 1,000 candidates, and the 100 a serving re-ranker scores (MF top-N first)
BATCH_CANDIDATES = (CANDIDATES, 100)
RELEASED_LASTFM = Structure.parse("add|add|max+add|-")
STRUCTURES = {
    "lastfm-coldnas": RELEASED_LASTFM,
    "movielens-1m": Structure.parse("mul|mul+add|mul+add|max+mul+add"),  # found on ML-1M, seed 0
}
# Sizes of the official Last.fm benchmark, used when the data directory is absent.
LASTFM_USERS, LASTFM_ITEMS = 1872, 3846


def tables(
    name: str, data_dir: Path
) -> tuple[FeatureTable, FeatureTable, tuple[float, float], str]:
    """Feature tables of ``name``; Last.fm-sized one-hot tables if the data is missing."""
    try:
        ds: RecDataset = load_dataset(name, data_dir)
        return ds.users, ds.items, ds.rating_range, "real feature tables"
    except FileNotFoundError:
        if name != "lastfm-coldnas":
            raise
        users = FeatureTable.one_hot_ids(np.arange(LASTFM_USERS))
        items = FeatureTable.one_hot_ids(np.arange(LASTFM_ITEMS))
        return users, items, (0.0, 1.0), "one-hot tables of Last.fm size (data dir absent)"


def coldnas_recommender(
    users: FeatureTable,
    items: FeatureTable,
    rating_range: tuple[float, float],
    workdir: Path,
    structure: Structure = RELEASED_LASTFM,
) -> ColdStartRecommender:
    """Untrained paper-size ColdNAS, exported and loaded back through the serving API."""
    config = PRESETS["paper"].model
    config = type(config).from_dict({**config.to_dict(), "rating_range": rating_range})
    model = ColdNAS(config, users, items, structure, generator=torch.Generator().manual_seed(0))
    export(workdir, model, users, items, {"note": "untrained, latency benchmark"})
    return load_recommender(workdir)


def request_inputs(
    n_items: int, rating_range: tuple[float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    support = rng.choice(n_items, size=SUPPORT, replace=False)
    low, high = rating_range
    labels = rng.integers(int(low), int(high) + 1, size=SUPPORT).astype(np.float32)
    candidates = rng.choice(n_items, size=min(CANDIDATES, n_items), replace=False)
    return support, labels, candidates


def coldnas_rows(
    rec: ColdStartRecommender, inputs: tuple[np.ndarray, ...], repeats: int
) -> dict[str, Any]:
    support, labels, candidates = inputs
    state = rec.adapt(support, labels, user=0)
    adapt_t = time_call(lambda: rec.adapt(support, labels, user=0), repeats, warmup=20)
    score_t = time_call(lambda: rec.score(state, candidates), repeats, warmup=20)
    both_t = time_call(
        lambda: rec.score(rec.adapt(support, labels, user=0), candidates), repeats, warmup=20
    )
    _, cpu = cpu_call(lambda: rec.score(rec.adapt(support, labels, user=0), candidates), repeats)
    return {
        "adapt": percentiles_ms(adapt_t),
        "score": percentiles_ms(score_t),
        "request": percentiles_ms(both_t),
        "request_cpu": percentiles_ms(cpu),
        "state_bytes": len(state.to_bytes()),
        "state_bytes_float32": len(state.to_bytes("float32")),
    }


def cpu_call(fn: Any, repeats: int, warmup: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(wall seconds, this thread's CPU seconds) of ``repeats`` calls after ``warmup``.

    CPU time is what a call costs the machine; on a shared host wall time also holds the
    waits for a core, which grow with the call's length (a 20 ms call is preempted more
    often than a 0.5 ms one), so per-user wall figures of long calls overstate their cost."""
    for _ in range(warmup):
        fn()
    wall, cpu = np.empty(repeats), np.empty(repeats)
    for i in range(repeats):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpu[i], wall[i] = time.thread_time() - c, time.perf_counter() - w
    return wall, cpu


def time_batch(
    rec: ColdStartRecommender, supports: list[Any], candidates: list[np.ndarray], n: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(wall, CPU) seconds per call of ``adapt_many``, ``score_many`` and both."""
    states = rec.adapt_many(supports)
    return {
        "adapt_many": cpu_call(lambda: rec.adapt_many(supports), n),
        "score_many": cpu_call(lambda: rec.score_many(states, candidates), n),
        "request": cpu_call(lambda: rec.score_many(rec.adapt_many(supports), candidates), n),
    }


def batch_rows(
    rec: ColdStartRecommender, rating_range: tuple[float, float], repeats: int
) -> list[dict[str, Any]]:
    """``adapt_many`` / ``score_many`` / both on micro-batches of different users."""
    rows: list[dict[str, Any]] = []
    for n_cand, b in itertools.product(BATCH_CANDIDATES, BATCH_SIZES):
        inputs = [request_inputs(rec.n_items, rating_range, seed=1 + u) for u in range(b)]
        n = max(50, repeats // b)  # same total users timed per batch size, at least 50 calls
        cands = [c[:n_cand] for _, _, c in inputs]
        timed = time_batch(rec, [(s, y) for s, y, _ in inputs], cands, n)
        for step, (wall, cpu) in timed.items():
            w, c = percentiles_ms(wall), percentiles_ms(cpu)
            rows.append(
                {
                    "candidates": n_cand,
                    "batch": b,
                    "step": step,
                    "calls": n,
                    "wall p50 ms / call": w["p50_ms"],
                    "wall p99 ms / call": w["p99_ms"],
                    "wall p50 ms / user": w["p50_ms"] / b,
                    "CPU p50 ms / user": c["p50_ms"] / b,
                }
            )
    for row in rows:  # per-user cost at B = 1 over per-user cost at this B (same step)
        one = next(
            r
            for r in rows
            if (r["batch"], r["step"], r["candidates"]) == (1, row["step"], row["candidates"])
        )
        row["CPU per-user speed-up vs B=1"] = ratio(
            one["CPU p50 ms / user"], row["CPU p50 ms / user"]
        )
        row["wall per-user speed-up vs B=1"] = ratio(
            one["wall p50 ms / user"], row["wall p50 ms / user"]
        )
    return rows


def maml_rows(net: MeLUNet, inputs: tuple[np.ndarray, ...], repeats: int) -> dict[str, Any]:
    support, labels, candidates = inputs
    user = torch.zeros(1, dtype=torch.int64)
    s_items = torch.as_tensor(support)[None]  # (1, S)
    s_labels = torch.as_tensor(labels)[None]  # (1, S)
    mask = torch.ones_like(s_items, dtype=torch.bool)
    c_items = torch.as_tensor(candidates)[None]  # (1, C)

    def do_adapt() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            x = net.embed(user, s_items)
        return adapt(net, x, s_labels, mask, steps=MAML_STEPS, lr=5e-2, first_order=True)

    def do_score(params: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return predict_adapted(net, params, net.embed(user, c_items))[0].numpy()

    params = do_adapt()
    return {
        "adapt": percentiles_ms(time_call(do_adapt, repeats, warmup=20)),
        "score": percentiles_ms(time_call(lambda: do_score(params), repeats, warmup=20)),
        "request": percentiles_ms(time_call(lambda: do_score(do_adapt()), repeats, warmup=20)),
        "state_bytes_float32": sum(v.numel() * 4 for v in params.values()),
    }


def table_rows(name: str, ours: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for part in ("adapt", "score", "request"):
        rows.append(
            {
                "dataset": name,
                "step": part,
                "MAML p50 ms": base[part]["p50_ms"],
                "MAML p99 ms": base[part]["p99_ms"],
                "ColdNAS p50 ms": ours[part]["p50_ms"],
                "ColdNAS p99 ms": ours[part]["p99_ms"],
                "p99 speedup": ratio(base[part]["p99_ms"], ours[part]["p99_ms"]),
            }
        )
    return rows


def plot(results: dict[str, Any]) -> Any:
    def draw(ax: Any) -> None:
        names = list(results)
        x = np.arange(len(names))
        for k, (label, key) in enumerate((("MeLU-MAML", "maml"), ("ColdNAS", "coldnas"))):
            p50 = [results[n][key]["request"]["p50_ms"] for n in names]
            p99 = [results[n][key]["request"]["p99_ms"] for n in names]
            ax.bar(x + (k - 0.5) * 0.4, p99, 0.4, alpha=0.4, label=f"{label} p99")
            ax.bar(x + (k - 0.5) * 0.4, p50, 0.4, label=f"{label} p50")
        ax.axhline(5.0, color="k", linestyle="--", linewidth=1, label="goal p99 5 ms")
        ax.set_xticks(x, names)
        ax.set_ylabel("ms per request (adapt 20 + score 1,000)")
        ax.set_title("New-user request latency, 1 thread (untrained weights)")
        ax.legend(fontsize=8)

    return draw


def plot_batched(results: dict[str, Any]) -> Any:
    def draw(ax: Any) -> None:
        for name, res in results.items():
            for n_cand in BATCH_CANDIDATES:
                for step, style in (("adapt_many", ":"), ("request", "-")):
                    if step == "adapt_many" and n_cand != CANDIDATES:
                        continue  # adapt does not depend on the candidates
                    pts = [
                        (r["batch"], r["CPU p50 ms / user"])
                        for r in res["coldnas"]["batched"]
                        if r["step"] == step and r["candidates"] == n_cand
                    ]
                    what = "adapt" if step == "adapt_many" else f"adapt + score {n_cand}"
                    ax.plot(*zip(*pts, strict=True), style, marker="o", label=f"{name}: {what}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(BATCH_SIZES, [str(b) for b in BATCH_SIZES])
        ax.set_xlabel("users per call (adapt_many / score_many)")
        ax.set_ylabel("p50 CPU ms per user")
        ax.set_title("ColdNAS micro-batches, 1 thread (untrained weights)")
        ax.legend(fontsize=7)

    return draw


def main() -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--datasets", nargs="+", default=["lastfm-coldnas", "movielens-1m"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 300 if args.quick else 2000
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    sizes: list[dict[str, Any]] = []
    for name in args.datasets:
        users, items, rating_range, source = tables(name, Path(args.data_dir))
        inputs = request_inputs(len(items), rating_range, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            structure = STRUCTURES.get(name, RELEASED_LASTFM)
            rec = coldnas_recommender(users, items, rating_range, Path(tmp), structure)
            ours = coldnas_rows(rec, inputs, repeats)
            ours["structure"] = str(structure)
            ours["batched"] = batch_rows(rec, rating_range, repeats)
        config = MAMLConfig(local_steps=MAML_STEPS)
        net = MeLUNet(users, items, rating_range, config)
        net.reset_parameters(torch.Generator().manual_seed(0))
        base_repeats = min(repeats, MAML_MAX_REPEATS)
        base = maml_rows(net.eval(), inputs, base_repeats)
        results[name] = {
            "coldnas": ours,
            "maml": base,
            "tables": source,
            "repeats": repeats,
            "maml_repeats": base_repeats,
        }
        rows += table_rows(name, ours, base)
        sizes.append(
            {
                "dataset": name,
                "ColdNAS structure": ours["structure"],
                "ColdNAS UserState bytes (fp16)": ours["state_bytes"],
                "ColdNAS bytes (fp32)": ours["state_bytes_float32"],
                "MAML adapted weights bytes (fp32)": base["state_bytes_float32"],
            }
        )
    print(
        f"== one new user: adapt on {SUPPORT} + score {CANDIDATES}, 1 thread, {repeats} repeats =="
    )
    print(
        "(untrained weights: latency does not depend on weight values; goal ColdNAS request p99 < 5 ms)"
    )
    print_table(rows, list(rows[0]))
    for name in args.datasets:
        cpu = results[name]["coldnas"]["request_cpu"]
        print(
            f"{name}: ColdNAS one-user request, this thread's CPU time: p50 "
            f"{cpu['p50_ms']:.3f} ms, p99 {cpu['p99_ms']:.3f} ms (wall above)"
        )
    print_table(sizes, list(sizes[0]))
    for name in args.datasets:
        batched = results[name]["coldnas"]["batched"]
        print(
            f"== {name}: ColdNAS micro-batches, B users per call (adapt {SUPPORT} + score "
            f"{CANDIDATES} each), 1 thread =="
        )
        print_table(batched, list(batched[0]))
    path = write_result(
        "coldnas_inference", {"quick": args.quick, "results": results}, plot(results)
    )
    batched = {n: {"coldnas": {"batched": r["coldnas"]["batched"]}} for n, r in results.items()}
    extra = write_result(
        "coldnas_inference_batched",
        {"quick": args.quick, "results": batched},
        plot_batched(results),
    )
    print(f"wrote {path} and {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
