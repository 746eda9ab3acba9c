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


def test_compare_models_load_in_evaluate_and_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The models compare trains are exported: ``evaluate``, ``recommend`` and ``load_recommender`` take them
    (also given the method's folder, which holds the checkpoints and ``model/``)."""
    from warmstart.coldstart.compare import CompareConfig, compare

    config = CompareConfig(
        dataset="synthetic",
        preset="tiny",
        seeds=(0,),
        out=tmp_path,
        k=(2,),
        skip=("MF + per-user ridge", "MeLU-MAML", "item popularity", "item popularity (smoothed)"),
    )
    result = compare(config)
    assert list(result.per_seed[0]) == ["global mean", "fixed FiLM", "ColdNAS"]  # table order
    assert result.models[0] == {
        "fixed FiLM": str(tmp_path / "seed0" / "film" / "model"),
        "ColdNAS": str(tmp_path / "seed0" / "coldnas" / "model"),
    }
    coldnas = tmp_path / "seed0" / "coldnas"
    assert main(["coldstart", "evaluate", "--model", str(coldnas), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    mse = float(out.split("\n")[2].split()[-5])  # the ColdNAS row's MSE column
    assert mse == pytest.approx(result.per_seed[0]["ColdNAS"]["MSE"], abs=1e-4)
    rec = load_recommender(tmp_path / "seed0" / "film" / "model")
    assert rec.config["method"] == "fixed FiLM" and len(rec.item_ids) == rec.n_items
    assert str(load_recommender(coldnas).structure) == result.structures[0]["structure"]
    first = load_recommender(coldnas).item_ids.ids[0]
    assert main(["recommend", "--model", str(coldnas), "--rate", f"{first}=5", "--k", "3"]) == 0
    assert capsys.readouterr().out.startswith("top 3 for 1 rating(s)")
    # a checkpoint folder is not a model: the error points at the exported one
    assert main(["coldstart", "evaluate", "--model", str(coldnas / "search")]) == 2
    assert "training checkpoint folder" in capsys.readouterr().err


def test_compare_config_names_bad_fields() -> None:
    from warmstart.coldstart.compare import CompareConfig

    with pytest.raises(ValueError, match=r"CompareConfig\.dataset='nope', allowed"):
        CompareConfig(dataset="nope")
    with pytest.raises(ValueError, match=r"TrainConfig\.lr must be > 0"):
        CompareConfig(lr=-1.0)
    with pytest.raises(ValueError, match=r"CompareConfig\.seeds"):
        CompareConfig(seeds=())


@pytest.mark.parametrize(
    ("error", "code"), [(ValueError("bad --lr"), 2), (FileNotFoundError("x: not found"), 2)]
)
def test_user_errors_exit_2_and_bugs_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    code: int,
) -> None:
    import warmstart.cli.coldstart_nas as nas

    def fail(_: object) -> int:
        raise error

    monkeypatch.setattr(nas, "run_evaluate", fail)
    assert main(["coldstart", "evaluate", "--model", "m"]) == code
    assert capsys.readouterr().err == f"warmstart: error: {error}\n"

    def bug(_: object) -> int:
        return {}["missing"]  # type: ignore[no-any-return]

    monkeypatch.setattr(nas, "run_evaluate", bug)
    with pytest.raises(KeyError, match="missing"):
        main(["coldstart", "evaluate", "--model", "m"])


@pytest.mark.parametrize("dataset", ["movielens-1m", "movielens-100k"])
def test_trained_models_keep_raw_ids_and_titles(
    dataset: str, tiny_data_dir: Path, tmp_path: Path
) -> None:
    """``train`` on a dataset in its official layout writes the raw MovieIDs and the titles."""
    args = ["coldstart", "train", *COMMON[2:], "--dataset", dataset, "--data-dir"]
    argv = [*args, str(tiny_data_dir), "--out", str(tmp_path), "--structure", "film"]
    assert main([*argv, "--epochs", "1", "--no-cache"]) == 0
    rec = load_recommender(tmp_path / "seed0")
    raw = list(rec.item_ids.ids)
    assert all(isinstance(i, int) for i in raw) and raw == sorted(raw) and raw[0] >= 1
    [first] = rec.describe(rec.item_ids.to_rows([raw[0]]))
    assert first["id"] == raw[0] and f"{raw[0]}" in first["title"] and first["genres"]
    assert isinstance(first["year"], int)
