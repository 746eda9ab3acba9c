"""MovieLens loaders on tiny official-format files, including every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures import official
from warmstart.data import load_dataset
from warmstart.data.movielens import load_movielens_1m, load_movielens_100k


def test_ml1m_counts_and_fields(tiny_data_dir: Path, tiny_counts: dict) -> None:
    ds = load_dataset("movielens-1m", tiny_data_dir)
    expected = tiny_counts["movielens-1m"]
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (
        expected["ratings"],
        expected["users"],
        expected["items"],
    )
    assert [f.name for f in ds.users.fields] == ["gender", "age", "occupation", "zip"]
    assert [f.name for f in ds.items.fields] == ["rate", "genre", "director", "actors"]
    assert "timestamp" in ds.interactions and ds.rating_range == (1.0, 5.0)
    actors = ds.items.fields[3]
    assert (
        actors.vocabulary is not None and "Acteur \u00c9mile" in actors.vocabulary
    )  # UTF-8 decoded
    row = int(np.searchsorted(ds.items.ids, 1))  # movie 1 has no extra info
    assert ds.items.fields[0].vocabulary[ds.items.fields[0].index[row, 0]] == "<unknown>"


def test_ml1m_csv_equals_dat(tmp_path: Path) -> None:
    official.write_movielens_1m(tmp_path / "dat", ratings_format="dat")
    official.write_movielens_1m(tmp_path / "csv", ratings_format="csv")
    a, b = load_movielens_1m(tmp_path / "dat"), load_movielens_1m(tmp_path / "csv")
    assert a.interactions.drop(columns="timestamp").equals(b.interactions)
    assert "timestamp" not in b.interactions
    assert np.array_equal(a.users.ids, b.users.ids) and np.array_equal(a.items.ids, b.items.ids)


def test_ml1m_without_extra_info(tmp_path: Path) -> None:
    official.write_movielens_1m(tmp_path, extra=False)
    ds = load_movielens_1m(tmp_path)
    assert [f.name for f in ds.items.fields] == ["genre"]


def test_ml100k(tiny_data_dir: Path, tiny_counts: dict) -> None:
    ds = load_movielens_100k(tiny_data_dir / "movielens-100k")
    expected = tiny_counts["movielens-100k"]
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (
        expected["ratings"],
        expected["users"],
        expected["items"],
    )
    assert [f.name for f in ds.items.fields] == ["decade", "genre"]


def _edit_line(path: Path, lineno: int, new: str, encoding: str = "latin-1") -> None:
    lines = path.read_text(encoding=encoding).split("\n")
    lines[lineno - 1] = new
    path.write_text("\n".join(lines), encoding=encoding)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("1::2::4", r"ratings\.dat: line 5: expected 4 fields, found 3"),
        (
            "1::2::four::978300760",
            r"ratings\.dat: line 5: field 'label' is not a finite number: 'four'",
        ),
        ("1::2::nan::978300760", r"ratings\.dat: line 5: field 'label' is not a finite number"),
        ("1::2::::978300760", r"ratings\.dat: line 5: field 'label' is missing"),
        (
            "1::99999::4::978300760",
            r"ratings\.dat: line 5: field 'item': id 99999 is not in .*movies\.dat",
        ),
        (
            "999::1::4::978300760",
            r"ratings\.dat: line 5: field 'user': id 999 is not in .*users\.dat",
        ),
        ("1::2::7::978300760", r"ratings\.dat: line 5: field 'rating' must be in \[1.0, 5.0\]"),
        ("1::2::4.5::978300760", None),  # half stars are valid ratings
    ],
)
def test_ml1m_bad_rating_lines(tmp_path: Path, line: str, pattern: str | None) -> None:
    official.write_movielens_1m(tmp_path)
    lines = (tmp_path / "ratings.dat").read_text(encoding="latin-1").split("\n")
    lines = [ln for ln in lines if not ln.startswith("1::2::")]
    lines[4] = line
    (tmp_path / "ratings.dat").write_text("\n".join(lines), encoding="latin-1")
    if pattern is None:
        assert load_movielens_1m(tmp_path).interactions["label"].max() <= 5
        return
    with pytest.raises(ValueError, match=pattern):
        load_movielens_1m(tmp_path)


def test_ml1m_duplicate_rating(tmp_path: Path) -> None:
    official.write_movielens_1m(tmp_path)
    path = tmp_path / "ratings.dat"
    lines = path.read_text(encoding="latin-1").split("\n")
    lines.insert(3, lines[1])
    path.write_text("\n".join(lines), encoding="latin-1")
    with pytest.raises(ValueError, match=r"ratings\.dat: line 4: duplicate rating"):
        load_movielens_1m(tmp_path)


def test_ml1m_wrong_encoding(tmp_path: Path) -> None:
    official.write_movielens_1m(tmp_path)
    path = tmp_path / "movies_extrainfos.dat"
    raw = path.read_bytes().split(b"\n")
    raw[2] = raw[2].replace(b"Movie", b"M\xe9vie", 1)  # a latin-1 byte in a UTF-8 file
    path.write_bytes(b"\n".join(raw))
    with pytest.raises(ValueError, match=r"movies_extrainfos\.dat: line 3: not valid utf-8"):
        load_movielens_1m(tmp_path)


def test_ml1m_bad_users_line(tmp_path: Path) -> None:
    official.write_movielens_1m(tmp_path)
    _edit_line(tmp_path / "users.dat", 3, "3::M::old::15::55117")
    with pytest.raises(
        ValueError, match=r"users\.dat: line 3: field 'Age' is not an integer: 'old'"
    ):
        load_movielens_1m(tmp_path)


def test_ml1m_missing_file(tmp_path: Path) -> None:
    official.write_movielens_1m(tmp_path)
    (tmp_path / "users.dat").unlink()
    with pytest.raises(FileNotFoundError, match=r"users\.dat: file not found"):
        load_movielens_1m(tmp_path)


def test_ml1m_bad_csv_header(tmp_path: Path) -> None:
    official.write_movielens_1m(tmp_path, ratings_format="csv")
    _edit_line(tmp_path / "ratings.csv", 1, "user,movie,stars")
    with pytest.raises(ValueError, match=r"ratings\.csv: line 1: header"):
        load_movielens_1m(tmp_path)


def test_ml100k_bad_genre_flags(tmp_path: Path) -> None:
    official.write_movielens_100k(tmp_path)
    lines = (tmp_path / "u.item").read_text(encoding="latin-1").split("\n")
    _edit_line(tmp_path / "u.item", 2, lines[1][:-1] + "x")
    with pytest.raises(ValueError, match=r"u\.item: line 2: genre flags"):
        load_movielens_100k(tmp_path)


def test_unknown_dataset_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("netflix", tmp_path)
    with pytest.raises(FileNotFoundError, match="warmstart data fetch"):
        load_dataset("movielens-1m", tmp_path)


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    official.write_movielens_1m(tmp_path / "a")
    (tmp_path / "a" / "ratings.dat").write_text("")
    with pytest.raises(ValueError, match=r"ratings\.dat: file is empty"):
        load_movielens_1m(tmp_path / "a")
    official.write_movielens_1m(tmp_path / "b", ratings_format="csv")
    (tmp_path / "b" / "ratings.csv").write_text("user_id,movie_id,rating\n")
    with pytest.raises(ValueError, match=r"ratings\.csv: no rating rows"):
        load_movielens_1m(tmp_path / "b")
