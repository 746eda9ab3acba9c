"""Orchestration of the RocketQA pipeline: which finished steps may be reused, and the run.

A finished step (``<step>/done.json``) is reused only while everything it read is unchanged:
the config fields it depends on (its own and, through the artifacts it reads, its upstream
steps'), the dataset files it read (content fingerprints in ``<step>/inputs.json``) and the
upstream steps themselves (a step that reads a stale or unfinished step's artifacts is stale
too). Otherwise the run refuses before doing anything and names the step, the fields and the
changed files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from warmstart.retrieval.pipeline.artifacts import (
    PipelineContext,
    data_file,
    finish_step,
    read_inputs,
    step_done,
)
from warmstart.retrieval.pipeline.presets import STEPS, PipelineConfig
from warmstart.retrieval.pipeline.steps import STEP_SPECS

IGNORED_FIELDS = ("encode_batch_size", "score_batch_size", "steps")
"""Config fields no artifact depends on (inference batch sizes, the step list)."""

STEP_FUNCTIONS = {name: STEP_SPECS[name].run for name in STEPS}
STEP_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: (STEP_SPECS[name].fields, STEP_SPECS[name].upstream) for name in STEPS
}
"""step -> (config fields it reads, steps whose artifacts it reads), derived from the
declarations next to the step bodies (``steps.pipeline_step``)."""


def step_fields(name: str) -> set[str]:
    """Config fields (dotted paths) a step's artifacts depend on, through its upstream steps."""
    fields, upstream = STEP_INPUTS[name]
    out = set(fields)
    for step in upstream:
        out |= step_fields(step)
    return out


def _field(config: dict[str, Any], path: str) -> Any:
    value: Any = config
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _needed(steps: Sequence[str]) -> list[str]:
    """``steps`` and every step whose artifacts they read, in pipeline order."""
    needed: set[str] = set()
    todo = list(steps)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(STEP_INPUTS[name][1])
    return [s for s in STEPS if s in needed]


def stale_steps(ctx: PipelineContext, steps: Sequence[str] = STEPS) -> dict[str, list[str]]:
    """Finished steps among ``steps`` (and their upstream steps) that must not be reused, with
    the reasons: config fields that differ, dataset files whose contents changed, or an
    upstream step that is stale or not finished. Steps not finished are not listed."""
    current = ctx.config.to_json()
    stale: dict[str, list[str]] = {}
    for name in _needed(steps):
        folder = ctx.workdir / name
        if step_done(folder) is None:
            continue
        reasons: list[str] = []
        saved = folder / "config.json"
        if saved.is_file():
            old = json.loads(saved.read_text())
            reasons += sorted(
                f"{f}: {_field(old, f)!r} -> {_field(current, f)!r}"
                for f in step_fields(name)
                if _field(old, f) != _field(current, f)
            )
        inputs = read_inputs(folder)
        if inputs is not None:
            parts = {data_file(p): p for p in ("corpus", "queries", "unlabeled")}
            for file, fingerprint in sorted(inputs["data"].items()):
                part = parts.get(file, file.removesuffix(".tsv"))
                if ctx.fingerprint(part) != fingerprint:
                    reasons.append(f"dataset file {file} changed (its contents differ)")
        for up in STEP_INPUTS[name][1]:
            if up in stale:
                reasons.append(f"reads the artifacts of {up!r}, which is stale")
            elif step_done(ctx.workdir / up) is None:
                reasons.append(f"reads the artifacts of {up!r}, which is not finished")
        if reasons:
            stale[name] = reasons
    return stale


def check_done_steps(ctx: PipelineContext, steps: Sequence[str]) -> None:
    """Refuse to reuse a finished step (or its finished inputs) made under another config or
    on other data. Raises ValueError naming the earliest stale step and why."""
    stale = stale_steps(ctx, steps)
    for name in _needed(steps):
        if name in stale:
            later = [s for s in stale if s != name]
            also = f"; stale after it: {', '.join(later)}" if later else ""
            raise ValueError(
                f"step {name!r} in {ctx.workdir} was finished under other inputs "
                f"({'; '.join(stale[name])}), so its artifacts do not match this run{also}; "
                f"use another --workdir, or delete {ctx.workdir / name} and the steps that read it"
            )
    for name in _needed(steps):
        if step_done(ctx.workdir / name) is not None and read_inputs(ctx.workdir / name) is None:
            ctx.log(
                f"[{name}] WARNING: finished before data fingerprints were recorded "
                "(no inputs.json): reused without checking which dataset it was made on"
            )


def _check_declared(name: str, fields: set[str]) -> None:
    allowed = step_fields(name) | set(IGNORED_FIELDS)
    undeclared = sorted(f for f in fields if f not in allowed and f.split(".")[0] not in allowed)
    if undeclared:
        raise RuntimeError(
            f"step {name!r} read config fields it does not declare: {undeclared} "
            "(add them to its @pipeline_step(fields=...))"
        )


def run_pipeline(ctx: PipelineContext, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or skip, when done) each configured step; returns step -> metrics.

    A step already done under other inputs (``stale_steps``) is an error, not a silent reuse.

    Args:
        only: run just these steps (their inputs must exist); None = all configured steps.
    """
    selected = [n for n in ctx.config.steps if only is None or n in only]
    check_done_steps(ctx, selected)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    (ctx.workdir / "pipeline_config.json").write_text(json.dumps(ctx.config.to_json(), indent=2))
    results: dict[str, Any] = {}
    for name in selected:
        folder = ctx.workdir / name
        done = step_done(folder)
        if done is not None:
            ctx.log(f"[{name}] done, skipped")
            results[name] = done
            continue
        ctx.log(f"[{name}] running")
        t0 = time.perf_counter()
        spec = STEP_SPECS[name]
        with ctx.recording(name, frozenset(spec.reads)) as record:
            metrics = STEP_FUNCTIONS[name](ctx)
        _check_declared(name, record.fields)
        metrics["step_seconds"] = time.perf_counter() - t0
        results[name] = finish_step(ctx, folder, metrics, _step_config(ctx.config, name), record)
        ctx.log(f"[{name}] {json.dumps(metrics.get('test', metrics))}")
    summary = ctx.workdir / "summary.json"
    summary.write_text(json.dumps(results, indent=2))
    return results


def _step_config(config: PipelineConfig, name: str) -> dict[str, Any]:
    out = config.to_json()
    out["step"] = name
    return out
