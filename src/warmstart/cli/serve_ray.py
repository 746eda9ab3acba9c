"""``warmstart serve --ray --replicas N``: the server on Ray Serve replicas behind its proxy.

warmstart serve --ray --replicas 2 --config FILE     # local Ray cluster; Ctrl-C stops it
kill -HUP <pid>                                      # rolling model reload from FILE's models
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warmstart.serving.config import ServeConfig


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group("Ray Serve scale-out (docs/serving.md, 'Scale-out')")
    ray.add_argument(
        "--ray", action="store_true", help="run the server as Ray Serve replicas behind its proxy"
    )
    ray.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas (with --ray)")
    ray.add_argument(
        "--replica-cpus", type=float, default=0.5, help="Ray CPUs reserved per replica"
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (e.g. auto) instead of starting a local one",
    )
    ray.add_argument(
        "--ray-cpus",
        type=float,
        default=None,
        help="CPUs of the local Ray cluster (None: the machine's)",
    )


def run_ray(
    args: argparse.Namespace, config_of: Callable[[], ServeConfig], token: str | None
) -> int:
    """Deploy, then wait for signals: SIGHUP re-reads the config and reloads the models on every
    replica (rolling, no failed request); SIGINT/SIGTERM stop Serve (replicas drain) and Ray."""
    from warmstart.serving.ray_serve import (
        RayServeConfig,
        deploy,
        reload_models,
        shutdown,
        start_ray,
    )

    ray_config = RayServeConfig(replicas=args.replicas, num_cpus=args.replica_cpus)
    config = config_of()
    wanted = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    start_ray(args.ray_address, args.ray_cpus)
    try:
        url = deploy(config, ray_config, token)
        print(
            f"serving on {url} with {ray_config.replicas} Ray Serve replicas "
            f"(admin {'on' if token else 'off'}); SIGHUP reloads the models, Ctrl-C stops",
            flush=True,
        )
        while signal.sigwait(wanted) == signal.SIGHUP:
            result = reload_models(config_of().models)  # as POST /v1/admin/reload does
            print(f"reloaded every replica: {result}", flush=True)
    finally:
        shutdown()
    return 0
