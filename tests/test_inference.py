"""Sparse execution and generation: agreement with the dense model where they must agree."""

import pytest
import torch

from routed.config import ModelConfig
from routed.inference import generate, routed_forward
from routed.model import RoutedTransformer
from routed.routing import confidence, route


@pytest.fixture(scope="module")
def sharp_model():
    """A random tiny model with scaled-up weights, so confidences spread over (0, 1)."""
    torch.manual_seed(0)
    model = RoutedTransformer(ModelConfig(vocab_size=300, n_layers=3, d_model=32, n_heads=2, context_length=16))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    return torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(1))


def median_confidence(model, x) -> float:
    with torch.no_grad():
        return float(confidence(model(x, exits=[1])[1]).median())


def test_sparse_equals_dense_when_every_token_goes_deep(sharp_model, batch):
    dense = routed_forward(sharp_model, batch, 1.0, "dense")
    sparse = routed_forward(sharp_model, batch, 1.0, "sparse")
    assert (dense.exit_layer == 3).all()
    torch.testing.assert_close(sparse.logits, dense.logits, rtol=0, atol=1e-5)


def test_sparse_equals_dense_when_every_token_exits(sharp_model, batch):
    dense = routed_forward(sharp_model, batch, 0.0, "dense")
    sparse = routed_forward(sharp_model, batch, 0.0, "sparse")
    assert (sparse.exit_layer == 1).all()
    assert torch.equal(sparse.logits, dense.logits)
    assert torch.equal(sparse.logits, sharp_model(batch, exits=[1])[1])


def test_mixed_routing_agrees_on_exited_tokens_and_differs_on_deep_ones(sharp_model, batch):
    t = median_confidence(sharp_model, batch)
    dense = routed_forward(sharp_model, batch, t, "dense")
    sparse = routed_forward(sharp_model, batch, t, "sparse")
    assert torch.equal(dense.exit_layer, sparse.exit_layer)  # layer 1 is exact in both modes
    shallow = dense.exit_layer == 1
    assert 0 < shallow.float().mean() < 1
    assert torch.equal(dense.logits[shallow], sparse.logits[shallow])
    # deep tokens attend to propagated (not computed) states of exited tokens in sparse mode
    assert not torch.allclose(dense.logits[~shallow], sparse.logits[~shallow])


def test_dense_mode_is_the_routing_rule_applied_to_a_full_forward(sharp_model, batch):
    t = median_confidence(sharp_model, batch)
    chosen, shallow = route(sharp_model(batch, exits=[1, 3]), t)
    dense = routed_forward(sharp_model, batch, t, "dense")
    assert torch.equal(dense.logits, chosen)
    assert torch.equal(dense.exit_layer == 1, shallow)


def test_plain_mode_is_the_last_layer(sharp_model, batch):
    plain = routed_forward(sharp_model, batch, None, "plain")
    assert torch.equal(plain.logits, sharp_model(batch, exits=[3])[3])


def test_multi_exit_leaves_at_the_first_confident_exit(sharp_model, batch):
    t = median_confidence(sharp_model, batch)
    out = routed_forward(sharp_model, batch, t, "dense", exits=[1, 2, 3])
    logits = sharp_model(batch)
    c1, c2 = confidence(logits[1]), confidence(logits[2])
    expected = torch.where(c1 >= t, 1, torch.where(c2 >= t, 2, 3))
    assert torch.equal(out.exit_layer, expected)


@pytest.mark.parametrize("mode", ["dense", "sparse", "plain"])
def test_cached_generation_equals_uncached_greedy(sharp_model, batch, mode):
    t = median_confidence(sharp_model, batch)
    # 40 new tokens on a 16-token context: the window restarts several times
    cached = generate(sharp_model, [1, 2, 3], 40, t, mode)
    uncached = generate(sharp_model, [1, 2, 3], 40, t, mode, use_cache=False)
    assert [g.token_id for g in cached.tokens] == [g.token_id for g in uncached.tokens]
    assert [g.exit_layer for g in cached.tokens] == [g.exit_layer for g in uncached.tokens]
    if mode != "plain":
        assert {g.exit_layer for g in cached.tokens} == {1, 3}


def test_sampling_is_seeded(sharp_model):
    a = generate(sharp_model, [5], 20, 0.5, "sparse", temperature=1.0, top_k=10, seed=7)
    b = generate(sharp_model, [5], 20, 0.5, "sparse", temperature=1.0, top_k=10, seed=7)
    assert [g.token_id for g in a.tokens] == [g.token_id for g in b.tokens]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "fast"}, "mode"), ({"threshold": 1.5}, "threshold"), ({"prompt_ids": []}, "prompt"),
     ({"max_new_tokens": -1}, "max_new_tokens"), ({"exits": [0, 3]}, "exits")],
)
def test_generate_rejects_bad_arguments(sharp_model, kwargs, match):
    args = {"prompt_ids": [1], "max_new_tokens": 3, "threshold": 0.5, "mode": "sparse"} | kwargs
    with pytest.raises(ValueError, match=match):
        generate(sharp_model, **args)


def test_multi_exit_sweep_reduces_to_the_two_exit_formulas(sharp_model):
    from routed.records import evaluate
    from routed.sweep import sweep, sweep_exits

    tokens = torch.randint(0, 300, (200,), generator=torch.Generator().manual_seed(2))
    records = evaluate(sharp_model, tokens)
    grid = torch.linspace(0, 1, 101).numpy()
    two = sweep(records, grid)
    multi = sweep_exits(records, grid, exits=[1, 3])
    for key in ("routed_ppl", "compute_pct", "flops_pct"):
        torch.testing.assert_close(torch.from_numpy(multi[key]), torch.from_numpy(two[key]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.from_numpy(multi["exit_1_pct"]), torch.from_numpy(two["shallow_pct"]))


def test_multi_exit_sweep_equals_a_direct_routed_forward(sharp_model):
    from routed.records import evaluate
    from routed.sweep import sweep_exits

    tokens = torch.randint(0, 300, (161,), generator=torch.Generator().manual_seed(3))
    records = evaluate(sharp_model, tokens)
    x, y = tokens[:-1].view(10, 16), tokens[1:].view(10, 16)
    for t in (0.0, 0.3, 0.6, 0.9, 1.0):
        out = routed_forward(sharp_model, x, t, "dense", exits=[1, 2, 3])
        nll = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), y.flatten())
        row = sweep_exits(records, [t], exits=[1, 2, 3])
        assert row["routed_ppl"][0] == pytest.approx(float(nll.exp()), rel=1e-5)
        for layer in (1, 2, 3):
            share = 100 * float((out.exit_layer == layer).float().mean())
            assert row[f"exit_{layer}_pct"][0] == pytest.approx(share)


def test_confidence_probe_ranks_right_predictions_higher_and_skips_the_early_head(tiny_run, tiny_run_corpus):
    from routed.ledger import reference_flops, token_flops
    from routed.records import evaluate, probe_training_data
    from routed.routing import fit_confidence_probe
    from routed.sweep import sweep
    from routed.tokenizer import encode

    model, tok = tiny_run.model, tiny_run.tokenizer
    features, correct = probe_training_data(model, encode(tok, tiny_run_corpus.train))
    assert 0 < correct.float().mean() < 1
    probe = fit_confidence_probe(features, correct)
    records = evaluate(model, encode(tok, tiny_run_corpus.validation), probe=probe)
    p = records.confidence["probe"]
    assert ((p >= 0) & (p <= 1)).all()
    assert p[records.early_correct].mean() > p[~records.early_correct].mean()
    rows = sweep(records, [0.0, 1.0], measure="probe")
    cfg = records.model_config
    # a deep token runs one head (the last) and a probe, not the early exit's head
    plain = token_flops(cfg, [1, 3], 3, "plain")
    deep = 100 * token_flops(cfg, [1, 3], 3, "recompute", probe=True) / reference_flops(cfg)
    assert rows["flops_pct"][1] == pytest.approx(deep) and deep < 100 * (plain + 1e-3 * plain) / reference_flops(cfg)
    max_softmax = sweep(records, [1.0])["flops_pct"][0]
    assert max_softmax - rows["flops_pct"][1] == pytest.approx(100 * (2 * cfg.d_model * cfg.vocab_size - 2 * cfg.d_model) / reference_flops(cfg))
