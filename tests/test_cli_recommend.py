"""``warmstart recommend`` (titles, raw ids, unknown/ambiguous titles) and ``coldstart train``
on one's own CSV, on tiny data in the official layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fixtures.official import write_own_csv
from warmstart.cli import main

TRAIN = ["coldstart", "train", "--preset", "tiny", "--no-progress", "--threads", "1"]
FAST = ["--structure", "film", "--epochs", "1", "--no-cache"]


@pytest.fixture(scope="module")
def ml1m_model(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ml1m")
    argv = [*TRAIN, "--dataset", "movielens-1m", "--data-dir", str(tiny_data_dir)]
    assert main([*argv, "--out", str(out), *FAST]) == 0
    return out / "seed0"


def _ranked_ids(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#")) + 1
    return [line.split()[1] for line in lines[start:] if line.strip()[:1].isdigit()]


def test_recommend_by_title_and_raw_id(
    ml1m_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = json.loads((ml1m_model / "model" / "items.json").read_text())
    title = info["rows"][0][0]  # e.g. "Café Movie 1"
    first_id = json.loads((ml1m_model / "model" / "ids.json").read_text())["items"]["ids"][1]
    argv = ["recommend", "--model", str(ml1m_model), "--k", "4"]
    assert main([*argv, "--rate", f"{title.upper()}=5", "--rate", f"{first_id}=2"]) == 0
    out = capsys.readouterr().out
    ranked = _ranked_ids(out)
    assert len(ranked) == 4 and str(first_id) not in ranked
    assert " ms" in out and "|" in out  # time, genres
    # the same item by title with its year, by raw id: the same list
    year = info["rows"][0][1]
    assert main([*argv, "--rate", f"{title} ({year})=5", "--rate", f"{first_id}=2"]) == 0
    assert _ranked_ids(capsys.readouterr().out) == ranked


def test_unknown_title_suggests_close_ones(
    ml1m_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = json.loads((ml1m_model / "model" / "items.json").read_text())
    title = info["rows"][0][0]
    assert main(["recommend", "--model", str(ml1m_model), "--rate", f"{title}x=5"]) == 2
    err = capsys.readouterr().err
    assert "no item with this title" in err and "did you mean" in err and title in err


def test_ambiguous_title_lists_candidates(
    ml1m_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(ml1m_model / "model", model)
    info = json.loads((model / "items.json").read_text())
    info["rows"][1][0] = info["rows"][0][0]  # two items, one title, different years
    (model / "items.json").write_text(json.dumps(info))
    title = info["rows"][0][0]
    assert main(["recommend", "--model", str(model), "--rate", f"{title}=5"]) == 2
    err = capsys.readouterr().err
    assert "matches 2 items" in err and "add the year" in err
    if info["rows"][0][1] != info["rows"][1][1]:  # the year picks one
        year = info["rows"][0][1]
        assert main(["recommend", "--model", str(model), "--rate", f"{title} ({year})=5"]) == 0


def test_bad_rating_text_is_a_user_error(
    ml1m_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recommend", "--model", str(ml1m_model), "--rate", "no-equals"]) == 2
    assert "expected ITEM=RATING" in capsys.readouterr().err


def test_own_csv_trains_a_model_recommend_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, titles = write_own_csv(tmp_path)
    argv = [*TRAIN, "--interactions", str(csv), "--item-titles", str(titles)]
    assert main([*argv, "--out", str(tmp_path / "run"), *FAST]) == 0
    capsys.readouterr()
    rec = ["recommend", "--model", str(tmp_path / "run" / "seed0"), "--k", "3"]
    assert main([*rec, "--rate", "song 4=5", "--rate", "song-7=1"]) == 0
    out = capsys.readouterr().out
    assert len(_ranked_ids(out)) == 3 and "song-4" not in _ranked_ids(out) and "Pop|Rock" in out


def test_own_csv_errors_name_the_users_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("user_id,item_id,rating\n1,2,5\n1,3,oops\n")
    assert main([*TRAIN, "--interactions", str(csv), "--out", str(tmp_path), *FAST]) == 2
    err = capsys.readouterr().err
    assert "rating" in err and "label" not in err
