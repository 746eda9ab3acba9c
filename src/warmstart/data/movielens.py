"""MovieLens loaders (GroupLens ML-1M and ML-100K), official file layouts.

ML-1M (Harper & Konstan, TiiS 2015): ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``,
latin-1) or the shipped ``ratings.csv`` (``user_id,movie_id,rating``, no timestamps) read as the
same table; ``users.dat`` (gender, age, occupation, zip); ``movies.dat`` (genres); and, when
present, ``movies_extrainfos.dat`` (IMDB rate, genres, director, actors), the item side
information MeLU (Lee et al., KDD 2019) and ColdNAS use on ML-1M.

ML-100K: ``u.data`` (tab-separated user, item, rating, timestamp), ``u.user``, ``u.item``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from warmstart.data.features import split_list
from warmstart.data.parsing import (
    Column,
    check_header,
    parse_int,
    read_delimited,
    read_fields,
    read_header,
)
from warmstart.data.tables import RawFeatures, assemble
from warmstart.data.types import RecDataset

LATIN1 = "latin-1"
RATING_RANGE = (1.0, 5.0)
ML1M_RATINGS_HEADERS = (
    ("user_id", "movie_id", "rating"),
    ("user_id", "movie_id", "rating", "timestamp"),
)
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip


def ml1m_rating_files(root: Path) -> list[Path]:
    """The ratings file the loader reads: ``ratings.dat`` if present, else ``ratings.csv``."""
    dat = root / "ratings.dat"
    return [dat] if dat.is_file() else [root / "ratings.csv"]


def read_ml1m_ratings(root: Path) -> tuple[pd.DataFrame, Path, int]:
    """Ratings with original ids: ``(frame, source file, line number of the first row)``."""
    path = ml1m_rating_files(root)[0]
    if path.name == "ratings.dat":
        columns = [Column("user"), Column("item"), Column("label", "float"), Column("timestamp")]
        frame = read_delimited(
            path, columns, sep="\t", header=False, encoding=LATIN1, source_sep="::"
        )
        return frame, path, 1
    if not path.is_file():
        raise FileNotFoundError(
            f"{root}: neither ratings.dat nor ratings.csv found (MovieLens-1M ratings)"
        )
    header = read_header(path, ",")
    check_header(path, header, ML1M_RATINGS_HEADERS)
    columns = [Column("user"), Column("item"), Column("label", "float")]
    if len(header) == 4:
        columns.append(Column("timestamp"))
    return read_delimited(path, columns, sep=",", header=True), path, 2


def _age_bucket(age: int) -> str:
    """ML-100K ages into the seven ML-1M age groups (1, 18, 25, 35, 45, 50, 56)."""
    edges = (18, 25, 35, 45, 50, 56)
    starts = ("1", "18", "25", "35", "45", "50", "56")
    return starts[int(np.searchsorted(edges, age, side="right"))]


def _zip_prefix(zip_code: str) -> str:
    """First character of the zip code when it is a digit (a coarse US region), else ``other``."""
    return zip_code[:1] if zip_code[:1].isdigit() else "other"


def read_ml1m_users(root: Path) -> RawFeatures:
    """``users.dat``: ``UserID::Gender::Age::Occupation::Zip-code``."""
    path = root / "users.dat"
    rows = read_fields(path, 5, "::", LATIN1)
    ids = np.array([parse_int(path, n, "UserID", p[0]) for n, p in rows], dtype=np.int64)
    for n, p in rows:
        parse_int(path, n, "Age", p[2])
        parse_int(path, n, "Occupation", p[3])
    _check_unique(path, ids, [n for n, _ in rows], "UserID")
    categorical = {
        "gender": [p[1] for _, p in rows],
        "age": [p[2] for _, p in rows],
        "occupation": [p[3] for _, p in rows],
        "zip": [_zip_prefix(p[4]) for _, p in rows],
    }
    return RawFeatures(ids, categorical, source=path)


def _check_unique(path: Path, ids: np.ndarray, linenos: list[int], field: str) -> None:
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        row = int(np.argmax(dup))
        raise ValueError(f"{path}: line {linenos[row]}: field {field!r}: duplicate id {ids[row]}")


def read_ml1m_items(root: Path) -> RawFeatures:
    """``movies.dat`` genres, merged with ``movies_extrainfos.dat`` when that file exists.

    Fields: ``genre`` (multi-hot, MovieLens and IMDB genres together), and with the extra file
    ``rate`` (categorical), ``director`` and ``actors`` (multi-hot). Movies the extra file lacks
    get the ``<unknown>`` value.
    """
    path = root / "movies.dat"
    rows = read_fields(path, 3, "::", LATIN1)
    ids = np.array([parse_int(path, n, "MovieID", p[0]) for n, p in rows], dtype=np.int64)
    _check_unique(path, ids, [n for n, _ in rows], "MovieID")
    genres = [split_list(p[2], "|") for _, p in rows]
    extra_path = root / "movies_extrainfos.dat"
    if not extra_path.is_file():
        return RawFeatures(ids, multi_hot={"genre": genres}, source=path)
    extra = _read_extrainfos(extra_path)
    info = [extra.get(int(i), ("<unknown>", [], [], [])) for i in ids]
    return RawFeatures(
        ids,
        categorical={"rate": [x[0] for x in info]},
        multi_hot={
            "genre": [
                g + [v for v in x[1] if v not in g] for g, x in zip(genres, info, strict=True)
            ],
            "director": [x[2] for x in info],
            "actors": [x[3] for x in info],
        },
        source=path,
    )


def _read_extrainfos(path: Path) -> dict[int, tuple[str, list[str], list[str], list[str]]]:
    """id → (rate, genres, directors, actors) from the 11-field, UTF-8 ``movies_extrainfos.dat``."""
    out = {}
    for n, p in read_fields(path, 11, "::", "utf-8"):
        rate = p[3].strip() if p[3].strip() not in ("", "N/A") else "<unknown>"
        out[parse_int(path, n, "id", p[0])] = (
            rate,
            split_list(p[5], ","),
            split_list(p[6], ","),
            split_list(p[8], ","),
        )
    return out


def load_movielens_1m(root: Path) -> RecDataset:
    """MovieLens-1M with user and item side features (see module docstring)."""
    ratings, source, first_line = read_ml1m_ratings(root)
    return assemble(
        "movielens-1m",
        ratings,
        source=source,
        first_line=first_line,
        rating_range=RATING_RANGE,
        users=read_ml1m_users(root),
        items=read_ml1m_items(root),
    )


def ml1m_files(root: Path) -> list[Path]:
    """Every file ``load_movielens_1m`` reads (for cache keys)."""
    names = ["users.dat", "movies.dat", "movies_extrainfos.dat"]
    return [*ml1m_rating_files(root), *(root / n for n in names if (root / n).is_file())]


def read_ml100k_users(root: Path) -> RawFeatures:
    """``u.user``: ``id|age|gender|occupation|zip``; ages bucketed like ML-1M."""
    path = root / "u.user"
    rows = read_fields(path, 5, "|", LATIN1)
    ids = np.array([parse_int(path, n, "user id", p[0]) for n, p in rows], dtype=np.int64)
    _check_unique(path, ids, [n for n, _ in rows], "user id")
    ages = [_age_bucket(parse_int(path, n, "age", p[1])) for n, p in rows]
    categorical = {
        "gender": [p[2] for _, p in rows],
        "age": ages,
        "occupation": [p[3] for _, p in rows],
        "zip": [_zip_prefix(p[4]) for _, p in rows],
    }
    return RawFeatures(ids, categorical, source=path)


def read_ml100k_items(root: Path) -> RawFeatures:
    """``u.item``: id, title, release date, video date, url, 19 genre flags; genre + decade."""
    path = root / "u.item"
    rows = read_fields(path, 5 + len(ML100K_GENRES), "|", LATIN1)
    ids = np.array([parse_int(path, n, "movie id", p[0]) for n, p in rows], dtype=np.int64)
    _check_unique(path, ids, [n for n, _ in rows], "movie id")
    genres = []
    for n, p in rows:
        flags = p[5:]
        if any(f not in ("0", "1") for f in flags):
            raise ValueError(f"{path}: line {n}: genre flags must be 0 or 1, got {'|'.join(flags)}")
        genres.append([g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1"])
    decades = [_decade(p[2]) for _, p in rows]
    return RawFeatures(ids, {"decade": decades}, {"genre": genres}, source=path)


def _decade(release_date: str) -> str:
    """``"01-Jan-1995"`` → ``"1990s"``; missing dates → ``<unknown>``."""
    match = re.search(r"(\d{4})$", release_date.strip())
    return f"{int(match.group(1)) // 10 * 10}s" if match else "<unknown>"


def load_movielens_100k(root: Path) -> RecDataset:
    """MovieLens-100K with user features (gender, age, occupation, zip) and item genre/decade."""
    path = root / "u.data"
    columns = [Column("user"), Column("item"), Column("label", "float"), Column("timestamp")]
    ratings = read_delimited(path, columns, sep="\t", header=False, encoding=LATIN1)
    return assemble(
        "movielens-100k",
        ratings,
        source=path,
        first_line=1,
        rating_range=RATING_RANGE,
        users=read_ml100k_users(root),
        items=read_ml100k_items(root),
    )


def ml100k_files(root: Path) -> list[Path]:
    """Every file ``load_movielens_100k`` reads (for cache keys)."""
    return [root / "u.data", root / "u.user", root / "u.item"]
