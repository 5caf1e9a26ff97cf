"""Routed execution of a batch that really skips work, under a named policy for the skipped keys and values.

Dense mode (the notes' semantics) runs every layer for every token and only chooses which exit's
output to use. Sparse mode stops a token at the first exit whose confidence reaches the threshold;
deeper layers run their query, attention and MLP only for the tokens still going. Those layers'
attention still reads keys and values at earlier positions, and the KV policy says where an exited
token's come from (the names and costs are routed.ledger's):

- propagate: its last state is carried up and projected to keys and values at each deeper layer (CALM);
- copy: its keys and values at the layer it left are reused at every deeper layer (no extra work);
- recompute: its deeper layers run anyway (all but the last, where only keys and values are needed), so
  later tokens see exactly the dense states: the output is dense routing's;
- drop: it has no keys or values deeper; deeper queries attend only to the tokens present (Mixture-of-Depths).

In a stream, recompute is lazy (routed.generate runs the deferred layers with the next deep token);
over a batch every exited token's deeper layers are run, as a stream eventually pays for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from routed.ledger import KV_POLICIES
from routed.model import Block, RoutedTransformer
from routed.routing import check_threshold, confidence, exits_early

MODES = ("dense", "sparse", "plain")
DEFAULT_KV_POLICY = "propagate"


def check_exits(model: RoutedTransformer, exits, mode: str) -> list[int]:
    """The exit layers, sorted, ending at the last layer (default: layer 1 and the last)."""
    if mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}; choose one of {MODES}")
    n = model.config.n_layers
    exits = sorted(set(exits)) if exits is not None else sorted({1, n})
    if not exits or exits[0] < 1 or exits[-1] > n:
        raise ValueError(f"exits: must be layers within 1..{n}, got {exits!r}")
    if exits[-1] != n:
        exits.append(n)  # the last layer always answers
    return exits


def check_kv_policy(kv_policy: str) -> None:
    if kv_policy not in KV_POLICIES:
        raise ValueError(f"kv_policy: unknown KV policy {kv_policy!r}; choose one of {', '.join(KV_POLICIES)}")


def trained_exits(train_config, n_layers: int) -> list[int]:
    """The exits a checkpoint was trained to answer at: layers with a positive loss weight, and the last."""
    weights = dict(train_config.layer_weights)
    for layer, w in (train_config.final_layer_weights or {}).items():
        weights[layer] = max(w, weights.get(layer, 0.0))
    return sorted({int(layer) for layer, w in weights.items() if w > 0 and int(layer) <= n_layers} | {n_layers})


def _heads(t: torch.Tensor, nh: int) -> torch.Tensor:
    B, T, C = t.shape
    return t.view(B, T, nh, C // nh).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)


def _finish(block: Block, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The rest of a block once attention has produced y (..., C): out-projection, residual, MLP."""
    x = x + block.attn.proj(y)
    return x + block.mlp(block.ln2(x))


def _full_layer(block: Block, x: torch.Tensor):
    """Every token through the block, as Block.forward does; also returns its keys and values (B, nh, T, hs)."""
    B, T, C = x.shape
    nh = block.attn.n_heads
    q, k, v = (_heads(t, nh) for t in block.attn.qkv(block.ln1(x)).split(C, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return _finish(block, x, y.transpose(1, 2).reshape(B, T, C)), k, v


def _sparse_layer(block: Block, x: torch.Tensor, going: torch.Tensor, kv_policy: str, last_k, last_v):
    """The block for the tokens `going` (B, T) only; exited tokens' keys and values come from the policy.

    Updates x in place and returns (keys, values, which positions have them), each (B, nh, T, hs) / (B, T).
    """
    B, T, C = x.shape
    nh = block.attn.n_heads
    b, t = going.nonzero(as_tuple=True)
    rows = x[b, t]  # (N, C)
    q, k, v = block.attn.qkv(block.ln1(rows)).split(C, dim=-1)
    keys, values = x.new_zeros(B, T, C), x.new_zeros(B, T, C)
    keys[b, t], values[b, t] = k, v
    present = torch.ones_like(going)
    exited = ~going
    if kv_policy in ("propagate", "recompute"):  # recompute reaches here at the last layer only
        eb, et = exited.nonzero(as_tuple=True)
        w, bias = block.attn.qkv.weight, block.attn.qkv.bias
        keys[eb, et], values[eb, et] = F.linear(block.ln1(x[eb, et]), w[C:], bias[C:]).split(C, dim=-1)
        keys, values = _heads(keys, nh), _heads(values, nh)
    elif kv_policy == "copy":
        keys, values = _heads(keys, nh), _heads(values, nh)
        keep = exited.view(B, 1, T, 1)
        keys, values = torch.where(keep, last_k, keys), torch.where(keep, last_v, values)
    else:  # drop
        keys, values = _heads(keys, nh), _heads(values, nh)
        present = going
    if len(b) == 0:
        return keys, values, present
    # Queries of the going tokens, packed per sequence into (B, M) slots; padding slots see everything.
    slot = torch.cumsum(going.long(), dim=1) - 1
    M = int(slot[:, -1].max()) + 1
    packed = x.new_zeros(B, M, C)
    packed[b, slot[b, t]] = q
    q_pos = torch.full((B, M), T, dtype=torch.long, device=x.device)
    q_pos[b, slot[b, t]] = t
    mask = (torch.arange(T, device=x.device).view(1, 1, T) <= q_pos.view(B, M, 1)) & present.view(B, 1, T)
    y = F.scaled_dot_product_attention(_heads(packed, nh), keys, values, attn_mask=mask.unsqueeze(1))
    y = y.transpose(1, 2).reshape(B, M, C)[b, slot[b, t]]  # (N, C)
    x[b, t] = _finish(block, rows, y)
    return keys, values, present


@dataclass
class RoutedOutput:
    """Per-token output of a routed pass: the answering exit's logits, where each token left, its first confidence."""

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
    kv_policy: str = DEFAULT_KV_POLICY,
    cache=None,
) -> RoutedOutput:
    """One routed pass over (B, T) tokens in dense, sparse (under `kv_policy`) or plain mode (no routing).

    cache: a routed.kvcache.KVCache (B = 1) to fill with every layer's keys and values of positions 0..T-1.
    """
    check_threshold(threshold)
    exits = check_exits(model, exits, mode)
    check_kv_policy(kv_policy)
    n = model.config.n_layers
    B, T = idx.shape
    x = model.embed(idx)
    active = torch.ones(B, T, dtype=torch.bool, device=idx.device)  # tokens still going deeper
    exit_layer = torch.full((B, T), n, dtype=torch.long, device=idx.device)
    first_conf = torch.ones(B, T, device=idx.device)
    out = None
    k = v = None
    for layer, block in enumerate(model.blocks, start=1):
        going = active
        if mode != "sparse" or (kv_policy == "recompute" and layer < n):
            going = None  # every token runs this layer
        if going is None or bool(going.all()):
            x, k, v = _full_layer(block, x)
            present = None
        else:
            k, v, present = _sparse_layer(block, x, going, kv_policy, k, v)
        if cache is not None:
            cache.write(layer - 1, list(range(T)), k, v)
            if present is not None:
                cache.mark(layer - 1, present[0])
        if mode == "plain" or layer not in exits:
            continue
        if mode == "dense" or bool(active.all()):
            logits = model.head(x)
            if out is None:
                out = logits
            if layer == n:
                out = torch.where(active.unsqueeze(-1), logits, out)
                break
            conf = confidence(logits, measure)
            leaving = active & exits_early(conf, threshold)
            out = torch.where(leaving.unsqueeze(-1), logits, out)
        else:  # sparse: this exit's head for the tokens that reached it only
            b, t = active.nonzero(as_tuple=True)
            logits = model.head(x[b, t])
            if layer == n:
                out[b, t] = logits
                break
            conf = torch.zeros(B, T, device=idx.device)
            conf[b, t] = confidence(logits, measure)
            leaving = active & exits_early(conf, threshold)
            lb, lt = leaving.nonzero(as_tuple=True)
            out[lb, lt] = logits[exits_early(conf[b, t], threshold)]
        if layer == exits[0]:
            first_conf = conf
        exit_layer[leaving] = layer
        active = active & ~leaving
    if mode == "plain":
        out = model.head(x)
    return RoutedOutput(out, exit_layer, first_conf)


@torch.no_grad()
def routed_ppl(model: RoutedTransformer, tokens: torch.Tensor, threshold: float | None, mode: str = "sparse",
               exits=None, batch_size: int = 32, exclude_ids=(), token_bytes=None,
               kv_policy: str = DEFAULT_KV_POLICY) -> dict:
    """PPL, bits per byte and exit shares of routed execution over a split (same windows as `evaluate`).

    Tokens whose target is in `exclude_ids` (corpus markers) are left out of every number; bits per
    byte needs `token_bytes` (bytes of each token id) and is NaN without it. `execution` names the
    routed.ledger execution that produced the PPL.
    """
    from routed.records import windows

    exits = check_exits(model, exits, mode)
    check_kv_policy(kv_policy)
    excluded = torch.tensor(sorted(set(map(int, exclude_ids))), dtype=torch.long)
    sizes = torch.as_tensor(token_bytes, dtype=torch.float64) if token_bytes is not None else None
    total, count, n_bytes = 0.0, 0, 0.0
    at_exit = {e: 0 for e in exits}
    device = model.tok_emb.weight.device
    for x, y, _ in windows(tokens, model.config.context_length, batch_size):
        out = routed_forward(model, x.to(device), threshold, mode, exits, kv_policy=kv_policy)
        exit_layer = out.exit_layer.cpu()
        keep = ~torch.isin(y, excluded)
        nll = F.cross_entropy(out.logits.flatten(0, 1).float().cpu(), y.flatten(), reduction="none").view_as(y)
        total += float(nll[keep].double().sum())
        count += int(keep.sum())
        if sizes is not None:
            n_bytes += float(sizes[y[keep]].sum())
        for e in exits:
            at_exit[e] += int(((exit_layer == e) & keep).sum())
    if count == 0:
        raise ValueError("tokens: no token to predict (at least two tokens, not all of them markers, are needed)")
    execution = kv_policy if mode == "sparse" else mode
    return {"mode": mode, "execution": execution, "ppl": float(torch.tensor(total / count).exp()),
            "bpb": total / math.log(2) / n_bytes if n_bytes else float("nan"), "tokens": count,
            "exit_pct": {e: 100.0 * c / count for e, c in at_exit.items()}}
