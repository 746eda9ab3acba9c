"""Cold-start evaluation protocol: evaluate, aggregate_seeds, format_table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from warmstart.coldstart.evaluate import Predictor, aggregate_seeds, evaluate, format_table
from warmstart.data.types import EpisodeSplit, Task
from warmstart.metrics import coldstart_report


def _task(user: int, query_labels: list[float]) -> Task:
    n = len(query_labels)
    return Task(
        user=user,
        support_items=np.array([0, 1], dtype=np.int64),
        support_labels=np.array([1.0, 0.0], dtype=np.float32),
        query_items=np.arange(2, 2 + n, dtype=np.int64),
        query_labels=np.array(query_labels, dtype=np.float32),
    )


class ItemIndex:
    """Predicts the query item index scaled down (deterministic, uses no labels)."""

    name = "item index"

    def fit(self, split: EpisodeSplit) -> None:
        pass

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        return [t.query_items / 10.0 for t in tasks]


class WrongShape(ItemIndex):
    name = "wrong shape"

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        return [np.zeros(1) for _ in tasks]


def test_evaluate_equals_coldstart_report_plus_users() -> None:
    tasks = [_task(0, [1, 0, 1]), _task(1, [0, 0, 1, 1, 1])]
    predictor = ItemIndex()
    assert isinstance(predictor, Predictor)
    out = evaluate(predictor, tasks)
    expected = coldstart_report(predictor.predict(tasks), [t.query_labels for t in tasks])
    assert out == {**expected, "users": 2.0}


def test_evaluate_rejects_wrong_shapes_and_no_tasks() -> None:
    with pytest.raises(ValueError, match="query items"):
        evaluate(WrongShape(), [_task(0, [1, 0, 1])])
    with pytest.raises(ValueError, match="no tasks"):
        evaluate(ItemIndex(), [])


def test_aggregate_seeds_mean_and_sample_std() -> None:
    reports = [{"MSE": 1.0, "users": 5.0}, {"MSE": 2.0, "users": 5.0}, {"MSE": 3.0, "users": 5.0}]
    agg = aggregate_seeds(reports)
    assert agg["MSE"] == pytest.approx((2.0, 1.0))
    assert agg["users"] == (5.0, 0.0)
    assert aggregate_seeds(reports[:1])["MSE"] == (1.0, 0.0)
    with pytest.raises(ValueError, match="keys"):
        aggregate_seeds([{"MSE": 1.0}, {"MAE": 1.0}])


def test_format_table_single_and_seeded_rows() -> None:
    single = {"MSE": 0.25, "MAE": 0.5, "nDCG@3": 0.75, "nDCG@5": 0.7, "users": 66.0}
    seeded = {k: (v, 0.01) for k, v in single.items()} | {"users": (66.0, 0.0)}
    lines = format_table({"a": single, "longer name": seeded}).splitlines()
    assert lines[0].split() == ["method", "MSE", "MAE", "nDCG@3", "nDCG@5", "users"]
    assert lines[2].split() == ["a", "0.2500", "0.5000", "0.7500", "0.7000", "66"]
    assert "0.2500 ± 0.0100" in lines[3] and lines[3].endswith("66")
    assert len({len(line) for line in lines}) == 1  # aligned columns
