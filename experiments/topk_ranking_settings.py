"""Ranking-objective settings for fixed FiLM on one split, chosen on validation users.

Each variant trains ``FixedStructurePredictor`` with ``RankingConfig(...).factory()`` (defaults:
paper architecture, 40 epochs, lr 1e-3, batch 32, no weight decay, softmax, 256 negatives,
popularity proposal) and prints its best validation full-catalogue nDCG@10 with the test figures
(top-k protocol and rating protocol) for the record.

Usage: python experiments/topk_ranking_settings.py DATA_DIR DATASET SEED '[{"epochs": 80}, ...]'
Keys: epochs, lr, bs, wd, enc (set encoder), neg, power, w (rating weight), loss.
"""

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from warmstart.coldstart.evaluate import evaluate
from warmstart.coldstart.ranking import RankingConfig
from warmstart.coldstart.topk import (
    ColdNASRanker,
    evaluate_topk,
    like_threshold,
    popularity_counts,
    popularity_rank,
    taste_groups,
)
from warmstart.coldstart.training import PRESETS, FixedStructurePredictor
from warmstart.data import coldstart_split

torch.set_num_threads(1)
data_dir, name, seed, variants = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
split = coldstart_split(name, data_dir, seed, "melu", cache_dir=Path.home() / ".cache/warmstart")
thr = like_threshold(split.dataset.rating_range)
pop_rank = popularity_rank(popularity_counts(split, thr))
groups = taste_groups(split.test, split.dataset.items, thr)
for v in json.loads(variants):
    train = replace(
        PRESETS["paper"].train,
        epochs=v.get("epochs", 40),
        lr=v.get("lr", 1e-3),
        batch_size=v.get("bs", 32),
        weight_decay=v.get("wd", 0.0),
        seed=seed,
    )
    model = replace(PRESETS["paper"].model, set_encoder=v.get("enc", "paper"))
    ranking = RankingConfig(
        loss=v.get("loss", "softmax"),
        negatives=v.get("neg", 256),
        power=v.get("power", 1.0),
        rating_weight=v.get("w", 0.0),
    )
    film = FixedStructurePredictor(None, model, train, objective=ranking.factory())
    start = time.time()
    film.fit(split)
    assert film.result is not None
    res = evaluate_topk(
        ColdNASRanker(film, fitted=True), split.test, split.dataset.n_items, thr, pop_rank, groups
    ).means()
    rating = evaluate(film, split.test)
    print(
        json.dumps(v),
        f"fit {time.time() - start:.0f}s best_epoch {film.result.best_epoch} "
        f"valid_ndcg {-film.result.best_valid_mse:.4f} | test HR {res['HR@10']:.4f} "
        f"nDCG {res['nDCG@10']:.4f} R@50 {res['Recall@50']:.4f} ov {res['overlap@10']:.2f} "
        f"cov {res['coverage@10']:.3f} poprank {res['pop rank@10']:.0f} | MSE {rating['MSE']:.4f} "
        f"nDCG@3 {rating['nDCG@3']:.4f}",
        flush=True,
    )
