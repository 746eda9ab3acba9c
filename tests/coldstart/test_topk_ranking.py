"""The ranking objective: the loss falls on data with a planted preference, and the trained
model recovers that preference where popularity cannot."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from warmstart.coldstart.ranking import RankingConfig, RankingObjective, catalogue_ndcg
from warmstart.coldstart.topk import (
    TOPK_KEYS,
    ColdNASRanker,
    MostPopular,
    evaluate_topk,
    support_only,
)
from warmstart.coldstart.training import PRESETS, FixedStructurePredictor
from warmstart.data.episodes import EpisodeConfig, build_episodes
from warmstart.data.types import EpisodeSplit, FeatureTable, RecDataset, collate_tasks

N_ITEMS = 40  # items 0..19 are "A", 20..39 are "B"


def planted_split(seed: int = 0) -> EpisodeSplit:
    """Two tastes: 35 % of users like A items, the rest B items (so B is more popular and
    popularity recommends B to everyone). Each user likes 12 items of their group and rated
    4 of the other group 0."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(240):
        group = 0 if u < 84 else 1
        own = np.arange(20) + 20 * group
        other = np.arange(20) + 20 * (1 - group)
        rows += [(u, int(i), 1.0) for i in rng.choice(own, 12, replace=False)]
        rows += [(u, int(i), 0.0) for i in rng.choice(other, 4, replace=False)]
    inter = pd.DataFrame(rows, columns=["user", "item", "label"]).astype(
        {"user": "int64", "item": "int64", "label": "float32"}
    )
    users = FeatureTable.one_hot_ids(np.arange(240))
    items = FeatureTable.one_hot_ids(np.arange(N_ITEMS))
    dataset = RecDataset("planted", inter, users, items, (0.0, 1.0))
    config = EpisodeConfig(min_interactions=13, max_interactions=40, query_size=6, seed=seed)
    return build_episodes(dataset, config)


@pytest.fixture(scope="module")
def planted() -> EpisodeSplit:
    return planted_split()


def _film(split: EpisodeSplit, config: RankingConfig, epochs: int) -> FixedStructurePredictor:
    preset = PRESETS["tiny"]
    train = replace(preset.train, epochs=epochs, lr=1e-2, batch_size=32)
    film = FixedStructurePredictor(None, preset.model, train, objective=config.factory())
    film.fit(split)
    return film


@pytest.mark.parametrize("loss", ["softmax", "bpr"])
def test_ranking_loss_falls_and_recovers_the_planted_preference(
    planted: EpisodeSplit, loss: str
) -> None:
    film = _film(planted, RankingConfig(loss=loss, negatives=16), epochs=25)
    assert film.result is not None
    losses = [h["train_loss"] for h in film.result.history]
    assert losses[-1] < 0.7 * losses[0]
    ranker = ColdNASRanker(film, fitted=True)
    tasks = [support_only(t) for t in planted.test]
    top = np.argsort(-ranker.score_catalogue(tasks), axis=1, kind="stable")
    own = []
    for t, row in zip(tasks, top, strict=True):
        liked = t.support_items[t.support_labels == 1]
        group = int(np.median(liked) >= 20)
        rest = [i for i in row if i not in set(t.support_items)][:5]
        own.append(np.mean([(i >= 20) == group for i in rest]))
    groups = [int(np.median(t.support_items[t.support_labels == 1]) >= 20) for t in tasks]
    assert 0 in groups and 1 in groups
    assert np.mean(own) > 0.9  # the top 5 come from the user's own group
    pop = MostPopular()
    pop.fit(planted)
    model_hr = evaluate_topk(ranker, planted.test, N_ITEMS, 1.0).per_user
    pop_hr = evaluate_topk(pop, planted.test, N_ITEMS, 1.0).per_user
    col = TOPK_KEYS.index("nDCG@10")
    assert model_hr[:, col].mean() > pop_hr[:, col].mean() + 0.1


def test_catalogue_ndcg_matches_the_protocol(planted: EpisodeSplit) -> None:
    film = _film(planted, RankingConfig(negatives=16), epochs=3)
    assert film.model is not None
    got = catalogue_ndcg(film.model, collate_tasks(planted.test), threshold=1.0)
    res = evaluate_topk(ColdNASRanker(film, fitted=True), planted.test, N_ITEMS, 1.0)
    assert got == pytest.approx(res.per_user[:, TOPK_KEYS.index("nDCG@10")].mean(), abs=1e-6)


def test_logq_softmax_with_uniform_proposal_is_plain_sampled_softmax(planted: EpisodeSplit) -> None:
    """Under a uniform proposal the logQ correction is a constant and cancels."""
    obj = RankingObjective.for_split(RankingConfig(proposal="uniform", negatives=8), planted)
    assert torch.allclose(obj.log_q, torch.full((N_ITEMS,), -np.log(N_ITEMS)), atol=1e-6)
    pop = RankingObjective.for_split(RankingConfig(), planted)
    assert pop.probs[20:].sum() > pop.probs[:20].sum()  # B is liked more often


def test_ranking_config_validates() -> None:
    with pytest.raises(ValueError, match="loss"):
        RankingConfig(loss="listwise")
    with pytest.raises(ValueError, match="rating_weight"):
        RankingConfig(rating_weight=1.0)
