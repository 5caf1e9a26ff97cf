"""The key/value cache of one sequence, and the one way new positions run a layer against it.

Keys and values are stored by position (0 .. capacity-1) with a mask of the positions that have them
at each layer: under the sparse KV policies a position may have keys at some layers and not others
(dropped, or not yet recomputed), and a speculative draft that is rejected is forgotten by clearing
its positions. Every cached decoding path (plain, routed, speculative drafts and verification,
lazy recomputation) runs rows through `run_rows`, so they all attend in exactly the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from routed.model import Block, RoutedTransformer


class KVCache:
    """Keys and values per layer for one sequence: (n_layers, 1, n_heads, capacity, head_size), by position."""

    def __init__(self, model: RoutedTransformer, capacity: int | None = None):
        cfg = model.config
        weight = model.tok_emb.weight
        self.capacity = capacity or cfg.context_length
        shape = (cfg.n_layers, 1, cfg.n_heads, self.capacity, cfg.d_model // cfg.n_heads)
        self.k = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        self.v = torch.zeros_like(self.k)
        # which positions have keys at each layer; kept on the CPU so that building a mask never syncs a GPU
        self.present = torch.zeros(cfg.n_layers, self.capacity, dtype=torch.bool)
        # per layer, in Python: one past the last position written, and whether any earlier one may lack keys
        self.end = [0] * cfg.n_layers
        self.holes = [False] * cfg.n_layers

    def write(self, layer: int, pos: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys and values (1, n_heads, R, head_size) of the R positions `pos` at `layer` (0-based)."""
        if pos[0] > self.end[layer]:
            self.holes[layer] = True  # positions skipped at this layer (dropped, or deferred)
        self.end[layer] = max(self.end[layer], pos[-1] + 1)
        if pos[-1] - pos[0] + 1 == len(pos):  # contiguous: a slice, no index tensor
            self.k[layer, :, :, pos[0] : pos[-1] + 1] = k
            self.v[layer, :, :, pos[0] : pos[-1] + 1] = v
            self.present[layer, pos[0] : pos[-1] + 1] = True
            return
        self.holes[layer] = True  # scattered positions: let the mask check which ones have keys
        index = torch.tensor(pos, device=self.k.device)
        self.k[layer, :, :, index] = k
        self.v[layer, :, :, index] = v
        self.present[layer, pos] = True

    def mark(self, layer: int, present: torch.Tensor) -> None:
        """Say which of positions 0..len(present)-1 have keys at `layer` (a bool tensor)."""
        present = present.cpu()
        self.present[layer, : len(present)] = present
        self.holes[layer] = self.holes[layer] or not bool(present.all())

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (rejected drafts, or a window that slides)."""
        self.present[:, length:] = False
        self.end = [min(e, length) for e in self.end]

    def mask(self, layer: int, pos: list[int]) -> torch.Tensor | None:
        """Attention mask (R, upto) of queries at `pos`: earlier-or-same positions that have keys; None if all do."""
        upto = pos[-1] + 1
        if len(pos) == 1 and (not self.holes[layer] or bool(self.present[layer, :upto].all())):
            return None  # one query at the end that sees every cached position: no mask needed
        allowed = torch.arange(upto).view(1, upto) <= torch.tensor(pos).view(-1, 1)
        return (allowed & self.present[layer, :upto]).to(self.k.device)


def _split_heads(t: torch.Tensor, parts: int, block: Block) -> torch.Tensor:
    """(R, parts * C) -> (parts, 1, n_heads, R, head_size): queries, keys, values as attention takes them."""
    R = t.shape[0]
    nh = block.attn.n_heads
    return t.view(1, R, parts, nh, -1).permute(2, 0, 3, 1, 4)


def kv_rows(block: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (1, n_heads, R, head_size) of rows x (R, C), without their queries."""
    C = x.shape[-1]
    w, b = block.attn.qkv.weight, block.attn.qkv.bias
    kv = _split_heads(F.linear(block.ln1(x), w[C:], b[C:]), 2, block)
    return kv[0], kv[1]


def run_rows(block: Block, x: torch.Tensor, pos: list[int], cache: KVCache, layer: int, kv_only: int = 0):
    """Rows x (R, C) at ascending positions `pos` through `block` (layer index `layer`, 0-based).

    Every row's keys and values are written to the cache; rows from `kv_only` on also attend (to
    every cached position up to their own that has keys) and run the MLP. Returns those rows' new
    states (R - kv_only, C), or None when every row only wrote its keys and values.
    """
    if kv_only:
        k, v = kv_rows(block, x[:kv_only])
        cache.write(layer, pos[:kv_only], k, v)
    rows, rpos = x[kv_only:], pos[kv_only:]
    if not rpos:
        return None
    q, k, v = _split_heads(block.attn.qkv(block.ln1(rows)), 3, block)
    cache.write(layer, rpos, k, v)
    upto = rpos[-1] + 1
    # (1, nh, R, hs) queries against (1, nh, upto, hs) keys and values
    y = F.scaled_dot_product_attention(q, cache.k[layer, :, :, :upto], cache.v[layer, :, :, :upto],
                                       attn_mask=cache.mask(layer, rpos))
    h = rows + block.attn.proj(y[0].transpose(0, 1).reshape(rows.shape))
    return h + block.mlp(block.ln2(h))
