"""``warmstart serve``: run the HTTP server, check a running one, export the MF candidate model.

warmstart serve --config FILE            # foreground; SIGINT/SIGTERM drains, then exits
warmstart serve --ray --replicas N       # Ray Serve replicas behind its proxy (cli/serve_ray.py)
warmstart serve check --config FILE      # start it, call every endpoint, exit 0/1
warmstart serve export-mf --model DIR --out DIR   # ALS factors for the candidate stage
warmstart serve export-knn --model DIR --out DIR  # item-kNN, the default recommender when present
warmstart serve plan --logs DIR --p99-ms 100 --cores N --out FILE   # config from traffic logs
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warmstart.serving.config import ServeConfig

from warmstart.cli.options import add_cache_dir, add_data_dir, resolve_cache_dir, resolve_data_dir
from warmstart.cli.serve_ray import add_ray_options


def configure_group(group: argparse.ArgumentParser, commands: argparse._SubParsersAction) -> None:
    """``warmstart serve --config FILE`` runs the server (no sub-command needed)."""
    _server_options(group)
    add_ray_options(group)
    commands.required = False
    group.set_defaults(func=run_serve)


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="server config JSON (default: built-in defaults)"
    )
    parser.add_argument("--host", default=None, help="override the config's host")
    parser.add_argument("--port", type=int, default=None, help="override the config's port")


def _export_parser(
    commands: argparse._SubParsersAction, name: str, help: str
) -> argparse.ArgumentParser:
    """A sub-command that fits on a ColdNAS model's training split: --model, --out, data."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
    parser.add_argument("--model", type=Path, required=True, help="ColdNAS model directory")
    parser.add_argument("--out", type=Path, required=True)
    add_data_dir(parser)
    add_cache_dir(parser)
    return parser


def register(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check", help="start the server, send real requests to every endpoint, exit 0/1"
    )
    _server_options(check)
    check.set_defaults(func=run_check)
    export = _export_parser(
        commands,
        "export-mf",
        "fit ALS on a ColdNAS model's training split and export the MF candidate artifact",
    )
    export.add_argument("--dim", type=int, default=None, help="fix the latent dim (else grid)")
    export.add_argument("--l2", type=float, default=None, help="fix the ALS L2 (else grid)")
    export.add_argument("--sweeps", type=int, default=20)
    export.add_argument("--threads", type=int, default=1)
    export.set_defaults(func=run_export_mf)
    knn = _export_parser(
        commands,
        "export-knn",
        "fit item-kNN (the top-k table's best) on a ColdNAS model's training split and export it",
    )
    knn.set_defaults(func=run_export_knn)
    plan = commands.add_parser(
        "plan",
        help="fit service times from traffic logs, simulate, search the knobs, write a config",
    )
    plan.add_argument("--logs", type=Path, required=True, help="traffic log directory (or file)")
    plan.add_argument("--p99-ms", type=float, default=100.0, help="p99 latency target")
    plan.add_argument("--cores", type=float, required=True, help="cores the server may use")
    plan.add_argument("--out", type=Path, default=Path("runs/serve/planned.json"))
    plan.add_argument(
        "--max-degraded",
        type=float,
        default=0.05,
        help="largest share of degraded requests at the planned rate (1 = no limit)",
    )
    plan.add_argument("--max-errors", type=float, default=0.001, help="largest error share")
    plan.add_argument("--requests", type=int, default=3000, help="simulated requests per rate")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument(
        "--cores-from-logs",
        action="store_true",
        help="plan for the CPU share the server got while overloaded, when below --cores",
    )
    plan.add_argument(
        "--no-background",
        action="store_true",
        help="ignore the other processes' load seen in the logs (plan for an idle machine)",
    )
    plan.add_argument(
        "--keep-precision",
        action="store_true",
        help="never switch recommend.precision, even to one the logs measured",
    )
    plan.set_defaults(func=run_plan)


def _config(args: argparse.Namespace) -> ServeConfig:
    from dataclasses import replace

    from warmstart.serving.config import ServeConfig

    config = ServeConfig.from_file(args.config) if args.config else ServeConfig()
    if args.host is not None:
        config = replace(config, host=args.host)
    if args.port is not None:
        config = replace(config, port=args.port)
    return config


def run_serve(args: argparse.Namespace) -> int:
    from warmstart.serving.runner import serve_forever

    config = _config(args)
    token = os.environ.get(config.admin_token_env) or None
    if args.ray:
        from warmstart.cli.serve_ray import run_ray

        return run_ray(args, lambda: _config(args), token)
    print(f"serving on http://{config.host}:{config.port} (admin {'on' if token else 'off'})")
    serve_forever(config, token)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from warmstart.serving.app import Server, create_app
    from warmstart.serving.runner import check, running

    config = replace(_config(args), port=0)  # a free port: never collides with a live server
    try:
        with running(create_app(Server(config)), config.host) as url:
            results = check(url)
    except RuntimeError as err:  # start-up failed (uvicorn logged why above)
        results = [("server start-up", False, str(err))]
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'}  {name}  ({detail})")
    failed = sum(not ok for _, ok, _ in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _model_split(args: argparse.Namespace) -> tuple[Any, Any]:
    """The ColdNAS model at ``--model`` and the split it was trained on (its config.json)."""
    from warmstart.coldstart.inference import load_recommender
    from warmstart.data import coldstart_split

    rec = load_recommender(args.model)
    meta = rec.config
    if meta.get("dataset") in (None, "synthetic"):
        raise ValueError(f"{args.model}: config.json names no real dataset to fit MF on")
    if meta["dataset"] == "custom":  # trained on one's own tables (coldstart train --interactions)
        from warmstart.cli.coldstart_nas import model_split

        split = model_split(args.model, meta, resolve_data_dir(args.data_dir), None)
    else:
        split = coldstart_split(
            meta["dataset"],
            resolve_data_dir(args.data_dir),
            int(meta.get("seed", 0)),
            meta.get("protocol", "melu"),
            cache_dir=resolve_cache_dir(args.cache_dir, args.no_cache),
        )
    if split.dataset.n_items != rec.n_items:
        raise ValueError(
            f"{args.model}: {rec.n_items} items, the split has {split.dataset.n_items}"
        )
    return rec, split


def run_export_mf(args: argparse.Namespace) -> int:
    import torch

    from warmstart.coldstart.baselines import MatrixFactorization, MFConfig
    from warmstart.coldstart.mf_inference import export_mf
    from warmstart.provenance import git_sha

    torch.set_num_threads(args.threads)
    rec, split = _model_split(args)
    meta = rec.config
    grid = MFConfig(seed=int(meta.get("seed", 0)), sweeps=args.sweeps)
    if args.dim is not None:
        grid = MFConfig(**{**grid.__dict__, "dims": (args.dim,)})
    if args.l2 is not None:
        grid = MFConfig(**{**grid.__dict__, "l2s": (args.l2,)})
    mf = MatrixFactorization(grid)
    mf.fit(split)
    assert mf.model_ is not None
    selected = mf.selected_
    export_mf(
        args.out,
        mf.model_,
        selected["ridge"],
        rec.item_ids,
        split.dataset.rating_range,
        {
            "dataset": meta["dataset"],
            "seed": meta.get("seed"),
            "selected": selected,
            "git_sha": git_sha(),
            "coldnas_model": str(args.model),
        },
    )
    print(json.dumps({"out": str(args.out), **selected}))
    return 0


def run_export_knn(args: argparse.Namespace) -> int:
    """Fit the top-k table's item-kNN (``TOPK_KNN``) on the model's training split, export it."""
    from warmstart.coldstart.knn_inference import TOPK_KNN, export_knn, fit_knn
    from warmstart.coldstart.topk import like_threshold
    from warmstart.provenance import git_sha

    rec, split = _model_split(args)
    knn = fit_knn(split, TOPK_KNN, like_threshold(split.dataset.rating_range))
    if knn.item_ids != rec.item_ids:
        raise ValueError(f"{args.model}: the split's item ids differ from the model's")
    meta = {"dataset": rec.config["dataset"], "seed": rec.config.get("seed"), "git_sha": git_sha()}
    export_knn(args.out, knn, {**meta, "coldnas_model": str(args.model)})
    print(json.dumps({"out": str(args.out), "items": knn.n_items, "nnz": int(knn.matrix.nnz)}))
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from warmstart.serving.planner.plan import make_plan, write_plan
    from warmstart.serving.planner.search import Target

    target = Target(
        max_errors=args.max_errors, max_degraded=args.max_degraded, n=args.requests, seed=args.seed
    )
    plan = make_plan(
        args.logs,
        args.p99_ms,
        args.cores,
        target,
        print,
        cores_from_logs=args.cores_from_logs,
        background=not args.no_background,
        keep_precision=args.keep_precision,
    )
    report = write_plan(plan, args.out)
    s = plan.summary()
    for name in ("logged", "planned"):
        r = s[name]
        print(
            f"{name:8s} predicted capacity {r['capacity']:7.1f} requests/s at p99 "
            f"{r['p99_ms']:6.1f} ms (degraded {r['degraded']:.1%})"
        )
    for knob, (old, new) in s["changes"].items():
        print(f"  {knob}: {old} -> {new}")
    if "precision" in s["changes"]:
        print("  (recommend scores change in the 2nd-3rd digit with the precision; --keep-precision "
              "plans without it)")  # fmt: skip
    print(f"planned for {plan.logged.cores:.2f} cores, {plan.logged.background:.2f} other runnable "
          f"threads (CPU share while refusing, in the logs: {plan.model.cpu_share:.2f})")  # fmt: skip
    print(f"config: {args.out}\nreport: {report}")
    return 0
