"""Choosing the served recommender: catalogue metrics, the taste probe, the choice rule."""

from __future__ import annotations

import numpy as np

from warmstart.data.types import Task
from warmstart.demo.explain import ItemSimilarity
from warmstart.demo.select import catalogue_metrics, choose, personal, taste_probe


def _task(query: list[int], labels: list[float]) -> Task:
    e = np.zeros(0, np.int64)
    return Task(0, e, e.astype(np.float32), np.asarray(query), np.asarray(labels, np.float32))


def test_catalogue_metrics_count_only_liked_items() -> None:
    tasks = [_task([5, 7], [5.0, 2.0]), _task([9], [4.0]), _task([1], [1.0])]
    top = [np.array([7, 5, 3]), np.array([0, 1, 2]), np.array([1])]
    m = catalogue_metrics(top, tasks)
    assert m["users"] == 2  # the third user liked nothing
    assert m["HR@10"] == 0.5
    assert np.isclose(m["nDCG@10"], (1 / np.log2(3)) / 2)


def test_taste_probe_picks_the_most_rated_of_each_taste() -> None:
    genres = [["Horror"], ["Horror", "Children's"], ["Animation", "Children's"], ["Drama"]]
    probe = taste_probe(genres, np.array([5, 9, 3, 8]), size=5)
    assert probe["horror"].tolist() == [0]  # item 1 is for children too
    assert probe["children's animation"].tolist() == [2]


def test_choice_prefers_personal_configurations() -> None:
    flat = {"horror_fan": {"horror": 0.0, "kids": 0.2}, "kids_fan": {"horror": 0.0, "kids": 0.2}}
    sharp = {"horror_fan": {"horror": 0.6, "kids": 0.0}, "kids_fan": {"horror": 0.0, "kids": 0.7}}
    table = [
        {"name": "popular", "nDCG@10": 0.3, "HR@10": 0.5, "probe": {**flat, "overlap": 9}},
        {"name": "personal", "nDCG@10": 0.2, "HR@10": 0.4, "probe": {**sharp, "overlap": 0}},
    ]
    assert not personal(table[0]["probe"], 2) and personal(table[1]["probe"], 2)
    best, why = choose(table, 2)
    assert best["name"] == "personal" and "1 of 2" in why


def test_why_names_the_most_similar_liked_item() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    whys = ItemSimilarity(vectors).why(np.array([0, 1]), np.array([5.0, 1.0]), np.array([2, 3]))
    assert [w.rated_row for w in whys] == [0, 0]  # item 1 was disliked: it explains nothing
    assert whys[0].similarity > whys[1].similarity
    assert ItemSimilarity(vectors).why(np.zeros(0, int), np.zeros(0), np.array([2])) == [None]
