"""KV-cached generation: cached equals uncached for every mode and KV policy, through window restarts."""

import pytest
import torch
from test_sparse import median_confidence, sharp

from routed.generate import MAX_NEW_TOKENS, generate, window_after
from routed.ledger import KV_POLICIES


@pytest.fixture(scope="module")
def model():
    return sharp()


@pytest.fixture(scope="module")
def threshold(model):
    return median_confidence(model, torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(1)))


def ids(gen):
    return [t.token_id for t in gen.tokens]


ROUTES = [("plain", "propagate"), ("dense", "propagate")] + [("sparse", p) for p in KV_POLICIES]


@pytest.mark.parametrize("exits", [[1, 3], [1, 2, 3]])
@pytest.mark.parametrize("mode, policy", ROUTES)
def test_cached_generation_equals_uncached(model, threshold, mode, policy, exits):
    # 40 new tokens on a 16-token context: the window restarts several times
    for prompt in ([7], [1, 2, 3], list(range(40, 60))):  # [7]: nothing prefilled, every gap made while decoding
        cached = generate(model, prompt, 40, threshold, mode, exits, kv_policy=policy)
        uncached = generate(model, prompt, 40, threshold, mode, exits, kv_policy=policy, use_cache=False)
        assert ids(cached) == ids(uncached)
        assert [g.exit_layer for g in cached.tokens] == [g.exit_layer for g in uncached.tokens]
        if mode != "plain":
            assert {g.exit_layer for g in cached.tokens} >= {1, 3}


@pytest.mark.parametrize("exits", [[1, 3], [1, 2, 3]])
def test_recompute_generation_is_dense_routing(model, threshold, exits):
    """Deferred layers run with the next deep token: the same tokens and exits as running every layer."""
    for seed in range(3):
        prompt = torch.randint(0, 300, (5,), generator=torch.Generator().manual_seed(seed)).tolist()
        dense = generate(model, prompt, 30, threshold, "dense", exits)
        recompute = generate(model, prompt, 30, threshold, "sparse", exits, kv_policy="recompute")
        assert ids(recompute) == ids(dense)
        assert [g.exit_layer for g in recompute.tokens] == [g.exit_layer for g in dense.tokens]


def test_a_prompt_longer_than_the_context_is_seen_through_its_last_window(model, threshold):
    prompt = list(range(10, 50))  # 40 tokens, context 16
    assert ids(generate(model, prompt, 10, threshold)) == ids(generate(model, prompt[-16:], 10, threshold))


def test_window_restarts_from_its_last_half():
    assert window_after(16, 0, 16) == 0
    assert window_after(17, 0, 16) == 9
    assert window_after(3, 0, 1) == 2  # a context of one keeps one token


def test_sampling_is_seeded(model):
    a = generate(model, [5], 20, 0.5, "sparse", temperature=1.0, top_k=10, seed=7)
    b = generate(model, [5], 20, 0.5, "sparse", temperature=1.0, top_k=10, seed=7)
    c = generate(model, [5], 20, 0.5, "sparse", temperature=1.0, top_k=10, seed=8)
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_tokens_stream_to_the_callback(model):
    seen = []
    gen = generate(model, [5], 12, 0.5, decode=lambda t: f"<{t[0]}>", on_token=seen.append)
    assert seen == gen.tokens and gen.text == "".join(f"<{t}>" for t in ids(gen)) and gen.tokens_per_s > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "fast"}, "mode"), ({"threshold": 1.5}, "threshold"), ({"prompt_ids": []}, "prompt"),
     ({"prompt_ids": [300]}, "prompt"), ({"max_new_tokens": -1}, "max_new_tokens"),
     ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "max_new_tokens"), ({"exits": [0, 3]}, "exits"),
     ({"kv_policy": "keep"}, "kv_policy")],
)
def test_generate_rejects_bad_arguments(model, kwargs, match):
    args = {"prompt_ids": [1], "max_new_tokens": 3, "threshold": 0.5, "mode": "sparse"} | kwargs
    with pytest.raises(ValueError, match=f"^{match}"):
        generate(model, **args)
