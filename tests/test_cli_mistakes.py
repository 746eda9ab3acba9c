"""User mistakes on the command line: exit code 2 and a message that says what is wrong."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from fixtures.official import write_movielens_100k
from warmstart.cli import build_parser, main

TRAIN = ["coldstart", "train", "--dataset", "synthetic", "--preset", "tiny", "--no-progress"]


def test_missing_structure_file_says_it_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.json"
    assert main([*TRAIN, "--out", str(tmp_path), "--structure", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_wrong_number_of_positions_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "short.json"
    path.write_text(json.dumps({"positions": [["add"], []]}))
    assert main([*TRAIN, "--out", str(tmp_path), "--structure", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["coldstart", "train", "--structure", "film"],
        ["coldstart", "evaluate", "--model", "m"],
        ["retrieval", "pipeline"],
        ["recommend", "--model", "m"],
    ],
)
def test_threads_zero_is_an_argparse_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads: must be >= 1, got 0" in capsys.readouterr().err


def test_every_threads_option_refuses_zero() -> None:
    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        bad = []
        for action in parser._actions:
            if action.dest == "threads" and action.type is int:
                bad.append(path)
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    bad += walk(sub, f"{path} {name}")
        return bad

    assert walk(build_parser(), "warmstart") == []


def test_pipeline_only_unknown_step_lists_the_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["retrieval", "pipeline", "--workdir", str(tmp_path), "--only", "zero-shot"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown step(s) zero-shot" in err and "zero_shot" in err


def test_data_summary_marks_missing_datasets_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_movielens_100k(tmp_path / "movielens-100k")
    assert main(["data", "summary", "--data-dir", str(tmp_path), "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "movielens-1m: MISSING" in out and "lastfm-coldnas: MISSING" in out
    assert any(
        line.startswith("movielens-100k") and "MISSING" not in line for line in out.splitlines()
    )
    assert main(["data", "summary", "--data-dir", str(tmp_path / "none"), "--no-cache"]) == 2
    assert "no dataset found" in capsys.readouterr().err


def test_every_subcommand_has_help_and_shows_defaults() -> None:
    top = build_parser()
    assert "recommendation" in top.description and "retrieval" in top.description

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter, path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name) or not sub.description:
                        missing.append(f"{path} {name}")
                    missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(top, "warmstart") == []


@pytest.mark.parametrize("query", ["", "   "])
def test_search_refuses_an_empty_query(
    query: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["retrieval", "search", "--retriever", str(tmp_path), query]) == 2
    assert "query: empty" in capsys.readouterr().err
