"""RoutedTransformer: causality, exit shapes, exit selection, one trunk pass."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model_config

from routed.model import RoutedTransformer

B, T = 2, 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RoutedTransformer(tiny_model_config()).eval()


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, 300, (B, T), generator=torch.Generator().manual_seed(1))


def test_every_exit_has_shape_b_t_v(model, idx):
    with torch.no_grad():
        logits = model(idx)
    assert list(logits) == [1, 2, 3]
    for layer, value in logits.items():
        assert value.shape == (B, T, 300), layer
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("exits", [[1, 3], [3, 1], [2], [3], [1, 1, 3]])
def test_forward_returns_exactly_the_requested_exits(model, idx, exits):
    with torch.no_grad():
        logits = model(idx, exits=exits)
        everything = model(idx)
    assert set(logits) == set(exits)
    for layer in logits:  # asking for fewer exits does not change an exit's logits
        torch.testing.assert_close(logits[layer], everything[layer], rtol=0, atol=1e-6)


@pytest.mark.parametrize("exits", [[0], [4], [1, 4], [-1], []])
def test_exits_out_of_range_raise(model, idx, exits):
    with pytest.raises(ValueError, match=r"exits must be within 1\.\.3"):
        model(idx, exits=exits)


def test_sequence_longer_than_the_context_raises(model):
    with pytest.raises(ValueError, match="context_length=16"):
        model(torch.zeros(1, T + 1, dtype=torch.long))


def test_shorter_sequences_work(model):
    with torch.no_grad():
        logits = model(torch.zeros(3, 5, dtype=torch.long))
    assert logits[3].shape == (3, 5, 300)


@pytest.mark.parametrize("position", [0, 5, T - 1])
def test_a_future_token_never_changes_earlier_logits(model, idx, position):
    changed = idx.clone()
    changed[:, position] = (changed[:, position] + 1) % 300
    with torch.no_grad():
        before, after = model(idx), model(changed)
    for layer in before:
        # Earlier positions: bit-identical. The changed position itself must differ (the test has teeth).
        assert torch.equal(before[layer][:, :position], after[layer][:, :position]), layer
        assert not torch.allclose(before[layer][:, position], after[layer][:, position]), layer


def test_causality_holds_with_dropout_in_training_mode():
    torch.manual_seed(0)
    model = RoutedTransformer(tiny_model_config(dropout=0.2)).train()
    idx = torch.randint(0, 300, (1, T), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 7) % 300
    torch.manual_seed(5)
    before = model(idx)
    torch.manual_seed(5)
    after = model(changed)
    for layer in before:
        assert torch.equal(before[layer][:, :9], after[layer][:, :9]), layer


def test_head_is_tied_and_shared_by_every_exit(model, idx):
    assert model.lm_head.weight is model.tok_emb.weight
    with torch.no_grad():
        features = model.exit_features(idx)
        logits = model(idx)
    for layer, h in features.items():
        assert h.shape == (B, T, 32)
        torch.testing.assert_close(model.lm_head(h), logits[layer], rtol=0, atol=0)
    hidden = torch.randn(B, T, 32)
    torch.testing.assert_close(model.head(hidden), model.lm_head(model.ln_f(hidden)), rtol=0, atol=0)


def test_only_the_blocks_up_to_the_deepest_exit_run(idx):
    torch.manual_seed(0)
    model = RoutedTransformer(tiny_model_config()).eval()
    calls = []
    for i, block in enumerate(model.blocks, start=1):
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
    with torch.no_grad():
        model(idx, exits=[1, 2])
    assert calls == [1, 2]  # one trunk pass, stopping at the deepest requested exit
    calls.clear()
    with torch.no_grad():
        model(idx)
    assert calls == [1, 2, 3]


def test_same_seed_same_initial_weights():
    torch.manual_seed(3)
    a = RoutedTransformer(tiny_model_config())
    torch.manual_seed(3)
    b = RoutedTransformer(tiny_model_config())
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert a.num_parameters() == sum(p.numel() for p in a.parameters())
