"""``warmstart distill train-teacher``'s precision: fp32 by default, bf16 only when asked (warned)."""

from __future__ import annotations

import pytest

from warmstart.cli import build_parser
from warmstart.cli.distill import BF16_TRAINING_WARNING, teacher_config
from warmstart.distill.example import ExampleConfig


def _args(*extra: str):
    return build_parser().parse_args(["distill", "train-teacher", *extra])


def test_train_teacher_defaults_to_fp32_without_a_warning(capsys) -> None:
    assert not ExampleConfig().teacher_bf16
    for extra in ((), ("--fp32",)):
        config = teacher_config(_args(*extra, "--epochs", "2"))
        assert not config.teacher_bf16 and config.teacher_epochs == 2
    assert "WARNING" not in capsys.readouterr().err


def test_bf16_training_is_an_opt_in_that_warns(capsys) -> None:
    assert teacher_config(_args("--bf16")).teacher_bf16
    assert BF16_TRAINING_WARNING in capsys.readouterr().err


def test_bf16_and_fp32_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        _args("--bf16", "--fp32")


def test_share_cores_and_idle_priority_options() -> None:
    from warmstart.cli.distill import _teacher_spec, pool_config

    run = ["distill", "run", "--workdir", "w", "--threads", "2"]
    plain = pool_config(build_parser().parse_args(run))
    assert plain.refill_at is None and plain.student_threads_idle is None
    shared = pool_config(build_parser().parse_args([*run, "--share-cores"]))
    assert shared.refill_at == 2 and shared.student_threads_idle == 2
    teacher = ["distill", "teacher", "--address", "a", "--preset", "scifact", "--teacher", "t"]
    assert not _teacher_spec(build_parser().parse_args(teacher)).idle_priority
    spec = _teacher_spec(build_parser().parse_args([*teacher, "--teacher-idle-priority"]))
    assert spec.idle_priority


def test_student_init_and_pick_options() -> None:
    from warmstart.cli.distill import student_example_config
    from warmstart.distill.example import INITS, PICKS

    run = ["distill", "run", "--workdir", "w", "--preset", "scifact"]
    plain = student_example_config(build_parser().parse_args(run))
    assert (plain.student_init, plain.student_pick) == ("backbone", "first")
    args = build_parser().parse_args(
        [*run, "--student-init", "teacher", "--student-pick", "spread"]
    )
    picked = student_example_config(args)
    assert (picked.student_init, picked.student_pick) == ("teacher", "spread")
    for option, allowed in (("--student-init", INITS), ("--student-pick", PICKS)):
        for value in allowed:  # the CLI's choices are the example's
            build_parser().parse_args([*run, option, value])
