from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from warmstart.retrieval.encoders import (
    CrossEncoder,
    CrossEncoderConfig,
    DualEncoder,
    DualEncoderConfig,
    load_backbone,
)
from warmstart.retrieval.encoding import encode_texts
from warmstart.retrieval.evaluation import evaluate_rows, exact_index
from warmstart.retrieval.mining import labelled_examples, positive_rows
from warmstart.retrieval.training import (
    TrainConfig,
    TrainExample,
    cross_encoder_groups,
    epoch_batches,
    listwise_loss,
    sample_negatives,
    train_cross_encoder,
    train_dual_encoder,
)

CFG = DualEncoderConfig(pooling="mean", similarity="cosine", scale=20.0, passage_max_length=48)


def examples(collection) -> list[TrainExample]:
    rows = {d: i for i, d in enumerate(collection.doc_ids)}
    qrels = collection.qrels["train"]
    return labelled_examples(collection.queries, positive_rows(list(qrels), qrels, rows))


def fresh(path: Path, config: DualEncoderConfig = CFG) -> tuple[DualEncoder, object]:
    backbone, tok = load_backbone(path)
    return DualEncoder(backbone, config), tok


def test_train_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        TrainConfig(warmup_ratio=1.5)


def test_epoch_batches_are_full_disjoint_and_seeded() -> None:
    batches = epoch_batches(23, 5, seed=3, epoch=1)
    flat = np.concatenate(batches)
    assert len(batches) == 4 and len(set(flat.tolist())) == 20
    assert all(
        np.array_equal(a, b) for a, b in zip(batches, epoch_batches(23, 5, 3, 1), strict=True)
    )
    with pytest.raises(ValueError, match="cannot fill"):
        epoch_batches(3, 5, 0, 0)


def test_random_negatives_avoid_the_positive() -> None:
    rng = np.random.default_rng(0)
    ex = TrainExample("q", "text", positive=1)
    assert all(n != 1 for n in sample_negatives(ex, 50, 3, rng))
    pooled = TrainExample("q", "text", positive=1, negatives=(4, 5))
    assert set(sample_negatives(pooled, 10, 100, rng)) <= {4, 5}


def test_training_improves_retrieval_of_the_training_queries(
    tiny_backbone: Path, tiny_collection
) -> None:
    def ndcg(model: DualEncoder, tok: object) -> float:
        corpus = encode_texts(model, tok, tiny_collection.passages(), side="passage")
        queries = tiny_collection.split_queries("train")
        ids = sorted(queries)
        vecs = encode_texts(model, tok, [queries[q] for q in ids], side="query")
        _, rows = exact_index(corpus).search(vecs, 10)
        return evaluate_rows(ids, rows, tiny_collection.doc_ids, tiny_collection.qrels["train"])[
            "nDCG@10"
        ]

    model, tok = fresh(tiny_backbone)
    before = ndcg(model, tok)
    train_dual_encoder(
        model,
        tok,
        examples(tiny_collection),
        tiny_collection.passages(),
        TrainConfig(epochs=6, batch_size=5, lr=2e-3),
    )
    assert ndcg(model, tok) > before


def test_resumed_training_equals_uninterrupted(
    tiny_backbone: Path, tiny_collection, tmp_path: Path
) -> None:
    data, passages = examples(tiny_collection), tiny_collection.passages()
    full_cfg = TrainConfig(epochs=2, batch_size=5, lr=1e-3, checkpoint_every=1)
    straight, tok = fresh(tiny_backbone)
    train_dual_encoder(straight, tok, data, passages, full_cfg)
    # "interrupt" after epoch 1: a 1-epoch run leaves its checkpoint at step 4 ...
    first, _ = fresh(tiny_backbone)
    steps_per_epoch = len(epoch_batches(len(data), 5, 0, 0))
    state = train_dual_encoder(first, tok, data, passages, full_cfg, workdir=tmp_path)
    assert state.step == 2 * steps_per_epoch
    # ... resume in a fresh process-like model from a checkpoint taken mid-run
    mid = tmp_path / "mid"
    partial, _ = fresh(tiny_backbone)
    cut = TrainConfig(epochs=2, batch_size=5, lr=1e-3, checkpoint_every=steps_per_epoch)

    class Stop(Exception):
        pass

    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def stopping_step(self, *a, **k):  # crash right after the epoch-1 checkpoint
        calls["n"] += 1
        if calls["n"] > steps_per_epoch:
            raise Stop
        return real_step(self, *a, **k)

    torch.optim.AdamW.step = stopping_step  # type: ignore[method-assign]
    try:
        with pytest.raises(Stop):
            train_dual_encoder(partial, tok, data, passages, cut, workdir=mid)
    finally:
        torch.optim.AdamW.step = real_step  # type: ignore[method-assign]
    resumed, _ = fresh(tiny_backbone)
    state = train_dual_encoder(resumed, tok, data, passages, cut, workdir=mid)
    assert state.step == 2 * steps_per_epoch
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_grad_cache_training_equals_plain_training(tiny_backbone: Path, tiny_collection) -> None:
    data, passages = examples(tiny_collection), tiny_collection.passages()
    plain, tok = fresh(tiny_backbone)
    cached, _ = fresh(tiny_backbone)
    cfg = TrainConfig(epochs=1, batch_size=10, lr=1e-3)
    train_dual_encoder(plain, tok, data, passages, cfg)
    train_dual_encoder(
        cached,
        tok,
        data,
        passages,
        TrainConfig(epochs=1, batch_size=10, lr=1e-3, grad_cache_chunk=3),
    )
    for a, b in zip(plain.parameters(), cached.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_frozen_passage_tower_uses_cached_vectors_and_stays_fixed(
    tiny_backbone: Path, tiny_collection
) -> None:
    cfg = DualEncoderConfig(
        pooling="mean",
        similarity="cosine",
        scale=20.0,
        passage_max_length=48,
        train_passage_tower=False,
    )
    model, tok = fresh(tiny_backbone, cfg)
    passages = tiny_collection.passages()
    corpus = encode_texts(model, tok, passages, side="passage")
    before = [p.clone() for p in model.passage_tower.parameters()]
    q_before = [p.clone() for p in model.query_tower.parameters()]
    train_dual_encoder(
        model,
        tok,
        examples(tiny_collection),
        passages,
        TrainConfig(epochs=1, batch_size=5, lr=1e-3),
        passage_embeddings=corpus,
    )
    assert all(
        torch.equal(a, b) for a, b in zip(before, model.passage_tower.parameters(), strict=True)
    )
    assert not all(
        torch.equal(a, b) for a, b in zip(q_before, model.query_tower.parameters(), strict=True)
    )


def test_cross_encoder_learns_to_separate_positives(tiny_backbone: Path, tiny_collection) -> None:
    from warmstart.retrieval.encoding import score_pairs

    backbone, tok = load_backbone(tiny_backbone)
    ce = CrossEncoder(backbone, CrossEncoderConfig(max_length=64))
    data, passages = examples(tiny_collection), tiny_collection.passages()
    train_cross_encoder(
        ce, tok, data, passages, TrainConfig(epochs=8, batch_size=8, lr=2e-3, negatives_per_query=1)
    )
    pos = score_pairs(ce, tok, [e.query for e in data], [passages[e.positive] for e in data])
    neg = score_pairs(
        ce, tok, [e.query for e in data], [passages[(e.positive + 7) % len(passages)] for e in data]
    )
    assert (pos > neg).mean() > 0.7


def test_cross_loss_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="cross_loss"):
        TrainConfig(cross_loss="pairwise")
    with pytest.raises(ValueError, match="listwise"):
        TrainConfig(cross_loss="listwise", negatives_per_query=0)


def test_listwise_loss_is_softmax_cross_entropy_with_the_positive_first() -> None:
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, -1.0]])
    expected = -torch.log_softmax(scores, dim=1)[:, 0].mean()
    assert torch.allclose(listwise_loss(scores), expected)
    # the positive (column 0) gets pushed up, every negative down
    s = scores.clone().requires_grad_(True)
    listwise_loss(s).backward()
    assert s.grad is not None
    assert (s.grad[:, 0] < 0).all() and (s.grad[:, 1:] > 0).all()


def test_listwise_groups_put_the_positive_first_and_draw_from_the_pool() -> None:
    exs = [TrainExample("q", "q", 3, (5, 6, 7)), TrainExample("r", "r", 4)]
    groups = cross_encoder_groups(exs, 2, 50, np.random.default_rng(0))
    assert [g[0] for g in groups] == [3, 4]
    assert set(groups[0][1:]) <= {5, 6, 7} and len(groups[0]) == 3
    assert 4 not in groups[1][1:] and len(groups[1]) == 3


def test_listwise_cross_encoder_learns_to_rank_positives_first(
    tiny_backbone: Path, tiny_collection
) -> None:
    from warmstart.retrieval.encoding import score_pairs

    backbone, tok = load_backbone(tiny_backbone)
    ce = CrossEncoder(backbone, CrossEncoderConfig(max_length=64))
    data, passages = examples(tiny_collection), tiny_collection.passages()
    config = TrainConfig(
        epochs=8, batch_size=4, lr=2e-3, negatives_per_query=3, cross_loss="listwise"
    )
    state = train_cross_encoder(ce, tok, data, passages, config)
    assert state.step == 8 * (len(data) // 4)
    assert np.mean(state.losses[-4:]) < np.mean(state.losses[:4])
    pos = score_pairs(ce, tok, [e.query for e in data], [passages[e.positive] for e in data])
    neg = score_pairs(
        ce, tok, [e.query for e in data], [passages[(e.positive + 7) % len(passages)] for e in data]
    )
    assert (pos > neg).mean() > 0.7
