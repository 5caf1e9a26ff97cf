"""Routed execution that really skips work, and token-by-token generation with a KV cache.

Dense mode (the notes' semantics) runs every layer for every token and only chooses which exit's
output to use. Sparse mode stops a token at the first exit whose confidence reaches the threshold:
deeper layers run their attention query and MLP only for the tokens still going. Those layers still
need keys and values at every earlier position, so an exited token's last hidden state is carried
up unchanged and only its K/V projection is computed (state propagation, as in CALM, Schuster et
al. 2022). The two modes agree exactly when every token goes deep, or every token exits first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from routed.model import Block, RoutedTransformer
from routed.routing import check_threshold, confidence, exits_early

MODES = ("dense", "sparse", "plain")


def _check(model: RoutedTransformer, exits, mode: str) -> list[int]:
    if mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}; choose one of {MODES}")
    n = model.config.n_layers
    exits = sorted(set(exits)) if exits is not None else sorted({1, n})
    if not exits or exits[0] < 1 or exits[-1] > n:
        raise ValueError(f"exits: must be layers within 1..{n}, got {exits!r}")
    if exits[-1] != n:
        exits.append(n)  # the last layer always answers
    return exits


def _attend(block: Block, normed: torch.Tensor, rows: torch.Tensor, k_all, v_all, q_pos) -> torch.Tensor:
    """Attention output for the gathered query tokens `rows` (M, C) against every key of their sequence."""
    attn = block.attn
    nh = attn.n_heads
    C = normed.shape[-1]
    hs = C // nh
    w_q, b_q = attn.qkv.weight[:C], attn.qkv.bias[:C]
    q = F.linear(rows, w_q, b_q)  # (B, M, C)
    B, M, _ = q.shape
    q = q.view(B, M, nh, hs).transpose(1, 2)  # (B, nh, M, hs)
    T = k_all.shape[2]
    mask = torch.arange(T).view(1, 1, 1, T) <= q_pos.view(B, 1, M, 1)  # causal, per gathered query
    y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
    return attn.proj(y.transpose(1, 2).reshape(B, M, C))


def _kv(block: Block, normed: torch.Tensor):
    """Keys and values (B, nh, T, hs) of every position from its LayerNorm'd state."""
    attn = block.attn
    C = normed.shape[-1]
    nh = attn.n_heads
    kv = F.linear(normed, attn.qkv.weight[C:], attn.qkv.bias[C:])  # (B, T, 2C)
    k, v = kv.split(C, dim=-1)
    B, T, _ = k.shape
    return (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (k, v))


@dataclass
class RoutedOutput:
    """Per-token output of a routed pass: log-probabilities of the answering exit and where it exited."""

    logits: torch.Tensor  # (B, T, V) logits of the exit each token left at
    exit_layer: torch.Tensor  # (B, T) the layer each token left at
    confidence: torch.Tensor  # (B, T) confidence at the first exit


@torch.no_grad()
def routed_forward(
    model: RoutedTransformer,
    idx: torch.Tensor,
    threshold: float | None,
    mode: str = "sparse",
    exits=None,
    measure: str = "max_softmax",
) -> RoutedOutput:
    """One routed pass over (B, T) tokens in dense, sparse or plain mode (plain: every token to the last layer)."""
    check_threshold(threshold)
    exits = _check(model, exits, mode)
    n = model.config.n_layers
    B, T = idx.shape
    x = model.embed(idx)
    active = torch.ones(B, T, dtype=torch.bool)  # tokens still going deeper
    exit_layer = torch.full((B, T), n, dtype=torch.long)
    out_logits = None
    first_conf = torch.ones(B, T)
    for layer, block in enumerate(model.blocks, start=1):
        if mode != "sparse" or bool(active.all()):
            x = block(x)
        elif bool(active.any()):
            normed = block.ln1(x)
            k, v = _kv(block, normed)  # every position: exited tokens carry their last state
            b_idx, t_idx = active.nonzero(as_tuple=True)
            counts = active.sum(1)
            M = int(counts.max())
            slot = torch.cumsum(active.long(), dim=1) - 1  # position of each active token among its row's
            gathered = torch.zeros(B, M, normed.shape[-1])
            gathered[b_idx, slot[b_idx, t_idx]] = normed[b_idx, t_idx]
            q_pos = torch.full((B, M), -1, dtype=torch.long)
            q_pos[b_idx, slot[b_idx, t_idx]] = t_idx
            q_pos = q_pos.clamp(min=0)  # padded queries attend to position 0 only; discarded below
            h = x[b_idx, t_idx] + _attend(block, normed, gathered, k, v, q_pos)[b_idx, slot[b_idx, t_idx]]
            h = h + block.mlp(block.ln2(h))
            x[b_idx, t_idx] = h  # x is this pass's own tensor: update the going tokens in place
        if layer in exits and mode != "plain":
            if layer == n:
                if out_logits is None:
                    out_logits = model.head(x)
                elif mode == "sparse":  # the last head only for the tokens that got here
                    out_logits[active] = model.head(x[active])
                else:
                    out_logits = torch.where(active.unsqueeze(-1), model.head(x), out_logits)
                break
            logits = model.head(x)
            conf = confidence(logits, measure)
            if layer == exits[0]:
                first_conf = conf
            leaving = active & exits_early(conf, threshold)
            exit_layer[leaving] = layer
            out_logits = logits if out_logits is None else torch.where(leaving.unsqueeze(-1), logits, out_logits)
            active = active & ~leaving
        elif layer == n:
            out_logits = model.head(x)
    return RoutedOutput(out_logits, exit_layer, first_conf)


# --------------------------------------------------------------------------------------------
# Generation


@dataclass
class GeneratedToken:
    token_id: int
    text: str
    exit_layer: int
    confidence: float


@dataclass
class Generation:
    prompt_ids: list[int]
    tokens: list[GeneratedToken] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


class _KVCache:
    """Keys and values per layer for one sequence: (1, nh, T, hs) each."""

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = torch.cat([self.k[layer], k], dim=2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        return self.k[layer], self.v[layer]

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]


def _block_step(block: Block, x: torch.Tensor, cache: _KVCache, layer: int) -> torch.Tensor:
    """One new position (1, 1, C) through a block, attending to the cache."""
    normed = block.ln1(x)
    C = x.shape[-1]
    nh = block.attn.n_heads
    q, k, v = block.attn.qkv(normed).split(C, dim=-1)
    q, k, v = (t.view(1, 1, nh, C // nh).transpose(1, 2) for t in (q, k, v))
    k_all, v_all = cache.append(layer, k, v)
    y = F.scaled_dot_product_attention(q, k_all, v_all)  # the new token sees every cached position
    x = x + block.attn.proj(y.transpose(1, 2).reshape(1, 1, C))
    return x + block.mlp(block.ln2(x))


def _propagate(block: Block, x: torch.Tensor, cache: _KVCache, layer: int) -> None:
    """An exited token's keys and values at a deeper layer, from its carried state."""
    k, v = _kv(block, block.ln1(x))
    cache.append(layer, k, v)


@torch.no_grad()
def _step(model, token: int, pos: int, cache: _KVCache, threshold, mode, exits, measure):
    """Feed one token at position pos; returns (logits of the answering exit, exit layer, first-exit confidence)."""
    n = model.config.n_layers
    x = model.tok_emb(torch.tensor([[token]])) + model.pos_emb(torch.tensor([pos]))
    first_conf, chosen, exit_at = 1.0, None, n
    for layer, block in enumerate(model.blocks, start=1):
        if chosen is not None and mode == "sparse":
            _propagate(block, x, cache, layer - 1)
            continue
        x = _block_step(block, x, cache, layer - 1)
        if mode == "plain" or layer not in exits:
            continue
        logits = model.head(x)[0, -1]
        if layer == n:
            if chosen is None:
                chosen, exit_at = logits, n
            break
        conf = float(confidence(logits, measure))
        if layer == exits[0]:
            first_conf = conf
        if chosen is None and bool(exits_early(torch.tensor(conf), threshold)):
            chosen, exit_at = logits, layer
    if mode == "plain":
        chosen = model.head(x)[0, -1]
    return chosen, exit_at, first_conf


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


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
) -> Generation:
    """Generate token by token; each token records its exit layer and first-exit confidence.

    temperature 0 is greedy. Past the context length the cache is rebuilt from the last half-window.
    `use_cache=False` recomputes every step from scratch (a reference for tests). `decode` turns
    ids into text; `on_token(GeneratedToken)` is called as each token is produced (streaming).
    """
    check_threshold(threshold)
    exits = _check(model, exits, mode)
    if not prompt_ids:
        raise ValueError("prompt: at least one token is needed to start generating")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must be a non-negative integer, got {max_new_tokens!r}")
    model.eval()
    ctx = model.config.context_length
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    result = Generation(list(prompt_ids))
    start = time.perf_counter()

    def prefill(tokens: list[int]) -> tuple[_KVCache, torch.Tensor]:
        cache = _KVCache(model.config.n_layers)
        logits = None
        for pos, tok in enumerate(tokens):
            logits, exit_at, conf = _step(model, tok, pos, cache, threshold, mode, exits, measure)
        return cache, (logits, exit_at, conf)

    # The visible context starts at window_start; when it fills the context length it restarts
    # from the last half-window (the cache is rebuilt), the same rule with and without a cache.
    window_start = max(0, len(ids) - ctx)
    cache, last = prefill(ids[window_start:])
    start = time.perf_counter()  # tokens/s counts generated tokens only
    for _ in range(max_new_tokens):
        if not use_cache:
            out = routed_forward(model, torch.tensor([ids[window_start:]]), threshold, mode, exits, measure)
            last = (out.logits[0, -1], int(out.exit_layer[0, -1]), float(out.confidence[0, -1]))
        logits, exit_at, conf = last
        token = _sample(logits, temperature, top_k, generator)
        ids.append(token)
        text = decode([token]) if decode else ""
        result.tokens.append(GeneratedToken(token, text, exit_at, conf))
        if on_token is not None:
            on_token(result.tokens[-1])
        if len(ids) - window_start > ctx:
            window_start = len(ids) - ctx // 2
            if use_cache:
                cache, last = prefill(ids[window_start:])
        elif use_cache:
            last = _step(model, token, len(ids) - 1 - window_start, cache, threshold, mode, exits, measure)
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def routed_ppl(model: RoutedTransformer, tokens: torch.Tensor, threshold: float | None, mode: str = "sparse",
               exits=None, batch_size: int = 32, exclude_ids=(), token_bytes=None) -> dict:
    """PPL, bits per byte and exit shares of routed execution over a split (same windows as `evaluate`).

    Tokens whose target is in `exclude_ids` (corpus markers) are left out of every number; bits per
    byte needs `token_bytes` (bytes of each token id) and is NaN without it.
    """
    import math

    from routed.records import windows

    exits = _check(model, exits, mode)
    excluded = torch.tensor(sorted(set(map(int, exclude_ids))), dtype=torch.long)
    sizes = torch.as_tensor(token_bytes, dtype=torch.float64) if token_bytes is not None else None
    total, count, n_bytes = 0.0, 0, 0.0
    at_exit = {e: 0 for e in exits}
    for x, y, _ in windows(tokens, model.config.context_length, batch_size):
        out = routed_forward(model, x, threshold, mode, exits)
        keep = ~torch.isin(y, excluded)
        nll = F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten(), reduction="none").view_as(y)
        total += float(nll[keep].double().sum())
        count += int(keep.sum())
        if sizes is not None:
            n_bytes += float(sizes[y[keep]].sum())
        for e in exits:
            at_exit[e] += int(((out.exit_layer == e) & keep).sum())
    if count == 0:
        raise ValueError("tokens: no token to predict (at least two tokens, not all of them markers, are needed)")
    return {"mode": mode, "ppl": float(torch.tensor(total / count).exp()),
            "bpb": total / math.log(2) / n_bytes if n_bytes else float("nan"), "tokens": count,
            "exit_pct": {e: 100.0 * c / count for e, c in at_exit.items()}}
