"""`warmstart serve check` against a real server; config errors name the file and field."""

from __future__ import annotations

import json

from warmstart.cli import main


def write_config(path, tiny_artifacts, tmp_path, **extra):
    config = {
        "models": {"coldnas": str(tiny_artifacts.coldnas), "mf": str(tiny_artifacts.mf)},
        "store": {"memory_mb": 1, "lmdb_path": str(tmp_path / "lmdb")},
        "admission": {"deadline_ms": 5000},
        **extra,
    }
    path.write_text(json.dumps(config))
    return path


def test_serve_check_passes_on_a_working_config(tiny_artifacts, tmp_path, capsys):
    config = write_config(tmp_path / "serve.json", tiny_artifacts, tmp_path)
    assert main(["serve", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "POST /v1/recommend" in out and " 0 failed" in out


def test_serve_check_fails_on_missing_artifacts(tiny_artifacts, tmp_path, capsys):
    config = write_config(
        tmp_path / "serve.json",
        tiny_artifacts,
        tmp_path,
        models={"coldnas": str(tmp_path / "none"), "mf": str(tiny_artifacts.mf)},
    )
    assert main(["serve", "check", "--config", str(config)]) != 0


def test_bad_config_names_file_and_field(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"recommend": {"adapt": {"max_batch": 0}}}))
    assert main(["serve", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "max_batch" in err
    path.write_text(json.dumps({"store": {"memroy_mb": 1}}))
    assert main(["serve", "check", "--config", str(path)]) == 2
    assert "memroy_mb" in capsys.readouterr().err
