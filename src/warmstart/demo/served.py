"""The served recommender, as the serving pipeline's ``RecommendModels``, per ``demo.json``.

``demo.json`` records which configuration won on validation users (``warmstart.demo.select``):
the candidate generator (``mf``: MF + ridge, ``knn``: item-kNN), N, and whether ColdNAS reorders
the candidates. When it does not, ``CandidateOrderRanker`` stands in the rank stage: it scores
each candidate by the generator's own score, so the pipeline's stages, store, batching and
shedding are unchanged. The ColdNAS model is always loaded: it holds the item id map, the
display info and the rating range the HTTP layer validates against.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

import numpy as np

from warmstart.coldstart.inference import load_recommender
from warmstart.coldstart.knn_inference import load_knn
from warmstart.coldstart.mf_inference import load_mf
from warmstart.serving.models import CandidateOrderRanker, ColdNASRanker, RecommendModels


def load_generator(root: Path, manifest: dict[str, Any], kind: str) -> Any:
    parts = manifest["parts"]
    return load_mf(root / parts["mf"]) if kind == "mf" else load_knn(root / parts["knn"])


def _raw(ids: Any) -> list[Any]:
    """Raw ids of an ``IdMap`` or of an id array, as a list."""
    return list(getattr(ids, "ids", np.asarray(ids).tolist()))


def load_served(root: Path, manifest: dict[str, Any]) -> RecommendModels:
    """The pipeline's models for the served choice in ``manifest`` (see the module docstring)."""
    served = manifest["served"]
    parts = manifest["parts"]
    coldnas = root / parts["coldnas"] / "model"
    rec = load_recommender(coldnas)
    generator = load_generator(root, manifest, served["candidates"])
    if _raw(generator.item_ids) != _raw(rec.item_ids):
        raise ValueError(
            f"{root}: the candidate generator's item ids differ from the ColdNAS model's"
        )
    ranker = ColdNASRanker(rec) if served["rank"] else CandidateOrderRanker(rec, generator)
    version = hashlib.sha1(json.dumps(served, sort_keys=True).encode())
    version.update((coldnas / "config.json").read_bytes())
    source = {
        "coldnas": str(coldnas),
        served["candidates"]: str(root / parts[served["candidates"]]),
    }
    return RecommendModels(ranker, cast(Any, generator), source, version.hexdigest()[:12])
