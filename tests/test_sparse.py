"""Sparse routed execution under each KV policy, against a per-token reference written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from routed.config import ModelConfig
from routed.ledger import KV_POLICIES
from routed.model import RoutedTransformer
from routed.routing import confidence, route
from routed.sparse import routed_forward, routed_ppl, trained_exits


def sharp(n_layers=3, seed=0, dtype=torch.float64) -> RoutedTransformer:
    """A random tiny model with scaled-up weights, so confidences spread over (0, 1); float64 by default."""
    torch.manual_seed(seed)
    model = RoutedTransformer(ModelConfig(vocab_size=300, n_layers=n_layers, d_model=32, n_heads=2, context_length=16))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def model():
    return sharp()


@pytest.fixture(scope="module")
def batch():
    return torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(1))


def median_confidence(model, x, layer=1) -> float:
    with torch.no_grad():
        return float(confidence(model(x, exits=[layer])[layer]).median())


@torch.no_grad()
def reference(model, seq: torch.Tensor, exited: torch.Tensor, policy: str) -> torch.Tensor:
    """Last-layer logits (T, V) of one sequence whose tokens `exited` (T,) left after layer 1, token by token.

    Written from the policy's definition: explicit softmax attention over the keys each query may see.
    """
    T = len(seq)
    h = model.embed(seq.view(1, -1))[0]  # (T, C)
    carried = None
    keys_at = {}
    for layer, block in enumerate(model.blocks, start=1):
        attn, C = block.attn, h.shape[-1]
        nh, hs = attn.n_heads, C // attn.n_heads
        q, k, v = attn.qkv(block.ln1(h)).split(C, dim=-1)
        runs = torch.ones(T, dtype=torch.bool) if layer == 1 else ~exited
        if layer > 1 and policy == "recompute" and layer < model.config.n_layers:
            runs = torch.ones(T, dtype=torch.bool)
        present = torch.ones(T, dtype=torch.bool)
        if layer > 1:
            if policy == "propagate" or (policy == "recompute" and layer == model.config.n_layers):
                _, k_ex, v_ex = attn.qkv(block.ln1(carried)).split(C, dim=-1)
                k, v = torch.where(exited[:, None], k_ex, k), torch.where(exited[:, None], v_ex, v)
            elif policy == "copy":
                k, v = torch.where(exited[:, None], keys_at[1][0], k), torch.where(exited[:, None], keys_at[1][1], v)
            elif policy == "drop":
                present = ~exited
        keys_at[layer] = (k, v)
        new = h.clone()
        for t in range(T):
            if not runs[t]:
                continue
            seen = [s for s in range(t + 1) if present[s]]
            out = []
            for head in range(nh):
                sl = slice(head * hs, (head + 1) * hs)
                scores = torch.stack([q[t, sl] @ k[s, sl] for s in seen]) / math.sqrt(hs)
                out.append(torch.softmax(scores, 0) @ torch.stack([v[s, sl] for s in seen]))
            x = h[t] + attn.proj(torch.cat(out))
            new[t] = x + block.mlp(block.ln2(x))
        carried = new if layer == 1 else carried if policy != "recompute" else new
        h = new
    return model.head(h)


@pytest.mark.parametrize("policy", KV_POLICIES)
def test_each_policy_matches_its_definition(model, batch, policy):
    t = median_confidence(model, batch)
    out = routed_forward(model, batch, t, "sparse", kv_policy=policy)
    shallow = out.exit_layer == 1
    assert 0 < shallow.float().mean() < 1
    first = model(batch, exits=[1])[1]
    for row in range(len(batch)):
        want = reference(model, batch[row], shallow[row], policy)
        deep = ~shallow[row]
        torch.testing.assert_close(out.logits[row][deep], want[deep], rtol=0, atol=1e-9)
        torch.testing.assert_close(out.logits[row][~deep], first[row][~deep], rtol=0, atol=1e-12)


@pytest.mark.parametrize("exits", [[1, 3], [1, 2, 3], [2, 3]])
def test_recompute_is_dense_routing(model, batch, exits):
    for t in (0.0, median_confidence(model, batch, exits[0]), 0.9, 1.0):
        dense = routed_forward(model, batch, t, "dense", exits=exits)
        recompute = routed_forward(model, batch, t, "sparse", exits=exits, kv_policy="recompute")
        assert torch.equal(recompute.exit_layer, dense.exit_layer)
        torch.testing.assert_close(recompute.logits, dense.logits, rtol=0, atol=1e-10)


def test_recompute_ppl_is_the_sweep_s_routed_ppl():
    from routed.records import evaluate
    from routed.sweep import sweep

    m32 = sharp(dtype=torch.float32)
    tokens = torch.randint(0, 300, (161,), generator=torch.Generator().manual_seed(3))
    records = evaluate(m32, tokens)
    rows = sweep(records, [0.0, 0.3, 0.5, 0.7, 1.0])
    for i, t in enumerate(rows["threshold"]):
        run = routed_ppl(m32, tokens, float(t), "sparse", kv_policy="recompute")
        assert run["execution"] == "recompute"
        assert run["ppl"] == pytest.approx(rows["routed_ppl"][i], rel=1e-5)
        assert run["exit_pct"][1] == pytest.approx(rows["shallow_pct"][i])


@pytest.mark.parametrize("policy", KV_POLICIES)
def test_every_policy_is_dense_when_nothing_or_everything_exits(model, batch, policy):
    for t in (0.0, 1.0):
        dense = routed_forward(model, batch, t, "dense")
        sparse = routed_forward(model, batch, t, "sparse", kv_policy=policy)
        assert torch.equal(sparse.exit_layer, dense.exit_layer)
        torch.testing.assert_close(sparse.logits, dense.logits, rtol=0, atol=1e-10)


def test_policies_differ_only_on_deep_tokens(model, batch):
    t = median_confidence(model, batch)
    outs = {p: routed_forward(model, batch, t, "sparse", kv_policy=p) for p in KV_POLICIES}
    shallow = outs["propagate"].exit_layer == 1
    for p, out in outs.items():
        assert torch.equal(out.exit_layer == 1, shallow), p
        assert torch.equal(out.logits[shallow], outs["propagate"].logits[shallow]), p
    deep = [out.logits[~shallow] for out in outs.values()]
    for i in range(len(deep)):
        for j in range(i + 1, len(deep)):
            assert not torch.allclose(deep[i], deep[j])


def test_dense_mode_is_the_routing_rule_applied_to_a_full_forward(model, batch):
    t = median_confidence(model, batch)
    chosen, shallow = route(model(batch, exits=[1, 3]), t)
    dense = routed_forward(model, batch, t, "dense")
    assert torch.equal(dense.logits, chosen)
    assert torch.equal(dense.exit_layer == 1, shallow)


def test_plain_mode_is_the_last_layer(model, batch):
    assert torch.equal(routed_forward(model, batch, None, "plain").logits, model(batch, exits=[3])[3])


def test_multi_exit_leaves_at_the_first_confident_exit(model, batch):
    t = median_confidence(model, batch)
    logits = model(batch)
    c1, c2 = confidence(logits[1]), confidence(logits[2])
    expected = torch.where(c1 >= t, 1, torch.where(c2 >= t, 2, 3))
    for mode in ("dense", "sparse"):
        assert torch.equal(routed_forward(model, batch, t, mode, exits=[1, 2, 3]).exit_layer, expected)


def test_bad_policy_and_mode_are_refused(model, batch):
    with pytest.raises(ValueError, match="^kv_policy"):
        routed_forward(model, batch, 0.5, "sparse", kv_policy="keep")
    with pytest.raises(ValueError, match="^mode"):
        routed_forward(model, batch, 0.5, "fast")


def test_trained_exits_are_the_weighted_layers():
    from routed.config import TrainConfig

    assert trained_exits(TrainConfig(layer_weights={1: 0.7, 2: 0.0, 3: 0.3}), 3) == [1, 3]
    assert trained_exits(TrainConfig(layer_weights={2: 0.5, 6: 0.5}), 6) == [2, 6]
    assert trained_exits(TrainConfig(layer_weights={3: 1.0}), 3) == [3]
    dynamic = TrainConfig(layer_weights={1: 0.0, 3: 1.0}, final_layer_weights={1: 0.5, 3: 0.5})
    assert trained_exits(dynamic, 3) == [1, 3]


def test_multi_exit_sweep_reduces_to_the_two_exit_formulas():
    from routed.records import evaluate
    from routed.sweep import sweep, sweep_exits

    model = sharp(dtype=torch.float32)
    tokens = torch.randint(0, 300, (200,), generator=torch.Generator().manual_seed(2))
    records = evaluate(model, tokens)
    grid = torch.linspace(0, 1, 101).numpy()
    two = sweep(records, grid)
    multi = sweep_exits(records, grid, exits=[1, 3])
    for key in ("routed_ppl", "compute_pct", "flops_pct"):
        torch.testing.assert_close(torch.from_numpy(multi[key]), torch.from_numpy(two[key]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.from_numpy(multi["exit_1_pct"]), torch.from_numpy(two["shallow_pct"]))


def test_multi_exit_sweep_equals_a_direct_routed_forward():
    from routed.records import evaluate
    from routed.sweep import sweep_exits

    model = sharp(dtype=torch.float32)
    tokens = torch.randint(0, 300, (161,), generator=torch.Generator().manual_seed(3))
    records = evaluate(model, tokens)
    x, y = tokens[:-1].view(10, 16), tokens[1:].view(10, 16)
    for t in (0.0, 0.3, 0.6, 0.9, 1.0):
        out = routed_forward(model, x, t, "dense", exits=[1, 2, 3])
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
