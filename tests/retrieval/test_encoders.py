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
    head_input_spread,
    load_backbone,
    load_encoder,
    pool,
    save_encoder,
    tokenize,
)
from warmstart.retrieval.encoding import (
    corpus_cache_key,
    encode_corpus_cached,
    encode_texts,
    length_sorted_batches,
    score_pairs,
)


def dual(path: Path, **kw) -> tuple[DualEncoder, object]:
    backbone, tok = load_backbone(path)
    return DualEncoder(backbone, DualEncoderConfig(**kw)).eval(), tok


@pytest.mark.parametrize(
    ("field", "value"),
    [("towers", "three"), ("pooling", "max"), ("similarity", "l2"), ("scale", 0.0)],
)
def test_dual_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DualEncoderConfig(**{field: value})


def test_cross_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="head"):
        CrossEncoderConfig(head="three_class")


def test_mean_pooling_ignores_padding() -> None:
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = pool(hidden, mask, "mean")
    assert torch.allclose(out[0], hidden[0, :2].mean(0))
    assert torch.allclose(out[1], hidden[1].mean(0))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])


def test_shared_towers_share_and_separate_do_not(tiny_backbone: Path) -> None:
    shared, _ = dual(tiny_backbone, towers="shared")
    separate, _ = dual(tiny_backbone, towers="separate")
    assert shared.query_tower is shared.passage_tower
    assert separate.query_tower is not separate.passage_tower
    frozen, _ = dual(tiny_backbone, train_passage_tower=False)
    assert not any(p.requires_grad for p in frozen.passage_tower.parameters())
    assert all(p.requires_grad for p in frozen.query_tower.parameters())


def test_cosine_vectors_are_unit_norm(tiny_backbone: Path, tiny_collection) -> None:
    model, tok = dual(tiny_backbone, similarity="cosine", pooling="mean")
    vecs = encode_texts(model, tok, tiny_collection.passages()[:5], side="passage")
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_batched_encoding_equals_one_by_one(tiny_backbone: Path, tiny_collection) -> None:
    model, tok = dual(tiny_backbone)
    texts = tiny_collection.passages()[:9]
    batched = encode_texts(model, tok, texts, side="passage", batch_size=4)
    single = np.concatenate([encode_texts(model, tok, [t], side="passage") for t in texts])
    assert np.allclose(batched, single, atol=1e-5)


def test_length_sorted_batches_cover_every_position_once() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = list(length_sorted_batches(lengths, 3))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_save_load_round_trip(tiny_backbone: Path, tmp_path: Path, tiny_collection) -> None:
    model, tok = dual(tiny_backbone, towers="separate", train_passage_tower=False)
    texts = list(tiny_collection.queries.values())[:3]
    save_encoder(model, tok, tmp_path / "dual")
    loaded, tok2 = load_encoder(tmp_path / "dual")
    assert isinstance(loaded, DualEncoder)
    assert loaded.config == model.config
    a = encode_texts(model, tok, texts, side="query")
    b = encode_texts(loaded, tok2, texts, side="query")
    assert np.allclose(a, b, atol=1e-6)


def test_cross_encoder_two_class_logit_is_log_odds(tiny_backbone: Path) -> None:
    backbone, tok = load_backbone(tiny_backbone)
    ce = CrossEncoder(backbone, CrossEncoderConfig(head="two_class")).eval()
    batch = tokenize(tok, ["a query"], 32, ["a passage"])
    with torch.no_grad():
        two = ce.class_logits(batch)
        assert torch.allclose(ce(batch), two[:, 1] - two[:, 0])


def test_cross_encoder_round_trip_and_batching(tiny_backbone: Path, tmp_path: Path) -> None:
    backbone, tok = load_backbone(tiny_backbone)
    ce = CrossEncoder(backbone, CrossEncoderConfig(head="one_logit")).eval()
    qs, ps = ["q one", "q two words", "q"], ["p", "p two", "p three words here"]
    full = score_pairs(ce, tok, qs, ps, batch_size=2)
    one = np.concatenate([score_pairs(ce, tok, [q], [p]) for q, p in zip(qs, ps, strict=True)])
    assert np.allclose(full, one, atol=1e-5)
    save_encoder(ce, tok, tmp_path / "ce")
    loaded, tok2 = load_encoder(tmp_path / "ce")
    assert np.allclose(score_pairs(loaded, tok2, qs, ps), full, atol=1e-6)


def test_corpus_cache_hits_and_keys_on_weights(
    tiny_backbone: Path, tmp_path: Path, tiny_collection
) -> None:
    model, tok = dual(tiny_backbone)
    texts = tiny_collection.passages()[:6]
    first = encode_corpus_cached(model, tok, texts, tmp_path)
    files = list(tmp_path.glob("corpus-*.safetensors"))
    assert len(files) == 1
    assert np.array_equal(encode_corpus_cached(model, tok, texts, tmp_path), first)
    key = corpus_cache_key(model, texts)
    assert corpus_cache_key(model, texts[:5]) != key
    with torch.no_grad():
        next(model.passage_tower.parameters()).add_(1.0)
    assert corpus_cache_key(model, texts) != key


def test_cross_encoder_pooling_is_validated_and_mean_ignores_padding(tiny_backbone: Path) -> None:
    with pytest.raises(ValueError, match="pooling"):
        CrossEncoderConfig(pooling="max")
    backbone, tok = load_backbone(tiny_backbone)
    ce = CrossEncoder(backbone, CrossEncoderConfig(head="one_logit", pooling="mean")).eval()
    qs, ps = ["q one", "q two words"], ["p", "p two three words here and more"]
    full = score_pairs(ce, tok, qs, ps, batch_size=2)
    one = np.concatenate([score_pairs(ce, tok, [q], [p]) for q, p in zip(qs, ps, strict=True)])
    assert np.allclose(full, one, atol=1e-5)


class _ConstantFirstToken(torch.nn.Module):
    """A backbone whose first token state is the same for every input (a collapsed [CLS])."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, **batch: torch.Tensor):
        out = self.inner(**batch)
        hidden = out.last_hidden_state.clone()
        hidden[:, 0] = 1.0
        out.last_hidden_state = hidden
        return out


def test_head_input_spread_flags_a_collapsed_cls_state(tiny_backbone: Path) -> None:
    """The first SciFact CE read a [CLS] state that was the same for every pair (all-MiniLM-L6-v2
    cut to 3 layers) and never learned; head_input_spread is the check that shows it."""
    backbone, tok = load_backbone(tiny_backbone)
    batch = tokenize(tok, ["q one", "q two words", "q"], 32, ["p", "p two", "p three words"])
    collapsed = CrossEncoder(_ConstantFirstToken(backbone), CrossEncoderConfig(pooling="cls"))
    assert head_input_spread(collapsed, batch) < 1e-6
    mean = CrossEncoder(_ConstantFirstToken(backbone), CrossEncoderConfig(pooling="mean"))
    assert head_input_spread(mean, batch) > 1e-3
    assert collapsed.training  # the check leaves the mode as it found it


def test_a_query_longer_than_the_pair_budget_is_cut_not_refused(tiny_backbone: Path) -> None:
    """Only-second truncation cannot fit a query longer than ``max_length``; the pair is then cut
    longest-first; pairs that fit keep only-second truncation (the query intact)."""
    _, tok = load_backbone(tiny_backbone)
    long_query = " ".join(["word"] * 40)
    batch = tokenize(tok, [long_query], 16, ["a passage of several words"])
    assert batch["input_ids"].shape == (1, 16)
    query = "a short query"
    short = tokenize(tok, [query], 16, [" ".join(["passage"] * 40)])
    alone = tok([query])["input_ids"][0]  # [CLS] query [SEP]
    assert short["input_ids"].shape == (1, 16)
    assert short["input_ids"][0, : len(alone)].tolist() == alone
