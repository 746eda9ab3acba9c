"""Cold-start episodes: each user becomes one task with a support set and a query set.

Protocols follow the papers the cold-start models come from:
- MeLU (Lee et al., KDD 2019), used by ColdNAS on MovieLens: users with 13..100 ratings; the
  query set is 10 random ratings, the support set is the rest.
- TaNP (Lin et al., WWW 2021), used by ColdNAS on Last.fm: support set of 20, query set the rest.
  The exact Last.fm episodes of TaNP/ColdNAS ship as ``tasks.jsonl``; ``load_official_lastfm``
  reads them as they are.

Users are split (seeded) into train/valid/test before tasks are cut, so the three splits have
disjoint users: test users are cold-start users the model never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from warmstart.data.types import EpisodeSplit, RecDataset, Task

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class EpisodeConfig:
    """How to turn a dataset into cold-start tasks.

    Attributes:
        train_ratio / valid_ratio / test_ratio: user fractions per split (sum to 1).
        min_interactions / max_interactions: users outside this inclusive range give no task
            (they still belong to a split, so baselines may learn from train users' data).
        support_size: support set size; None = all but the query.
        query_size: query set size; None = all but the support.
        seed: seeds the user split and the shuffle of each user's interactions.
    """

    train_ratio: float = 0.7
    valid_ratio: float = 0.1
    test_ratio: float = 0.2
    min_interactions: int = 13
    max_interactions: int = 100
    support_size: int | None = None
    query_size: int | None = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_ratio", "valid_ratio", "test_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"EpisodeConfig.{name} must be in [0, 1], got {value}")
        total = self.train_ratio + self.valid_ratio + self.test_ratio
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"EpisodeConfig: train/valid/test ratios must sum to 1, got {total}")
        if self.support_size is None and self.query_size is None:
            raise ValueError("EpisodeConfig: set support_size or query_size (or both), not neither")
        for name in ("support_size", "query_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"EpisodeConfig.{name} must be >= 1 or None, got {value}")
        needed = (self.support_size or 1) + (self.query_size or 1)
        if self.min_interactions < needed:
            raise ValueError(
                f"EpisodeConfig.min_interactions must be >= support + query = {needed}, "
                f"got {self.min_interactions}"
            )
        if self.max_interactions < self.min_interactions:
            raise ValueError(
                f"EpisodeConfig.max_interactions must be >= min_interactions "
                f"({self.min_interactions}), got {self.max_interactions}"
            )

    @classmethod
    def melu(cls, seed: int = 0) -> EpisodeConfig:
        """MeLU protocol: users with 13..100 ratings, query 10, support the rest."""
        return cls(min_interactions=13, max_interactions=100, query_size=10, seed=seed)

    @classmethod
    def tanp(cls, seed: int = 0) -> EpisodeConfig:
        """TaNP protocol: support 20, query the rest; 30..200 interactions (query >= 10)."""
        return cls(
            min_interactions=30,
            max_interactions=200,
            support_size=20,
            query_size=None,
            seed=seed,
        )

    def sizes(self, n: int) -> tuple[int, int]:
        """``(support, query)`` sizes for a user with ``n`` interactions."""
        if self.support_size is not None and self.query_size is not None:
            return self.support_size, self.query_size
        if self.support_size is not None:
            return self.support_size, n - self.support_size
        assert self.query_size is not None
        return n - self.query_size, self.query_size


def split_users(
    users: np.ndarray, config: EpisodeConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle ``users`` and cut them by the config's ratios into train/valid/test (sorted)."""
    shuffled = rng.permutation(users)
    n_train = round(len(users) * config.train_ratio)
    n_valid = round(len(users) * config.valid_ratio)
    if config.test_ratio == 0.0:  # rounding must not leave a stray test user
        n_valid = len(users) - n_train
    cuts = np.split(shuffled, [n_train, min(n_train + n_valid, len(users))])
    return [np.sort(part).astype(np.int64) for part in cuts]


def build_episodes(dataset: RecDataset, config: EpisodeConfig) -> EpisodeSplit:
    """Seeded user-level split and one task per eligible user.

    Eligible users (``min_interactions <= n <= max_interactions``) and the rest are split
    separately with the same ratios, so task counts follow the ratios. Each user's interactions are
    shuffled (seeded); the first ``support`` form the support set, the next ``query`` the query set.

    Raises:
        ValueError: no eligible users, or a split with a non-zero ratio gets no task.
    """
    rng = np.random.default_rng(config.seed)
    inter = dataset.interactions
    users = inter["user"].to_numpy(np.int64)
    # One int64 sort key: user in the high bits, a random tie-breaker in the low 32 bits, so
    # rows end up grouped by user and shuffled within each user (much faster than lexsort).
    key = (users << 32) | rng.integers(0, 1 << 32, size=len(users), dtype=np.int64)
    order = np.argsort(key, kind="stable")
    users = users[order]
    items = inter["item"].to_numpy(np.int64)[order]
    labels = inter["label"].to_numpy(np.float32)[order]
    uniq, starts, counts = np.unique(users, return_index=True, return_counts=True)
    eligible = (counts >= config.min_interactions) & (counts <= config.max_interactions)
    if not eligible.any():
        raise ValueError(
            f"{dataset.name}: no user has {config.min_interactions}..{config.max_interactions} "
            f"interactions (EpisodeConfig.min_interactions/max_interactions)"
        )
    task_users = split_users(uniq[eligible], config, rng)
    other_users = split_users(uniq[~eligible], config, rng)
    position = {int(u): i for i, u in enumerate(uniq)}
    splits: list[list[Task]] = []
    for name, part in zip(SPLITS, task_users, strict=True):
        if len(part) == 0 and getattr(config, f"{name}_ratio") > 0:
            raise ValueError(
                f"{dataset.name}: EpisodeConfig.{name}_ratio={getattr(config, f'{name}_ratio')} "
                f"leaves the {name} split empty ({int(eligible.sum())} eligible users)"
            )
        rows = [position[int(u)] for u in part]
        splits.append(
            [_cut(int(uniq[r]), starts[r], counts[r], items, labels, config) for r in rows]
        )
    split_of = [
        np.union1d(a, b).astype(np.int64) for a, b in zip(task_users, other_users, strict=True)
    ]
    meta = {
        "protocol": "build_episodes",
        "config": asdict(config),
        "eligible_users": int(eligible.sum()),
    }
    train_u, valid_u, test_u = split_of
    return EpisodeSplit(splits[0], splits[1], splits[2], train_u, valid_u, test_u, dataset, meta)


def _cut(
    user: int, start: int, n: int, items: np.ndarray, labels: np.ndarray, config: EpisodeConfig
) -> Task:
    s, q = config.sizes(int(n))
    sl, ql = slice(start, start + s), slice(start + s, start + s + q)
    return Task(user, items[sl].copy(), labels[sl].copy(), items[ql].copy(), labels[ql].copy())


def load_official_lastfm(data_dir: Path) -> EpisodeSplit:
    """The exact TaNP/ColdNAS Last.fm episodes (248 / 35 / 66 tasks) and user split.

    Args:
        data_dir: the data directory holding ``lastfm-coldnas/`` (or that folder itself).
    """
    from warmstart.data.lastfm import load_coldnas_tasks, load_lastfm_coldnas

    root = data_dir if (data_dir / "tasks.jsonl").is_file() else data_dir / "lastfm-coldnas"
    dataset = load_lastfm_coldnas(root)
    tasks, split_users_ = load_coldnas_tasks(root, dataset)
    meta: dict[str, object] = {"protocol": "official-lastfm", "source": str(root)}
    train_u, valid_u, test_u = split_users_
    return EpisodeSplit(
        tasks["train"], tasks["valid"], tasks["test"], train_u, valid_u, test_u, dataset, meta
    )


def task_counts(split: EpisodeSplit) -> dict[str, int]:
    """Number of tasks per split, e.g. for summaries."""
    return {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)}


def concat_tasks(splits: Sequence[list[Task]]) -> list[Task]:
    """All tasks of several splits in order."""
    return [t for part in splits for t in part]
