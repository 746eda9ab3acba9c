"""The models ``make demo`` and ``coldstart train --interactions`` write are loadable by
``coldstart evaluate``, ``recommend`` and the serving layer (``compare``'s models: see
tests/coldstart/test_cli_nas.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fixtures.official import write_own_csv
from warmstart.cli import main
from warmstart.serving.models import load_recommend_models

TRAIN = ["coldstart", "train", "--preset", "tiny", "--no-progress", "--threads", "1"]
FAST = ["--structure", "film", "--epochs", "1", "--no-cache"]


def _test_mse(out: str) -> float:
    """The MSE column of the first metrics table row (... MSE MAE nDCG@3 nDCG@5 users)."""
    rows = [line for line in out.splitlines() if re.search(r"\d\.\d{4}\s+\d+$", line)]
    return float(rows[0].split()[-5])


def test_demo_built_model_loads_in_recommend_evaluate_and_serving(
    tiny_demo, capsys: pytest.CaptureFixture[str]
) -> None:
    root, demo = tiny_demo
    items = json.loads((demo.coldnas / "items.json").read_text())
    ids = json.loads((demo.coldnas / "ids.json").read_text())["items"]["ids"]
    title = items["rows"][1][items["columns"].index("title")]
    argv = ["recommend", "--model", str(demo.coldnas.parent), "--k", "3", "--threads", "1"]
    assert main([*argv, "--rate", f"{ids[0]}=5", "--rate", f"{title}=1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("top 3 for 2 rating(s)") and " ms" in out

    argv = ["coldstart", "evaluate", "--model", str(demo.coldnas), "--threads", "1"]
    assert main([*argv, "--data-dir", str(root / "data"), "--no-cache"]) == 0
    assert _test_mse(capsys.readouterr().out) > 0

    models = load_recommend_models(demo.coldnas, demo.mf)
    assert len(models.item_ids) == models.ranker.n_items == len(ids)


def test_model_trained_on_own_csv_is_evaluated_on_the_same_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, _ = write_own_csv(tmp_path)
    run = tmp_path / "run"
    assert main([*TRAIN, "--interactions", str(csv), "--out", str(run), *FAST]) == 0
    trained = _test_mse(capsys.readouterr().out)  # train prints its test users' metrics

    evaluate = ["coldstart", "evaluate", "--model", str(run / "seed0"), "--threads", "1"]
    assert main(evaluate) == 0
    assert _test_mse(capsys.readouterr().out) == pytest.approx(trained, abs=1e-4)

    moved = tmp_path / "elsewhere.csv"
    shutil.move(csv, moved)
    assert main([*evaluate, "--interactions", str(moved)]) == 0
    assert _test_mse(capsys.readouterr().out) == pytest.approx(trained, abs=1e-4)

    moved.write_text(moved.read_text().replace("u0,", "u1,", 1))
    assert main([*evaluate, "--interactions", str(moved)]) == 2
    err = capsys.readouterr().err
    assert str(moved) in err and "contents changed" in err


def test_model_trained_on_own_csv_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, _ = write_own_csv(tmp_path)
    run = tmp_path / "run"
    assert main([*TRAIN, "--interactions", str(csv), "--out", str(run), *FAST]) == 0
    mf = tmp_path / "mf"
    export = ["serve", "export-mf", "--model", str(run / "seed0"), "--out", str(mf)]
    assert main([*export, "--dim", "4", "--l2", "1.0", "--sweeps", "3"]) == 0
    capsys.readouterr()
    models = load_recommend_models(run / "seed0" / "model", mf)
    assert models.item_ids.ids[0].startswith("song-")
