"""Self-speculative decoding: greedy output is plain greedy's; sampled output is distributed as the full model's."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_sparse import median_confidence, sharp

from routed.config import ModelConfig
from routed.generate import generate, probabilities
from routed.model import RoutedTransformer
from routed.speculative import (
    MAX_DRAFT_K,
    DraftCosts,
    best_k,
    break_even,
    expected_speedup,
    expected_tokens,
    measure_costs,
    speculative_generate,
)


def ids(gen):
    return [t.token_id for t in gen.tokens]


@pytest.mark.parametrize("seed", range(4))
def test_greedy_speculative_output_is_plain_greedy_token_for_token(seed):
    """Random models, prompts (some longer than the 16-token context), thresholds, k and draft exits."""
    model = sharp(n_layers=3, seed=seed)
    rng = torch.Generator().manual_seed(100 + seed)
    costs = DraftCosts(plain_s=1.0, round_s=[1.0, 1.2, 1.4, 1.6, 1.8])  # any costs: k only changes the speed
    mid = median_confidence(model, torch.randint(0, 300, (2, 16), generator=rng))
    cases = list(itertools.product([1, 7, 30], [None, mid, 0.99], [1, 3, None], [[1, 3], [2, 3], [1, 2, 3]]))
    for i in torch.randperm(len(cases), generator=rng)[:12].tolist():  # 12 of the 81 combinations per seed
        length, threshold, k, exits = cases[i]
        prompt = torch.randint(0, 300, (length,), generator=rng).tolist()
        plain = generate(model, prompt, 40, None, "plain")
        spec = speculative_generate(model, prompt, 40, threshold, k, exits, costs=costs)
        assert ids(spec) == ids(plain), (length, threshold, k, exits)
        assert spec.drafted >= spec.accepted and spec.rounds == len(spec.tokens) - spec.accepted
        assert sum(t.drafted for t in spec.tokens) == spec.accepted
        assert all(t.exit_layer == exits[0] for t in spec.tokens if t.drafted)


def test_greedy_speculative_on_a_float32_model_with_confident_drafts():
    model = sharp(seed=9, dtype=torch.float32)
    prompt = [3, 1, 4, 1, 5]
    spec = speculative_generate(model, prompt, 60, 0.0, 4, [1, 3])
    assert ids(spec) == ids(generate(model, prompt, 60, None, "plain"))
    assert 0 < spec.acceptance_rate < 1
    assert any(t.rejected_id is not None for t in spec.tokens)


def tiny_vocab_model(seed=0) -> RoutedTransformer:
    torch.manual_seed(seed)
    model = RoutedTransformer(ModelConfig(vocab_size=4, n_layers=2, d_model=16, n_heads=2, context_length=8))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model.double().eval()


@torch.no_grad()
def exact_sequence_probabilities(model, prompt, length, temperature, top_k) -> dict:
    """p(t1..tn | prompt) of the full model for every sequence of `length` tokens."""
    V = model.config.vocab_size
    result = {}
    for seq in itertools.product(range(V), repeat=length):
        x = torch.tensor([prompt + list(seq)])
        logits = model(x, exits=[model.config.n_layers])[model.config.n_layers][0]
        prob = 1.0
        for i, t in enumerate(seq):
            prob *= float(probabilities(logits[len(prompt) - 1 + i], temperature, top_k)[t])
        result[seq] = prob
    return result


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 3)])
def test_sampled_speculative_output_is_distributed_as_the_full_model(temperature, top_k):
    model = tiny_vocab_model()
    prompt, length, n = [1, 2], 3, 1500
    exact = exact_sequence_probabilities(model, prompt, length, temperature, top_k)
    counts = dict.fromkeys(exact, 0)
    drafted = accepted = 0
    for seed in range(n):
        gen = speculative_generate(model, prompt, length, None, 2, [1, 2], temperature=temperature, top_k=top_k, seed=seed)
        counts[tuple(ids(gen))] += 1
        drafted, accepted = drafted + gen.drafted, accepted + gen.accepted
    assert 0.2 < accepted / drafted < 0.95  # drafts are often rejected: the acceptance rule is at work
    assert sum(counts[s] for s in exact if exact[s] == 0) == 0  # top-k: nothing outside the allowed tokens
    expected = {s: n * p for s, p in exact.items() if p > 0}
    assert chi_square_p_value([counts[s] for s in expected], list(expected.values())) > 1e-3
    tv = 0.5 * sum(abs(counts[s] - e) for s, e in expected.items()) / n
    assert tv < 0.05


def chi_square_p_value(observed, expected, min_expected=5.0) -> float:
    """Pearson's chi-square goodness-of-fit p-value; outcomes expected fewer than 5 times are pooled."""
    pooled_o = sum(o for o, e in zip(observed, expected) if e < min_expected)
    pooled_e = sum(e for e in expected if e < min_expected)
    pairs = [(o, e) for o, e in zip(observed, expected) if e >= min_expected] + ([(pooled_o, pooled_e)] if pooled_e else [])
    stat = sum((o - e) ** 2 / e for o, e in pairs)
    dof = torch.tensor((len(pairs) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(stat / 2, dtype=torch.float64)))


def test_the_chi_square_test_rejects_a_wrong_distribution():
    expected = [250.0, 250.0, 250.0, 250.0]
    assert chi_square_p_value([250, 250, 250, 250], expected) == pytest.approx(1.0)
    assert chi_square_p_value([255, 240, 262, 243], expected) > 0.5
    assert chi_square_p_value([300, 200, 250, 250], expected) < 1e-3


@torch.no_grad()
def test_the_draft_distribution_differs_enough_for_the_sampling_test_to_fail_if_drafts_were_kept():
    model = tiny_vocab_model()
    logits = model(torch.tensor([[1, 2]]), exits=[1, 2])
    p, q = (torch.softmax(logits[e][0, -1], -1) for e in (2, 1))
    assert 0.5 * float((p - q).abs().sum()) > 0.1


def test_statistics_and_a_threshold_no_draft_reaches():
    model = sharp()
    spec = speculative_generate(model, [1, 2, 3], 20, 1.0, 4, [1, 3])
    assert spec.drafted == spec.accepted == 0 and spec.rounds == 20 and spec.acceptance_rate == 0.0
    spec = speculative_generate(model, [1, 2, 3], 30, None, 3, [1, 3])
    assert spec.drafted > 0 and spec.mean_accepted_length == pytest.approx(spec.accepted / spec.rounds)
    assert max(spec.ks) == 3 and len(spec.tokens) == 30


def test_the_cost_model():
    costs = DraftCosts(plain_s=1.0, round_s=[1.1, 1.3, 1.5, 1.7, 1.9])
    assert expected_tokens(0.0, 4) == 1.0 and expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    for k in range(1, 5):
        a = break_even(k, costs)
        assert expected_speedup(a, k, costs) == pytest.approx(1.0, abs=1e-9)
        assert expected_speedup(min(1.0, a + 0.05), k, costs) > 1.0 > expected_speedup(max(0.0, a - 0.05), k, costs)
    assert best_k(0.2, costs) == 1 and best_k(0.95, costs) == 4
    assert break_even(1, DraftCosts(1.0, [1.0, 2.5])) == 1.0  # a round of 1 draft costing 2.5 steps never pays


def test_measured_costs_are_positive_and_grow_with_k():
    costs = measure_costs(sharp(dtype=torch.float32), [1, 3], k_max=4, repeats=3)
    assert costs.k_max == 4 and costs.plain_s > 0 and all(s > 0 for s in costs.round_s)
    assert costs.round_s[4] > costs.round_s[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"draft_k": 0}, "draft_k"), ({"draft_k": MAX_DRAFT_K + 1}, "draft_k"), ({"draft_k": True}, "draft_k"),
    ({"prompt_ids": []}, "prompt"), ({"max_new_tokens": 10**9}, "max_new_tokens"), ({"threshold": 2.0}, "threshold"),
])
def test_bad_requests_are_refused(kwargs, match):
    args = {"model": sharp(), "prompt_ids": [1], "max_new_tokens": 3, "threshold": 0.5, "draft_k": 2} | kwargs
    with pytest.raises(ValueError, match=f"^{match}"):
        speculative_generate(**args)


def test_a_one_exit_model_cannot_draft():
    with pytest.raises(ValueError, match="^exits: speculative decoding drafts with an early exit"):
        speculative_generate(sharp(n_layers=1), [1], 3, 0.5, 2)


def test_bfloat16_weights_run_every_mode():
    """Half-precision weights (as on a GPU): caches take the weights' type, confidences stay float32."""
    model = sharp(dtype=torch.bfloat16)
    plain = generate(model, [1, 2, 3], 20, None, "plain")
    assert len(plain.tokens) == 20
    assert len(generate(model, [1, 2, 3], 20, 0.5, "sparse", kv_policy="recompute").tokens) == 20
    assert len(speculative_generate(model, [1, 2, 3], 20, 0.5, 2).tokens) == 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_s_tokens():
    from routed.sparse import routed_forward

    cpu = sharp()
    gpu = sharp().cuda()
    x = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(1))
    t = median_confidence(cpu, x)
    for policy in ("propagate", "copy", "recompute", "drop"):
        a = routed_forward(cpu, x, t, "sparse", kv_policy=policy)
        b = routed_forward(gpu, x.cuda(), t, "sparse", kv_policy=policy)
        torch.testing.assert_close(b.logits.cpu(), a.logits, rtol=1e-6, atol=1e-6)
    prompt = [3, 1, 4]
    assert ids(speculative_generate(gpu, prompt, 30, None, 3)) == ids(generate(cpu, prompt, 30, None, "plain"))
    assert ids(generate(gpu, prompt, 30, t, "sparse", kv_policy="recompute")) == ids(generate(cpu, prompt, 30, t, "dense"))
