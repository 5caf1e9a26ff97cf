"""Token-by-token generation over a KV cache: plain, dense-routed, or sparse-routed under a KV policy.

Each new token runs the layers one position at a time against the cache (routed.kvcache). Under
the sparse policies a token that exits early leaves, at the deeper layers, the keys and values its
policy gives (routed.sparse): recompute defers its deeper layers until the next token that goes
deep and runs them together with it, so generation equals dense routing. Past the context length
the window restarts from its last half (the cache is rebuilt in one pass), the same rule whatever
the mode, so that a cached run and an uncached one see the same tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from routed.kvcache import KVCache, run_rows
from routed.model import RoutedTransformer
from routed.routing import check_threshold, confidence, exits_early
from routed.sparse import DEFAULT_KV_POLICY, check_exits, check_kv_policy, routed_forward

MAX_NEW_TOKENS = 4096  # per call: bounds the time and memory one request can take


@dataclass
class GeneratedToken:
    """One generated token, the exit that chose it and that exit's confidence.

    Speculative decoding also says whether the early exit drafted it (and the full model agreed),
    and, for a token of the full model's own, which draft it replaced (None: no draft was rejected).
    """

    token_id: int
    text: str
    exit_layer: int
    confidence: float
    drafted: bool = False
    rejected_id: int | None = None
    rejected_text: str = ""


@dataclass
class Generation:
    """The prompt, the generated tokens and the seconds spent generating them (callbacks excluded)."""

    prompt_ids: list[int]
    tokens: list[GeneratedToken] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


def check_request(model: RoutedTransformer, prompt_ids, max_new_tokens) -> None:
    """Raise ValueError for an empty prompt, an unknown token id or a max_new_tokens outside 0..MAX_NEW_TOKENS."""
    if not prompt_ids:
        raise ValueError("prompt: at least one token is needed to start generating")
    vocab = model.config.vocab_size
    if any(not 0 <= int(t) < vocab for t in prompt_ids):
        raise ValueError(f"prompt: token ids must be within 0..{vocab - 1}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must be a non-negative integer, got {max_new_tokens!r}")
    if max_new_tokens > MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens: at most {MAX_NEW_TOKENS:,} per request, got {max_new_tokens:,}")


def window_after(n_ids: int, start: int, context: int) -> int:
    """Where the visible window starts once there are n_ids tokens: restart from the last half past the context."""
    if n_ids - start > context:
        return n_ids - max(1, context // 2)
    return start


def probabilities(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """The sampling distribution (V,) of logits at a temperature (> 0), kept to the top_k tokens when given."""
    logits = logits.float() / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, -1)


def pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    """The next token: the argmax at temperature 0, else a sample from `probabilities`."""
    if temperature <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(probabilities(logits, temperature, top_k).cpu(), 1, generator=generator))


@dataclass
class _Deferred:
    """A token whose deeper layers recompute will run later: its position, layers run so far, state after them."""

    pos: int
    done: int
    state: torch.Tensor  # (1, C)


class Decoder:
    """Feeds one position at a time to a model over its KV cache, routed by mode and KV policy."""

    def __init__(self, model: RoutedTransformer, threshold, mode="sparse", exits=None, measure="max_softmax",
                 kv_policy: str = DEFAULT_KV_POLICY):
        check_threshold(threshold)
        check_kv_policy(kv_policy)
        self.model, self.threshold, self.mode, self.measure, self.kv_policy = model, threshold, mode, measure, kv_policy
        self.exits = check_exits(model, exits, mode)
        self.device = model.tok_emb.weight.device
        self.cache = KVCache(model)
        self.deferred: list[_Deferred] = []

    def prefill(self, ids: list[int]) -> None:
        """A fresh cache holding positions 0..len(ids)-1, in one routed pass (recompute runs every layer then)."""
        self.cache = KVCache(self.model)
        self.deferred = []
        if ids:
            idx = torch.tensor([ids], device=self.device)
            routed_forward(self.model, idx, self.threshold, self.mode, self.exits, self.measure, self.kv_policy,
                           cache=self.cache)

    def embed(self, token: int, pos: int) -> torch.Tensor:
        m = self.model
        return m.tok_emb.weight[token].view(1, -1) + m.pos_emb.weight[pos].view(1, -1)

    @torch.no_grad()
    def step(self, token: int, pos: int) -> tuple[torch.Tensor, int, float]:
        """Feed `token` at position `pos`; returns (logits (V,) of the answering exit, its layer, first-exit confidence)."""
        model, cache, n = self.model, self.cache, self.model.config.n_layers
        sparse = self.mode == "sparse"
        x = self.embed(token, pos)
        first_conf, chosen, exit_at = 1.0, None, n
        for layer, block in enumerate(model.blocks, start=1):
            i = layer - 1
            if chosen is not None and sparse:  # exited: only the policy's keys and values at this layer
                if self.kv_policy == "propagate":
                    run_rows(block, x, [pos], cache, i, kv_only=1)
                elif self.kv_policy == "copy":
                    cache.write(i, [pos], cache.k[exit_at - 1, :, :, pos : pos + 1], cache.v[exit_at - 1, :, :, pos : pos + 1])
                continue  # drop: none; recompute: deferred
            x = self._run_layer(block, x, pos, layer)
            if self.mode == "plain" or layer not in self.exits:
                continue
            logits = model.head(x)[0]
            if layer == n:
                if chosen is None:
                    chosen, exit_at = logits, n
                break
            conf = float(confidence(logits, self.measure))
            if layer == self.exits[0]:
                first_conf = conf
            if chosen is None and bool(exits_early(torch.tensor(conf), self.threshold)):
                chosen, exit_at = logits, layer
                if sparse and self.kv_policy == "recompute":
                    self.deferred.append(_Deferred(pos, layer, x))
        if self.mode == "plain":
            chosen = model.head(x)[0]
        return chosen, exit_at, first_conf

    def _run_layer(self, block, x, pos, layer):
        """This position through one layer; under recompute, the deferred tokens that lack it go along."""
        late = [d for d in self.deferred if d.done < layer] if self.deferred else []
        if not late:
            return run_rows(block, x, [pos], self.cache, layer - 1)
        rows = torch.cat([d.state for d in late] + [x])
        positions = [d.pos for d in late] + [pos]
        if layer == self.model.config.n_layers:  # last layer: the deferred tokens need only keys and values
            self.deferred = []
            return run_rows(block, rows, positions, self.cache, layer - 1, kv_only=len(late))
        out = run_rows(block, rows, positions, self.cache, layer - 1)
        for j, d in enumerate(late):
            d.state, d.done = out[j : j + 1], layer
        return out[-1:]


@torch.no_grad()
def generate(
    model: RoutedTransformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    threshold: float | None,
    mode: str = "sparse",
    exits=None,
    measure: str = "max_softmax",
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
    decode=None,
    on_token=None,
    kv_policy: str = DEFAULT_KV_POLICY,
) -> Generation:
    """Generate token by token; each token records its exit layer and first-exit confidence.

    temperature 0 is greedy. A prompt longer than the context is seen through its last
    context-length tokens. `use_cache=False` reruns routed_forward on the whole window at every
    step (the reference for tests). `decode` turns ids into text; `on_token(GeneratedToken)` is
    called as each token is produced (streaming); time spent in either is not counted.
    """
    decoder = Decoder(model, threshold, mode, exits, measure, kv_policy)
    check_request(model, prompt_ids, max_new_tokens)
    model.eval()
    ctx = model.config.context_length
    generator = torch.Generator().manual_seed(seed)
    ids = [int(t) for t in prompt_ids]
    result = Generation(list(ids))
    start = max(0, len(ids) - ctx)
    if use_cache:
        decoder.prefill(ids[start:-1])  # the prompt but its last token: not counted in tokens/s
    outside = 0.0
    began = time.perf_counter()
    for i in range(max_new_tokens):
        if use_cache:
            logits, exit_at, conf = decoder.step(ids[-1], len(ids) - 1 - start)
        else:
            out = routed_forward(model, torch.tensor([ids[start:]], device=decoder.device), threshold, mode,
                                 decoder.exits, measure, kv_policy)
            logits, exit_at, conf = out.logits[0, -1], int(out.exit_layer[0, -1]), float(out.confidence[0, -1])
        token = pick(logits, temperature, top_k, generator)
        ids.append(token)
        t = time.perf_counter()
        result.tokens.append(GeneratedToken(token, decode([token]) if decode else "", exit_at, conf))
        if on_token is not None:
            on_token(result.tokens[-1])
        outside += time.perf_counter() - t
        restarted = window_after(len(ids), start, ctx)
        if restarted != start:
            start = restarted
            if use_cache and i + 1 < max_new_tokens:
                decoder.prefill(ids[start:-1])
    result.seconds = time.perf_counter() - began - outside
    return result
