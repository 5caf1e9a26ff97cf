"""The FLOPs ledger: hand computations, orderings between executions, and a count of the model's real matmuls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_model_config
from torch.utils.flop_counter import FlopCounterMode

from routed.config import ModelConfig
from routed.ledger import EXECUTIONS, KV_POLICIES, TokenCost, compute_pct, execution_cost, token_flops, two_exit_cost
from routed.model import RoutedTransformer


def test_compute_pct_reproduces_the_notes_example():
    # The notes: 52.3% of tokens shallow -> Compute% 65.2% (their shallow share is itself rounded).
    cfg = ModelConfig()
    assert compute_pct({1: 0.523, 3: 0.477}, cfg) == pytest.approx(65.2, abs=0.1)
    assert two_exit_cost(cfg, 0.523, "dense")[0] == pytest.approx(100 * (0.523 + 0.477 * 3) / 3)


def test_token_costs_by_hand():
    cfg = ModelConfig(vocab_size=1000, d_model=64, n_heads=4, context_length=32)
    c = TokenCost.of(cfg)
    assert c.layer == 24 * 64 * 64 + 2 * 64 * 33 and c.head == 2 * 64 * 1000 and c.kv == 4 * 64 * 64
    exits = [1, 3]
    assert token_flops(cfg, exits, 3, "plain") == 3 * c.layer + c.head
    assert token_flops(cfg, exits, 1, "dense") == 3 * c.layer + 2 * c.head  # the exit only picks the output
    assert token_flops(cfg, exits, 1, "drop") == c.layer + c.head
    assert token_flops(cfg, exits, 1, "copy") == c.layer + c.head
    assert token_flops(cfg, exits, 1, "propagate") == c.layer + c.head + 2 * c.kv
    assert token_flops(cfg, exits, 1, "recompute") == 2 * c.layer + c.head + c.kv
    for execution in ("drop", "copy", "propagate", "recompute", "dense"):
        assert token_flops(cfg, exits, 3, execution) == 3 * c.layer + 2 * c.head  # a deep token pays both heads
    assert token_flops(cfg, exits, 1, "propagate", probe=True) == c.layer + c.head + c.probe + 2 * c.kv
    assert token_flops(cfg, exits, 3, "propagate", probe=True) == 3 * c.layer + c.head + c.probe


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_executions_are_ordered_by_what_they_run(share):
    cfg = ModelConfig()
    flops = {e: two_exit_cost(cfg, share, e)[1] for e in EXECUTIONS}
    assert flops["drop"] == flops["copy"] <= flops["propagate"] <= flops["recompute"] <= flops["dense"]
    assert flops["plain"] == pytest.approx(100.0)
    if share == 0.0:  # nothing exits: every routed execution is the dense one
        assert len({round(flops[e], 9) for e in KV_POLICIES + ("dense",)}) == 1


def test_arrays_and_single_exit_models():
    cfg = ModelConfig()
    shares = np.array([0.0, 0.5, 1.0])
    compute, flops = two_exit_cost(cfg, shares, "propagate")
    np.testing.assert_allclose(compute, [100.0, 200 / 3, 100 / 3])
    assert flops[0] > flops[1] > flops[2]
    one = ModelConfig(n_layers=1)
    for e in EXECUTIONS:  # one exit routes nothing; against the 3-layer reference it costs less
        assert two_exit_cost(one, 0.7, e) == pytest.approx(two_exit_cost(one, 0.0, "plain"))
        assert two_exit_cost(one, 0.7, e)[1] < 100.0


def test_multi_exit_shares_sum_like_two_exits():
    cfg = ModelConfig()
    two = execution_cost(cfg, {1: 0.4, 3: 0.6}, "propagate")
    assert two == pytest.approx(two_exit_cost(cfg, 0.4, "propagate"))
    # an extra exit at layer 2 costs the tokens passing it one more head
    with_two = execution_cost(cfg, {1: 0.4, 2: 0.0, 3: 0.6}, "propagate", exits=[1, 2, 3])
    assert with_two[1] > two[1] and with_two[0] == two[0]


def test_bad_requests_are_refused():
    cfg = ModelConfig()
    with pytest.raises(ValueError, match="^execution"):
        execution_cost(cfg, {3: 1.0}, "sparse-ish")
    with pytest.raises(ValueError, match="^exits"):
        execution_cost(cfg, {5: 1.0}, "drop")
    with pytest.raises(ValueError, match="^exit_layer"):
        token_flops(cfg, [1, 3], 2, "drop")


def _matmul_flops(fn) -> int:
    """FLOPs of the matrix products (linear layers) that fn runs, as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if "mm" in str(op) and "bmm" not in str(op))


@torch.no_grad()
def test_ledger_matches_the_model_s_counted_matmuls():
    """Without attention scores, the ledger's plain and dense costs are exactly what the model multiplies."""
    cfg = tiny_model_config()
    model = RoutedTransformer(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, cfg.context_length))
    cost, tokens = TokenCost.of(cfg), x.numel()
    attention = 2 * cfg.d_model * (cfg.context_length + 1)
    plain = _matmul_flops(lambda: model(x, exits=[cfg.n_layers]))
    assert plain / tokens == token_flops(cfg, [1, cfg.n_layers], cfg.n_layers, "plain") - cfg.n_layers * attention
    dense = _matmul_flops(lambda: model(x, exits=[1, cfg.n_layers]))
    assert dense / tokens == token_flops(cfg, [1, cfg.n_layers], 1, "dense") - cfg.n_layers * attention
    assert cost.head == 2 * cfg.d_model * cfg.vocab_size


@pytest.mark.parametrize("exits", [[1, 3], [1, 2, 3]])
@torch.no_grad()
def test_ledger_matches_the_matmuls_each_routed_execution_runs(exits):
    """plain, dense and sparse under every KV policy: counted matmuls == the ledger, token by token (no attention scores)."""
    from routed.routing import confidence
    from routed.sparse import routed_forward

    cfg = tiny_model_config()
    torch.manual_seed(0)
    model = RoutedTransformer(cfg).eval()
    for p in model.parameters():
        p.mul_(8)  # confidences spread over (0, 1): some tokens exit at each exit
    x = torch.randint(0, cfg.vocab_size, (3, cfg.context_length), generator=torch.Generator().manual_seed(1))
    threshold = float(confidence(model(x, exits=[1])[1]).quantile(0.6))
    for execution in EXECUTIONS:
        mode = execution if execution in ("plain", "dense") else "sparse"
        kv_policy = execution if mode == "sparse" else "propagate"
        out = routed_forward(model, x, threshold, mode, exits, kv_policy=kv_policy)
        left = out.exit_layer.flatten().tolist()
        assert mode == "plain" or 1 in left and 3 in left
        counted = _matmul_flops(lambda m=mode, p=kv_policy: routed_forward(model, x, threshold, m, exits, kv_policy=p))
        ledger = sum(token_flops(cfg, exits, e, execution, attention=False) for e in left)
        assert counted == ledger, execution
