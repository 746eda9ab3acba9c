"""Does the ColdNAS supernet learn on Last.fm? Its own best validation MSE under several settings.

Trains only the supernet (60 epochs, the Last.fm compare settings otherwise) on seeds 0-2 and
prints its best validation MSE, the epoch, and the gates there. Validation users only. A supernet
stuck near 0.2425 (a per-user constant) has collapsed: with max and min both at threshold 0,
``min(max(h, 0), 0) = 0``, and weight decay keeps the heads there (docs/coldstart.md, Last.fm).

Usage: python experiments/coldnas_supernet_settings.py [DATA_DIR] [SETTING ...]
"""

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from warmstart.coldstart.training import PRESETS, build_model, fit, training_pools
from warmstart.data import coldstart_split

# name -> (lr, weight decay, (max, min) head bias at init or None for the reference's (0, 0))
SETTINGS = {
    "lr3e-4 wd3e-3": (3e-4, 3e-3, None),
    "lr1e-3 wd3e-3": (1e-3, 3e-3, None),
    "lr1e-3 wd0": (1e-3, 0.0, None),
    "lr3e-4 wd0": (3e-4, 0.0, None),
    "lr3e-4 wd3e-3 clamps -0.25/+0.25": (3e-4, 3e-3, (-0.25, 0.25)),
    "lr3e-4 wd3e-3 clamps 0/1": (3e-4, 3e-3, (0.0, 1.0)),
    "lr3e-4 wd3e-3 clamps -1/0": (3e-4, 3e-3, (-1.0, 0.0)),
}

data_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data")
wanted = sys.argv[2:] or list(SETTINGS)
torch.set_num_threads(1)
split = coldstart_split("lastfm-coldnas", data_dir, 0)
preset = PRESETS["paper"]
for name in wanted:
    lr, wd, clamps = SETTINGS[name]
    for seed in (0, 1, 2):
        start = time.perf_counter()
        config = replace(preset.train, epochs=60, lr=lr, weight_decay=wd, seed=seed)
        model = build_model(split, preset.model, None, seed)
        if clamps is not None:
            with torch.no_grad():
                for (_, op), sl in model.layout.slices.items():
                    if op in ("max", "min"):
                        model.head.bias[sl] = clamps[op == "min"]
        pools = training_pools(split, config)
        result = fit(model, split.train, split.valid, config, None, False, pools=pools)
        assert result.best_gates is not None
        print(
            f"{name} seed {seed}: supernet valid MSE {result.best_valid_mse:.4f} "
            f"at epoch {result.best_epoch} ({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
        rows = [" ".join(f"{g:.2f}" for g in row) for row in result.best_gates]
        print("  gates (max min mul add) by position:", " | ".join(rows))
