"""``warmstart recommend``: top-k items for ratings typed on the command line.

``--rate "Toy Story=5" --rate 1=4``: each rating names an item by its raw id (a MovieLens
MovieID, an id from one's own CSV) or by its title (case-insensitive, year optional:
``"Toy Story (1995)"``; MovieLens's ``"Matrix, The"`` also matches ``"The Matrix"``). An
ambiguous or unknown title is a user error (exit code 2) that lists the candidates or the
closest titles.
"""

from __future__ import annotations

import argparse
import difflib
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.cli import positive_int
from warmstart.coldstart.inference import ColdStartRecommender, load_recommender
from warmstart.data.display import split_title

_ARTICLE = re.compile(r"^(.*), (the|a|an|les|la|le|il|el|der|die|das)$", re.IGNORECASE)


def normalise_title(title: str) -> str:
    """Lower case, MovieLens's trailing article moved to the front (``"Matrix, The"`` ->
    ``"the matrix"``), whitespace collapsed."""
    text = " ".join(title.split())
    match = _ARTICLE.match(text)
    if match:
        text = f"{match.group(2)} {match.group(1)}"
    return text.lower()


def _titles(rec: ColdStartRecommender) -> list[tuple[str, int | None]]:
    info = rec.item_info
    if info is None or "title" not in info.columns:
        return []
    t, y = info.columns.index("title"), info.columns.index("year") if "year" in info.columns else -1
    return [(str(r[t]), r[y] if y >= 0 else None) for r in info.rows]


def _label(title: str, year: int | None) -> str:
    return f"{title} ({year})" if year else title


def find_item(rec: ColdStartRecommender, key: str) -> int:
    """The item row a ``--rate`` key names: a raw id, else a title.

    Raises:
        ValueError: the title matches several items (they are listed) or none (the closest
            titles are suggested).
    """
    raw: Any = int(key) if re.fullmatch(r"-?\d+", key) and rec.item_ids.kind == "int" else key
    if raw in rec.item_ids:
        return int(rec.item_ids.to_rows([raw])[0])
    titles = _titles(rec)
    if not titles:
        raise ValueError(
            f"--rate {key!r}: not an item id of this model, and the model has no titles "
            f"(ids look like {', '.join(repr(i) for i in rec.item_ids.ids[:3])})"
        )
    name, year = split_title(key)
    wanted = normalise_title(name)
    rows = [
        r
        for r, (t, y) in enumerate(titles)
        if normalise_title(t) == wanted and (year is None or y == year)
    ]
    if len(rows) == 1:
        return rows[0]
    if rows:
        listed = "; ".join(f"{_label(*titles[r])} = id {rec.item_ids.ids[r]}" for r in rows[:10])
        raise ValueError(
            f"--rate {key!r}: the title matches {len(rows)} items: {listed}; "
            'add the year ("Title (1995)") or rate by id'
        )
    labels = [_label(t, y) for t, y in titles]
    close = difflib.get_close_matches(key, labels, n=5, cutoff=0.5)
    close = close or difflib.get_close_matches(key.lower(), [s.lower() for s in labels], n=5)
    hint = f"; did you mean: {'; '.join(close)}?" if close else ""
    raise ValueError(f"--rate {key!r}: no item with this title or id{hint}")


def parse_rating(text: str) -> tuple[str, float]:
    """``"Toy Story=5"`` -> ``("Toy Story", 5.0)`` (the last ``=`` splits)."""
    key, sep, value = text.rpartition("=")
    if not sep or not key.strip():
        raise ValueError(f'--rate {text!r}: expected ITEM=RATING, e.g. --rate "Toy Story=5"')
    try:
        return key.strip(), float(value)
    except ValueError:
        raise ValueError(f"--rate {text!r}: rating {value!r} is not a number") from None


def recommend(
    rec: ColdStartRecommender, ratings: list[tuple[str, float]], k: int
) -> tuple[list[dict[str, Any]], float]:
    """Top-``k`` unrated items (``describe`` records + ``score``) and the adapt+score time in ms."""
    rows = [find_item(rec, key) for key, _ in ratings]
    labels = [value for _, value in ratings]
    start = time.perf_counter()
    state = rec.adapt(np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=np.float32))
    scores = np.asarray(rec.score(state, np.arange(rec.n_items)), dtype=np.float64)
    scores[rows] = -np.inf  # never recommend what the user just rated
    top = np.argsort(-scores, kind="stable")[: min(k, rec.n_items - len(set(rows)))]
    ms = (time.perf_counter() - start) * 1000
    records = rec.describe(top)
    for record, row in zip(records, top, strict=True):
        record["score"] = float(scores[row])
    return records, ms


def _format(records: list[dict[str, Any]]) -> str:
    lines = [f"{'#':>3}  {'id':>8}  {'score':>6}  title (year)  genres"]
    for n, r in enumerate(records, 1):
        title = _label(r.get("title", "") or "", r.get("year"))
        genres = "|".join(r.get("genres", []) or [])
        lines.append(f"{n:>3}  {r['id']!s:>8}  {r['score']:6.3f}  {title}  {genres}".rstrip())
    return "\n".join(lines)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="an exported cold-start model folder (coldstart train/search/compare write one)",
    )
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="ITEM=RATING",
        help='a rating: title (year optional) or raw item id, e.g. "Toy Story=5" or 1=4; repeat',
    )
    parser.add_argument("--k", type=positive_int, default=10, help="how many items to print")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rec = load_recommender(args.model, threads=args.threads)
    ratings = [parse_rating(text) for text in args.rate]
    records, ms = recommend(rec, ratings, args.k)
    low, high = rec.rating_range
    print(f"top {len(records)} for {len(ratings)} rating(s) (scale {low:g}..{high:g}):")
    print(_format(records))
    print(f"adapt + score over {rec.n_items} items: {ms:.1f} ms")
    return 0
