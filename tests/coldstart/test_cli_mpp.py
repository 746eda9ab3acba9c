"""``warmstart mpp compare|train`` on synthetic data (tiny budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warmstart.cli import main
from warmstart.coldstart.mpp_compare import CONDITIONS
from warmstart.coldstart.mpp_inference import load

TINY = [
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--embedding-dim",
    "4",
    "--hidden",
    "8",
    "--no-progress",
]


def test_compare_writes_every_condition_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["mpp", "compare", "--dataset", "synthetic", "--seeds", "0", "1", "--out", str(tmp_path)]
    assert main([*args, *TINY]) == 0
    report = json.loads((tmp_path / "compare.json").read_text())
    for r in report["per_seed"]:
        assert set(CONDITIONS) <= set(r["auc"])
        assert [h["step"] for h in r["curves"]["offline MPP"]] == [0, 2, 4]
    assert set(report["paired"]["pairs"]) == {
        "offline MPP - pooled", "offline+online MPP - offline MPP",
        "offline MPP - full MAML (MeLU)", "offline+online MPP - online, fixed updated",
    }  # fmt: skip
    assert (tmp_path / "convergence.png").is_file()
    assert load(tmp_path / "seed0" / "offline_mpp").state_size > 0
    capsys.readouterr()
    assert main([*args, *TINY]) == 0  # resumed: both seeds reused
    assert capsys.readouterr().out.count("reusing") == 2


def test_train_exports_a_servable_model(tmp_path: Path) -> None:
    out = tmp_path / "model"
    rule = '{"adaptive": ["head.shift.*"]}'
    args = ["mpp", "train", "--dataset", "synthetic", "--rule", rule, "--out", str(out)]
    assert main([*args, *TINY]) == 0
    rec = load(out)
    assert rec.rule.patterns == ("head.shift.*",)
    assert rec.config["kind"] == "mpp"


def test_bad_rule_is_a_clean_error(tmp_path: Path) -> None:
    args = ["mpp", "train", "--dataset", "synthetic", "--rule", "bottom", "--out", str(tmp_path)]
    assert main([*args, *TINY]) == 2
