"""``warmstart coldstart search|train|evaluate|compare`` on synthetic data (tiny preset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from warmstart.cli import main
from warmstart.coldstart.inference import load_recommender
from warmstart.coldstart.structure import Structure

COMMON = ["--dataset", "synthetic", "--preset", "tiny", "--no-progress", "--threads", "1"]


def test_search_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path), "--k", "2", "3", "--weight-decay", "1e-3"]
    assert main(["coldstart", "search", *COMMON, *args, "--search-weight-decay", "2e-3"]) == 0
    out = capsys.readouterr().out
    assert "supernet gates" in out and "selected on valid users" in out
    assert "supernet: best valid MSE" in out
    model_dir = tmp_path / "seed0" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["k"] in (2, 3) and {"git_sha", "seed", "structure", "gates"} <= set(config)
    assert (
        config["train"]["weight_decay"] == 1e-3 and config["search_train"]["weight_decay"] == 2e-3
    )
    structure = Structure.from_json((tmp_path / "seed0" / "structure.json").read_text())
    assert load_recommender(model_dir).structure == structure
    assert main(["coldstart", "evaluate", "--model", str(model_dir), "--threads", "1"]) == 0
    assert "MSE" in capsys.readouterr().out


def test_train_structure_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    path.write_text(Structure.parse("add|add|max+add|-").to_json())
    assert (
        main(["coldstart", "train", *COMMON, "--out", str(tmp_path), "--structure", str(path)]) == 0
    )
    assert load_recommender(tmp_path / "seed0" / "model").structure == Structure.parse(
        "add|add|max+add|-"
    )
    assert "0:add | 1:add | 2:max+add | 3:-" in capsys.readouterr().out


def test_bad_structure_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["coldstart", "train", *COMMON, "--out", str(tmp_path), "--structure", "add+max|-|-|-"]
    )
    assert code == 2
    assert "canonical order" in capsys.readouterr().err


def test_compare_prints_one_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["coldstart", "compare", *COMMON, "--out", str(tmp_path), "--seeds", "0", "--k", "2"]
    assert main([*args, "--skip", "MF + per-user ridge", "MeLU-MAML"]) == 0
    out = capsys.readouterr().out
    for name in ("global mean", "fixed FiLM", "ColdNAS"):
        assert name in out
    assert "Paired differences on the test users" in out
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["structures"][0]["seed"] == 0
    users = len(report["test_users"][0])
    ours = np.array(report["per_user"]["ColdNAS"][0])  # (users, 4)
    mean = np.array(report["per_user"]["global mean"][0])
    assert ours.shape == (users, 4) and report["per_user_columns"][0] == "MSE"
    assert report["per_seed"][0]["ColdNAS"]["MSE"] == pytest.approx(ours[:, 0].mean())
    paired = report["paired_vs_coldnas"]["global mean"]["MSE"]
    assert paired["delta"] == pytest.approx(ours[:, 0].mean() - mean[:, 0].mean())
    assert paired["lo"] <= paired["delta"] <= paired["hi"]


def test_supernet_trains_without_weight_decay_by_default(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--k", "2", "--weight-decay", "1e-3"]
    assert main(["coldstart", "search", *COMMON, *args]) == 0
    config = json.loads((tmp_path / "seed0" / "model" / "config.json").read_text())
    assert config["train"]["weight_decay"] == 1e-3 and config["search_train"]["weight_decay"] == 0
