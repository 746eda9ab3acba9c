"""RocketQA's four-step training pipeline (Qu et al., NAACL 2021, arXiv 2010.08191, section 4.5).

    zero_shot  the pre-trained encoder, no training (reference row)
    md0        dual encoder, in-batch negatives (random negatives)
    md0_cross  MD0 with cross-batch negatives over ``workers`` processes (ablation)
    ce         cross-encoder trained on positives + MD0's own retrieved non-positives,
               then calibrated (Platt) on held-out labelled queries
    mine       CE scores MD0's top-k of every train query -> denoised negatives (P < low)
    md1        dual encoder retrained from the pre-trained checkpoint on denoised hard negatives
    no_denoise same, every retrieved non-positive a negative (ablation)
    augment    MD1 retrieves for the unlabelled questions, the CE pseudo-labels them
    md2        dual encoder retrained on labelled + pseudo-labelled data
    rerank     MD2's top ``rerank_depth`` reordered by the CE

Every step writes its artifacts into ``workdir/<step>/`` (model.safetensors + encoder.json,
data jsonl, metrics.json, config.json, inputs.json) and a ``done.json`` last; a step whose
``done.json`` exists is skipped while what it read is unchanged (config fields, dataset files,
upstream steps: ``run.stale_steps``; otherwise the run refuses), a training step resumes from
``<step>/checkpoint``, and cross-encoder scoring resumes block by block.

The module is split along its seams: ``presets`` (the step list, ``PipelineConfig``),
``artifacts`` (the step context, artifact I/O, what a step read), ``steps`` (the step bodies,
each declared with what it reads) and ``run`` (which finished steps may be reused, the run).
This package re-exports the names callers use.
"""

from warmstart.retrieval.pipeline.artifacts import (
    PipelineContext,
    data_fingerprint,
    load_candidates,
    load_cross,
    load_dual,
    load_scaler,
    save_candidates,
    scored_blocks,
)
from warmstart.retrieval.pipeline.presets import (
    CE_DEV_DEPTH,
    EVAL_DEPTH,
    MIN_HEAD_SPREAD,
    OPTIONAL_STEPS,
    STEPS,
    PipelineConfig,
    with_steps,
)
from warmstart.retrieval.pipeline.run import (
    STEP_FUNCTIONS,
    STEP_INPUTS,
    check_done_steps,
    run_pipeline,
    stale_steps,
    step_fields,
)
from warmstart.retrieval.pipeline.steps import (
    STEP_SPECS,
    check_head_input,
    corpus_embeddings,
    cross_batch_args,
    cross_batch_train,
    cross_batch_worker,
    dev_split,
    evaluate_dual,
    fresh_cross,
    fresh_dual,
    head_candidates,
    md0_train_candidates,
    mine_candidates,
    query_candidates,
    train_positives,
    truncate_layers,
    with_positives,
)

__all__ = [
    "CE_DEV_DEPTH",
    "EVAL_DEPTH",
    "MIN_HEAD_SPREAD",
    "OPTIONAL_STEPS",
    "STEPS",
    "STEP_FUNCTIONS",
    "STEP_INPUTS",
    "STEP_SPECS",
    "PipelineConfig",
    "PipelineContext",
    "check_done_steps",
    "check_head_input",
    "corpus_embeddings",
    "cross_batch_args",
    "cross_batch_train",
    "cross_batch_worker",
    "data_fingerprint",
    "dev_split",
    "evaluate_dual",
    "fresh_cross",
    "fresh_dual",
    "head_candidates",
    "load_candidates",
    "load_cross",
    "load_dual",
    "load_scaler",
    "md0_train_candidates",
    "mine_candidates",
    "query_candidates",
    "run_pipeline",
    "save_candidates",
    "scored_blocks",
    "stale_steps",
    "step_fields",
    "train_positives",
    "truncate_layers",
    "with_positives",
    "with_steps",
]
