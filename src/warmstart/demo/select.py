"""Choose the served recommender on validation users, at the catalogue level.

Each candidate configuration runs the serving pipeline's steps in process (candidates over
the whole catalogue minus the support set, ranking, top 10) for every validation user's support
set; the targets are the user's held-out liked items (rating >= 4 on ML-1M). HR@10 and nDCG@10
are averaged over users; the configuration with the highest nDCG@10 is served, and the whole
table goes into ``demo.json``. The same steps answer the genre probe (horror vs children's
fans) that the tests assert on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

LIKE = 4.0  # ML-1M: a rating of 4 or 5 is a like


class Candidates(Protocol):
    def fit_users(self, supports: Sequence[Any]) -> np.ndarray: ...

    def candidates(self, users: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]: ...


class Ranker(Protocol):
    def adapt_many(self, supports: Sequence[Any]) -> list[Any]: ...

    def score_many(self, states: Sequence[Any], candidates: Sequence[np.ndarray]) -> list[Any]: ...


@dataclass(frozen=True)
class Option:
    """One served configuration: a candidate generator (``generator`` names the fitted one,
    e.g. ``knn-a0.7``), N, and whether the cold-start model reorders the candidates
    (``rank=False``: the candidate order is the answer)."""

    generator: str
    n_candidates: int
    rank: bool = True

    @property
    def candidates(self) -> str:
        return self.generator.split("-")[0]

    @property
    def name(self) -> str:
        return f"{self.generator} top-{self.n_candidates}" + (" -> ColdNAS" if self.rank else "")


def recommend_rows(
    gen: Candidates,
    ranker: Ranker | None,
    supports: Sequence[tuple[np.ndarray, np.ndarray]],
    n: int,
    k: int = 10,
) -> list[np.ndarray]:
    """The pipeline's steps for many users at once: top-``k`` dense rows per support set."""
    users = gen.fit_users(supports)
    width = n + max((len(r) for r, _ in supports), default=0)
    _, rows = gen.candidates(users, width)
    cands = [c[~np.isin(c, r)][:n] for c, (r, _) in zip(rows, supports, strict=True)]
    if ranker is None:
        return [c[:k] for c in cands]
    scores = ranker.score_many(ranker.adapt_many(list(supports)), cands)
    return [
        c[np.argsort(-np.asarray(s), kind="stable")[:k]] for c, s in zip(cands, scores, strict=True)
    ]


def catalogue_metrics(
    top: Sequence[np.ndarray], tasks: Sequence[Any], k: int = 10
) -> dict[str, float]:
    """HR@k and nDCG@k of top lists against each task's liked query items (users without a
    liked query item are skipped)."""
    hits, ndcgs = [], []
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for rows, task in zip(top, tasks, strict=True):
        liked = task.query_items[task.query_labels >= LIKE]
        if not liked.size:
            continue
        gains = np.isin(rows[:k], liked).astype(np.float64)
        ideal = discount[: min(liked.size, k)].sum()
        hits.append(float(gains.any()))
        ndcgs.append(float((gains * discount[: gains.size]).sum() / ideal))
    return {"HR@10": float(np.mean(hits)), "nDCG@10": float(np.mean(ndcgs)), "users": len(hits)}


def evaluate_options(
    options: Sequence[Option],
    generators: dict[str, Candidates],
    ranker: Ranker,
    tasks: Sequence[Any],
    probe: dict[str, np.ndarray] | None = None,
    genres: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """One row per option: its name, settings, catalogue metrics on ``tasks`` and, given a
    probe and the item genres, the probe report."""
    supports = [(t.support_items, t.support_labels) for t in tasks]
    rows = []
    for opt in options:
        gen, rank = generators[opt.generator], ranker if opt.rank else None
        top = recommend_rows(gen, rank, supports, opt.n_candidates)
        row = {"name": opt.name, **vars(opt), "candidates": opt.candidates}
        row.update(catalogue_metrics(top, tasks))
        if probe is not None and genres is not None:
            row["probe"] = probe_report(probe_lists(gen, rank, probe, opt.n_candidates), genres)
        rows.append(row)
    return rows


def best_option(table: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return max(table, key=lambda r: (r["nDCG@10"], r["HR@10"]))


def genre_shares(
    rows: np.ndarray, genres_of: Sequence[Sequence[str]], wanted: Sequence[str]
) -> float:
    """Fraction of ``rows`` having any genre in ``wanted``."""
    return (
        float(np.mean([any(g in wanted for g in genres_of[r]) for r in rows])) if len(rows) else 0.0
    )


HORROR = ("Horror",)
KIDS = ("Children's", "Animation")


def taste_probe(
    genres: Sequence[Sequence[str]], popularity: np.ndarray, size: int = 5
) -> dict[str, np.ndarray]:
    """Two contrasting new users, as dense rows of the ``size`` most-rated items of a taste:
    horror films (not for children) and children's animations (no horror)."""
    order = np.argsort(-np.asarray(popularity), kind="stable")

    def top(keep: Any) -> np.ndarray:
        return np.asarray([r for r in order if keep(set(genres[r]))][:size], dtype=np.int64)

    return {
        "horror": top(lambda g: "Horror" in g and not g & set(KIDS)),
        "children's animation": top(lambda g: set(KIDS) <= g and "Horror" not in g),
    }


def probe_lists(
    gen: Candidates, ranker: Ranker | None, probe: dict[str, np.ndarray], n: int
) -> dict[str, np.ndarray]:
    """Top-10 rows of each probe user rating all their items 5 stars."""
    supports = [(rows, np.full(rows.size, 5.0, np.float32)) for rows in probe.values()]
    return dict(zip(probe, recommend_rows(gen, ranker, supports, n), strict=True))


def probe_report(lists: dict[str, np.ndarray], genres: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Genre shares of the two probe users' lists and how many items they share."""
    horror, kids = lists["horror"], lists["children's animation"]
    return {
        "horror_fan": {
            "horror": genre_shares(horror, genres, HORROR),
            "kids": genre_shares(horror, genres, KIDS),
        },
        "kids_fan": {
            "horror": genre_shares(kids, genres, HORROR),
            "kids": genre_shares(kids, genres, KIDS),
        },
        "overlap": int(np.intersect1d(horror, kids).size),
    }


def personal(report: dict[str, Any], max_overlap: int) -> bool:
    """Each probe user's own taste dominates their list, and the lists barely overlap."""
    h, k = report["horror_fan"], report["kids_fan"]
    return bool(
        report["overlap"] <= max_overlap and h["horror"] > h["kids"] and k["kids"] > k["horror"]
    )


def choose(table: Sequence[dict[str, Any]], max_overlap: int) -> tuple[dict[str, Any], str]:
    """The served row: the best nDCG@10 among personal configurations (else the best overall),
    with the reason in words."""
    ok = [r for r in table if personal(r["probe"], max_overlap)]
    best = best_option(ok or table)
    why = (
        f"best validation nDCG@10 among the {len(ok)} of {len(table)} configurations whose "
        f"contrasting probe users share at most {max_overlap} of their top 10"
        if ok
        else "best validation nDCG@10; no configuration passed the personalisation probe"
    )
    return best, why
