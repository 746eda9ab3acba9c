"""The ``warmstart`` command: the only place that reads argv and the environment.

What warmstart is (the top-level ``--help``): ``DESCRIPTION``.

Each command group lives in its own module with a ``register(subparsers)`` function that adds
its sub-commands; a sub-command stores its handler in ``func`` (called with the parsed args,
returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (group name, help, modules that register sub-commands into the group)
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("data", "fetch, check and summarise datasets", ("warmstart.cli.data",)),
    (
        "coldstart",
        "cold-start recommendation: baselines, ColdNAS search/train/evaluate",
        (
            "warmstart.cli.coldstart_baselines",
            "warmstart.cli.coldstart_nas",
            "warmstart.cli.coldstart_topk",
        ),
    ),
    ("retrieval", "dense passage retrieval (RocketQA)", ("warmstart.cli.retrieval",)),
    ("mpp", "Meta Parameter Partition: offline/online meta-learning", ("warmstart.cli.mpp",)),
    ("serve", "online serving (JIZHI): HTTP server, check, MF export", ("warmstart.cli.serve",)),
    ("distill", "elastic knowledge distillation on Ray (EDL-Dist)", ("warmstart.cli.distill",)),
    (
        "demo",
        "the web demo: train (cached), serve the page, print its URL",
        ("warmstart.cli.demo",),
    ),
)


# (command name, help, module whose ``register(parser)`` adds its options): commands without
# sub-commands
COMMANDS: tuple[tuple[str, str, str], ...] = (
    (
        "recommend",
        "top-k recommendations for ratings typed on the command line",
        "warmstart.cli.recommend",
    ),
)


DESCRIPTION = (
    "warmstart: personalised recommendation and retrieval on a CPU. Get recommendations for a "
    "few ratings (`warmstart coldstart train`, then `warmstart recommend`), search a document "
    "collection (`warmstart retrieval index`, then `search`), reproduce the papers' tables, "
    "serve models over HTTP. Every command has --help."
)


def positive_int(text: str) -> int:
    """argparse type of counts such as ``--threads``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _polish(parser: argparse.ArgumentParser) -> None:
    """Every parser below ``parser``: defaults shown in ``--help``, ``--threads`` >= 1."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    for action in parser._actions:
        if action.dest == "threads" and action.type is int:
            action.type = positive_int
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not sub.description:  # the one-line help is the page's description too
                    sub.description = helps.get(name)
                _polish(sub)


USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)
"""What the project raises for a user's mistake (bad value, missing file): exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warmstart", description=DESCRIPTION)
    groups = parser.add_subparsers(dest="group", metavar="GROUP")
    groups.required = True
    for name, help_text, modules in GROUPS:
        group = groups.add_parser(name, help=help_text, description=help_text)
        commands = group.add_subparsers(dest="command", metavar="COMMAND")
        commands.required = True
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name != module_name:
                    raise
                continue  # a group whose module is not written yet
            module.register(commands)
            # a group may also run without a sub-command (`warmstart serve --config FILE`)
            if hasattr(module, "configure_group"):
                module.configure_group(group, commands)
    for name, help_text, module_name in COMMANDS:
        command = groups.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).register(command)
    _polish(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        # Library code raises these for bad input, naming the file, line or field: show them
        # without a traceback. Anything else (KeyError, TypeError, ...) is a bug and keeps its
        # traceback.
        print(f"warmstart: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
