"""Every command of the ``warmstart`` CLI answers ``--help`` without error."""

from __future__ import annotations

import argparse

import pytest

from warmstart.cli import build_parser, main


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


COMMANDS = _commands(build_parser())


def test_every_group_has_commands() -> None:
    groups = {c[0] for c in COMMANDS if len(c) == 1}
    assert {"data", "coldstart", "retrieval"} <= groups
    assert any(c[:1] == ("data",) and len(c) == 2 for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "warmstart")
def test_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: warmstart" in capsys.readouterr().out
