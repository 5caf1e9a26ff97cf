"""Paired statistics on synthetic data with a known effect, the convergence flag, and the notes' hypotheses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from routed.config import TrainConfig
from routed.convergence import convergence
from routed.stats import betainc, paired_block_bootstrap, paired_t, t_quantile, t_sf_two_sided, verdict


def test_t_distribution_against_known_values():
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, rel=1e-6)
    assert t_quantile(0.975, 10) == pytest.approx(2.228139, rel=1e-6)
    assert t_sf_two_sided(2.0, 2) == pytest.approx(0.183503, rel=1e-5)
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248, rel=1e-9)
    assert t_sf_two_sided(0.0, 5) == pytest.approx(1.0)


def test_paired_t_finds_a_known_effect_and_covers_it_at_the_promised_rate():
    rng = np.random.default_rng(0)
    covered, detected = 0, 0
    for _ in range(400):
        seed_effects = rng.normal(0.0, 1.0, size=5)  # shared by both arms: pairing removes it
        a = 10 + seed_effects + rng.normal(0, 0.1, 5)
        b = 10.3 + seed_effects + rng.normal(0, 0.1, 5)
        c = paired_t(a, b)
        covered += c.ci_low <= -0.3 <= c.ci_high
        detected += verdict(c) == "held"
    assert covered / 400 == pytest.approx(0.95, abs=0.035)
    assert detected / 400 > 0.9  # an unpaired test would drown this effect in the seed spread


def test_paired_t_without_an_effect_rejects_at_about_five_percent():
    rng = np.random.default_rng(1)
    rejections = sum(paired_t(rng.normal(size=4), rng.normal(size=4)).p < 0.05 for _ in range(2000))
    assert rejections / 2000 == pytest.approx(0.05, abs=0.015)


def test_verdict_rule():
    from routed.stats import Comparison

    assert verdict(Comparison(-1.0, -2.0, -0.5, 0.01, 3, "t")) == "held"
    assert verdict(Comparison(1.0, 0.5, 2.0, 0.01, 3, "t")) == "contradicted"
    assert verdict(Comparison(0.1, -0.5, 0.7, 0.6, 3, "t")) == "not shown"


def test_block_bootstrap_recovers_a_known_per_token_difference():
    rng = np.random.default_rng(2)
    a_sums, b_sums, counts = [], [], []
    for _ in range(3):  # seeds
        n = rng.integers(60, 130, size=300)  # tokens per block
        base = rng.normal(3.0, 0.5, size=300) * n
        a_sums.append(base + rng.normal(-0.05, 0.05, size=300) * n)  # a is 0.05 nats/token better
        b_sums.append(base)
        counts.append(n)
    c = paired_block_bootstrap(a_sums, b_sums, counts, resamples=1000)
    assert c.effect == pytest.approx(-0.05, abs=0.01)
    assert c.ci_low < -0.05 < c.ci_high and c.ci_high < 0 and c.p < 0.01
    same = paired_block_bootstrap(b_sums, b_sums, counts, resamples=200)
    assert same.effect == 0.0 and same.p == 1.0 and verdict(same) == "not shown"


def _history(ppls, every=100):
    return [{"step": every * (i + 1), "val_loss": math.log(p)} for i, p in enumerate(ppls)]


def test_a_run_stopped_before_its_validation_flattens_is_flagged():
    falling = _history([300, 200, 150, 120, 100, 90, 80, 75])  # the last fifth still gains > 6%
    assert convergence(falling)["status"] == "not converged"
    flat = _history([300, 200, 150, 120, 100, 99.9, 99.8, 99.7])
    assert convergence(flat)["status"] == "converged" and convergence(flat)["tail_gain_pct"] < 1
    passed_best = _history([300, 200, 150, 120, 100, 101, 102, 103])
    result = convergence(passed_best)
    assert result["status"] == "converged" and result["best_step"] == 500  # overfitting gains nothing at the end
    noisy_end = _history([300, 200, 150, 120, 100, 96, 94, 92, 89.5, 89.6])  # best one step early, still falling
    result = convergence(noisy_end)
    assert result["best_step"] == 900 and result["tail_gain_pct"] > 1 and result["status"] == "not converged"
    assert convergence([])["status"] == "no validation"


def test_dynamic_layer_weights_move_linearly_and_validate_on_the_final_weights():
    cfg = TrainConfig(layer_weights={1: 0.9, 3: 0.1}, final_layer_weights={1: 0.5, 3: 0.5})
    assert cfg.layer_weights_at(0.0) == pytest.approx({1: 0.9, 3: 0.1})
    assert cfg.layer_weights_at(0.5) == pytest.approx({1: 0.7, 3: 0.3})
    assert cfg.layer_weights_at(1.0) == pytest.approx({1: 0.5, 3: 0.5})
    assert cfg.validation_weights == {1: 0.5, 3: 0.5}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="^final_layer_weights"):
        TrainConfig(final_layer_weights={1: -1.0})


def test_softmax_over_the_batch_dimension_inflates_confidence():
    from routed.hypotheses import wrong_dimension_confidences
    from routed.model import RoutedTransformer
    from routed.records import evaluate
    from tests.helpers import tiny_model_config

    torch.manual_seed(0)
    model = RoutedTransformer(tiny_model_config()).eval()
    tokens = torch.randint(0, 300, (16 * 20 + 1,), generator=torch.Generator().manual_seed(0))
    confs = wrong_dimension_confidences(model, tokens, batch_sizes=(4, 8))
    right = evaluate(model, tokens).confidence["max_softmax"]
    for b in (4, 8):  # the max over 300 vocabulary entries of a softmax over b numbers is at least 1/b
        c = confs[f"softmax over batch (B={b})"]
        assert len(c) == len(right) and (c >= 1 / b - 1e-6).all() and c.mean() > right.mean()
    assert len(confs["softmax over sequence"]) == len(right)


def _one_seed_run(nll_per_window: np.ndarray, threshold_ppl: float, n_layers: int = 3) -> tuple[dict, dict]:
    result = {"seed": 0, "n_layers": n_layers, "ppl_by_exit": {str(n_layers): threshold_ppl},
              "curve": {"threshold": np.array([0.5, 0.95]), "routed_ppl": np.array([threshold_ppl, threshold_ppl])}}
    tokens = np.full(len(nll_per_window), 100.0)
    arrays = {"tokens": tokens, "routed_0.95": nll_per_window * tokens, f"nll_{n_layers}": nll_per_window * tokens}
    return result, arrays


@pytest.mark.parametrize("gap, expected", [(-0.3, "held"), (0.3, "contradicted"), (0.0, "not shown")])
def test_a_single_seed_claim_is_paired_over_test_windows(gap, expected):
    from routed.verdicts import claims

    rng = np.random.default_rng(1)
    shared = rng.normal(4.5, 0.5, 300)  # windows differ a lot; the paired difference is what is tested
    noise = rng.normal(0.0, 0.05, 300)
    best, best_blocks = _one_seed_run(shared + gap + noise, float(np.exp(4.5 + gap)))
    one, one_blocks = _one_seed_run(shared, float(np.exp(4.5)), n_layers=1)
    rows = claims({"asymmetric_best": [best], "standard_1l": [one]},
                  {("asymmetric_best", 0): best_blocks, ("standard_1l", 0): one_blocks})
    row = next(r for r in rows if r["claim"] == "the best routed model beats Standard 1L")
    assert row["verdict"] == expected and "test windows only" in row["test"] and row["unit"] == "nats/token"
    assert row["ci_low"] < gap < row["ci_high"] or abs(row["effect"] - gap) < 0.02


def _seeded_curve(seed: int, ppl_at_65: float) -> dict:
    return {"seed": seed, "n_layers": 3, "curve": {"threshold": np.array([0.5, 0.95]), "compute_pct": np.array([40.0, 90.0]),
                                                   "routed_ppl": np.array([ppl_at_65 + 1.0, ppl_at_65 - 1.0])}}


@pytest.mark.parametrize("gap, expected", [(-0.5, "held"), (0.5, "contradicted")])
def test_a_dynamic_alpha_is_compared_with_fixed_alphas_seed_by_seed(gap, expected):
    from routed.verdicts import claims

    seed_level = {0: 30.0, 1: 31.0, 2: 29.5}  # seeds differ more than the gap; pairing removes that
    noise = {0: 0.01, 1: -0.02, 2: 0.015}
    fixed = [_seeded_curve(s, level) for s, level in seed_level.items()]
    schedule = [_seeded_curve(s, level + gap + noise[s]) for s, level in seed_level.items()]
    rows = claims({"asymmetric_best": fixed, "standard_routing": fixed, "alpha_0.9to0.5": schedule}, {})
    dynamic = [r for r in rows if r["claim"].startswith("a dynamic alpha (0.9 → 0.5)")]
    assert {r["claim"].split("fixed alpha ")[1].split(" ")[0] for r in dynamic} == {"0.7", "0.5"}
    for row in dynamic:
        assert row["verdict"] == expected and row["n"] == 3 and row["test"].startswith("paired t")
        assert row["ci_low"] < gap < row["ci_high"] and abs(row["effect"] - gap) < 0.05
