"""Routed generation on a pretrained model: no KV cache; each step runs the window only up to its exit.

A step feeds the visible window (the last context_length tokens) and checks the newest token's
confidence at each exit in turn; the trunk stops at the first exit whose confidence reaches the
threshold (the routing rule), so a confident step really skips the deeper layers. Without a cache
the window's earlier tokens are recomputed every step: simple and exact, not fast.
"""

from __future__ import annotations

import time

import torch

from routed.generate import GeneratedToken, Generation
from routed.records import model_exits
from routed.routing import check_threshold, confidence, exits_early


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:
        logits = logits.masked_fill(logits < logits.topk(min(top_k, logits.numel())).values[-1], float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def _exit_step(model, window: torch.Tensor, exits: list[int], threshold, measure: str):
    """(logits, exit layer, first-exit confidence) of the window's newest token; the trunk stops at its exit."""
    step = {"first": 1.0}

    def stop(layer: int, hidden: torch.Tensor) -> bool:
        logits = model.lm_head(model.exit_norm(layer, hidden[:, -1]))[0]
        step["logits"], step["layer"] = logits, layer
        if layer == exits[-1]:
            return True
        conf = confidence(logits, measure)
        if layer == exits[0]:
            step["first"] = float(conf)
        return bool(exits_early(conf, threshold))

    model.hidden_states(window, exits, stop=stop)
    return step["logits"], step["layer"], step["first"]


@torch.no_grad()
def generate_pretrained(model, prompt_ids: list[int], max_new_tokens: int, threshold: float | None, exits=None,
                        measure: str = "max_softmax", temperature: float = 0.0, top_k: int | None = None, seed: int = 0,
                        decode=None, on_token=None) -> Generation:
    """Generate token by token from a PretrainedLM, each token leaving at the first confident exit.

    `exits` default to the model's (its adapters' and the last); threshold None sends every token to
    the last layer. Tokens record their exit layer and their confidence at the first exit.
    """
    check_threshold(threshold)
    if not prompt_ids:
        raise ValueError("prompt: at least one token is needed to start generating")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must be a non-negative integer, got {max_new_tokens!r}")
    exits = model_exits(model, exits)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    result = Generation(list(prompt_ids))
    start = time.perf_counter()
    for _ in range(max_new_tokens):
        window = torch.tensor([ids[-model.config.context_length :]])
        logits, layer, first = _exit_step(model, window, exits, threshold, measure)
        token = _sample(logits, temperature, top_k, generator)
        ids.append(token)
        result.tokens.append(GeneratedToken(token, decode([token]) if decode else "", layer, first))
        if on_token is not None:
            on_token(result.tokens[-1])
    result.seconds = time.perf_counter() - start
    return result
