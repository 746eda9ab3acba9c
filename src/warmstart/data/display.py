"""Item display metadata (title, year, genres) of the named datasets, keyed by raw item id.

Never a model input: this is what a person reads beside a recommendation, and what an exported
model keeps in its ``items.json`` (see ``warmstart.coldstart.catalog.ItemInfo``). Sources:
ML-1M ``movies.dat`` (``MovieID::Title (Year)::Genre|Genre``), ML-100K ``u.item`` (title, release
date, 19 genre flags), HetRec Last.fm ``artists.dat`` (artist names). The ``lastfm-coldnas``
benchmark ships renumbered items without names, so it has none.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from warmstart.data.features import split_list
from warmstart.data.movielens import LATIN1, ML100K_GENRES
from warmstart.data.parsing import check_header, parse_int, read_fields, read_header

Display = tuple[tuple[str, ...], dict[int, dict[str, Any]]]
"""``(columns, {raw item id: {column: value}})``."""

_TITLE_YEAR = re.compile(r"^(.*\S)\s*\((\d{4})\)\s*$")


def split_title(text: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; no trailing year -> ``(text, None)``."""
    match = _TITLE_YEAR.match(text.strip())
    return (match.group(1), int(match.group(2))) if match else (text.strip(), None)


def _record(title_text: str, genres: list[str]) -> dict[str, Any]:
    title, year = split_title(title_text)
    return {"title": title, "year": year, "genres": genres}


def ml1m_display(root: Path) -> Display:
    path = root / "movies.dat"
    rows = read_fields(path, 3, "::", LATIN1)
    return ("title", "year", "genres"), {
        parse_int(path, n, "MovieID", p[0]): _record(p[1], split_list(p[2], "|")) for n, p in rows
    }


def ml100k_display(root: Path) -> Display:
    path = root / "u.item"
    out = {}
    for n, p in read_fields(path, 5 + len(ML100K_GENRES), "|", LATIN1):
        genres = [g for g, f in zip(ML100K_GENRES, p[5:], strict=True) if f == "1"]
        out[parse_int(path, n, "movie id", p[0])] = _record(p[1], genres)
    return ("title", "year", "genres"), out


def hetrec_display(root: Path) -> Display:
    path = root / "artists.dat"
    check_header(path, read_header(path, "\t"), [("id", "name", "url", "pictureURL")])
    rows = read_fields(path, 4, "\t")[1:]
    return ("title",), {parse_int(path, n, "id", p[0]): {"title": p[1]} for n, p in rows}


_READERS = {
    "movielens-1m": ("movielens-1m", ml1m_display),
    "movielens-100k": ("movielens-100k", ml100k_display),
    "lastfm-2k": ("lastfm-2k", hetrec_display),
}


def item_display(name: str, data_dir: Path) -> Display | None:
    """Display metadata of dataset ``name`` under ``data_dir``; None when it has none (or its
    file is absent: display data is optional, a model trains and serves without it)."""
    if name not in _READERS:
        return None
    folder, read = _READERS[name]
    root = data_dir / folder
    try:
        return read(root)
    except FileNotFoundError:
        return None
