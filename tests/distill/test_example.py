"""The SciFact example's pure parts: the teacher's dev split and its config checks."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from warmstart.distill.example import ExampleConfig, teacher_split


def _collection(n: int) -> Any:
    return SimpleNamespace(qrels={"train": {f"q{i}": {"d": 1} for i in range(n)}})


def test_teacher_split_is_a_seeded_partition() -> None:
    train, dev = teacher_split(_collection(50), 0.1, seed=0)
    assert len(dev) == 5 and len(train) == 45
    assert set(train) | set(dev) == {f"q{i}" for i in range(50)} and not set(train) & set(dev)
    assert teacher_split(_collection(50), 0.1, seed=0) == (train, dev)
    assert teacher_split(_collection(50), 0.1, seed=1)[1] != dev


def test_example_config_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="dev_fraction"):
        ExampleConfig(dev_fraction=1.0)
    with pytest.raises(ValueError, match="teacher_epochs"):
        ExampleConfig(teacher_epochs=0)
