"""``warmstart coldstart topk`` on synthetic data (tiny preset)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warmstart.cli import main

COMMON = ["--dataset", "synthetic", "--preset", "tiny", "--no-progress", "--threads", "1"]


def test_topk_prints_one_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["coldstart", "topk", *COMMON, "--out", str(tmp_path), "--seeds", "0"]
    assert main([*args, "--k", "2", "--negatives", "16", "--skip", "MeLU-MAML", "--sampled"]) == 0
    out = capsys.readouterr().out
    names = (
        "item popularity",
        "MF + per-user ridge",
        "item-kNN",
        "item-kNN (alpha 0.6)",
        "item-kNN (alpha 0.7)",
        "item-kNN (alpha 0.8)",
        "fixed FiLM",
        "ColdNAS",
        "FiLM (ranking)",
        "ColdNAS (ranking)",
        "two-stage MF -> FiLM (ranking)",
        "two-stage kNN -> FiLM (ranking)",
        "offline MPP",
    )
    for name in names:
        assert name in out
    assert "MeLU-MAML" not in out
    assert "ColdNAS (ranking) structure seed 0" in out
    assert "FiLM (ranking) minus" in out and "Rating metrics" in out
    report = json.loads((tmp_path / "topk.json").read_text())
    assert set(report["per_user"]) == set(names)
    assert report["per_user_columns"][:4] == ["HR@10", "nDCG@10", "Recall@50", "MRR"]
    assert len(report["per_seed"]) == 1
    first = report["per_seed"][0]["topk"]["item-kNN"]
    assert {"HR@10", "coverage@10", "overlap@10", "pop rank@10", "HR@10 s100"} <= set(first)
    assert "FiLM (ranking)" in report["per_seed"][0]["rating"]
    assert "offline MPP minus" in out
    assert set(report["paired"]["offline MPP"]) == set(report["paired"]["FiLM (ranking)"])
    assert set(report["paired"]["FiLM (ranking)"]) == {
        "item popularity",
        "MF + per-user ridge",
        "item-kNN",
    }
