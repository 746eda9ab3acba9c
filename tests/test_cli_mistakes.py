"""User mistakes on the command line: exit code 2 and a message that says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmstart.cli import main

TRAIN = ["coldstart", "train", "--dataset", "synthetic", "--preset", "tiny", "--no-progress"]


def test_missing_structure_file_says_it_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.json"
    assert main([*TRAIN, "--out", str(tmp_path), "--structure", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
