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
    """Keys and values per layer for one sequence: (n_layers, n_heads, capacity, head_size), by position."""

    def __init__(self, model: RoutedTransformer, capacity: int | None = None):
        cfg = model.config
        weight = model.tok_emb.weight
        self.capacity = capacity or cfg.context_length
        shape = (cfg.n_layers, cfg.n_heads, self.capacity, cfg.d_model // cfg.n_heads)
        self.k = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        self.v = torch.zeros_like(self.k)
        # which positions have keys at each layer; kept on the CPU so that building a mask never syncs a GPU
        self.present = torch.zeros(cfg.n_layers, self.capacity, dtype=torch.bool)

    def write(self, layer: int, pos: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys and values (n_heads, R, head_size) of the R positions `pos` at `layer` (0-based)."""
        if pos and pos[-1] - pos[0] + 1 == len(pos):  # contiguous: a slice, no index tensor
            self.k[layer, :, pos[0] : pos[-1] + 1] = k
            self.v[layer, :, pos[0] : pos[-1] + 1] = v
            self.present[layer, pos[0] : pos[-1] + 1] = True
            return
        index = torch.tensor(pos, device=self.k.device)
        self.k[layer, :, index] = k
        self.v[layer, :, index] = v
        self.present[layer, pos] = True

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (rejected drafts, or a window that slides)."""
        self.present[:, length:] = False

    def mask(self, layer: int, pos: list[int]) -> torch.Tensor | None:
        """Attention mask (R, upto) of queries at `pos`: earlier-or-same positions that have keys; None if all do."""
        upto = pos[-1] + 1
        present = self.present[layer, :upto]
        if len(pos) == 1 and bool(present.all()):
            return None  # one query at the end that sees every cached position: no mask needed
        allowed = torch.arange(upto).view(1, upto) <= torch.tensor(pos).view(-1, 1)
        return (allowed & present).to(self.k.device)


def kv_rows(block: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (n_heads, R, head_size) of rows x (R, C), without their queries."""
    C = x.shape[-1]
    w, b = block.attn.qkv.weight, block.attn.qkv.bias
    k, v = F.linear(block.ln1(x), w[C:], b[C:]).split(C, dim=-1)
    return _heads(k, block), _heads(v, block)


def _heads(t: torch.Tensor, block: Block) -> torch.Tensor:
    R, C = t.shape
    nh = block.attn.n_heads
    return t.view(R, nh, C // nh).transpose(0, 1)  # (R, C) -> (nh, R, hs)


def run_rows(block: Block, x: torch.Tensor, pos: list[int], cache: KVCache, layer: int, kv_only: int = 0):
    """Rows x (R, C) at ascending positions `pos` through `block` (layer index `layer`, 0-based).

    Every row's keys and values are written to the cache; rows from `kv_only` on also attend (to
    every cached position up to their own that has keys) and run the MLP. Returns those rows' new
    states (R - kv_only, C), or None when every row only wrote its keys and values.
    """
    C = x.shape[-1]
    if kv_only:
        k, v = kv_rows(block, x[:kv_only])
        cache.write(layer, pos[:kv_only], k, v)
    rows, rpos = x[kv_only:], pos[kv_only:]
    if not rpos:
        return None
    q, k, v = block.attn.qkv(block.ln1(rows)).split(C, dim=-1)
    cache.write(layer, rpos, _heads(k, block), _heads(v, block))
    upto = rpos[-1] + 1
    mask = cache.mask(layer, rpos)
    y = F.scaled_dot_product_attention(  # (1, nh, R, hs) against (1, nh, upto, hs)
        _heads(q, block).unsqueeze(0), cache.k[layer, :, :upto].unsqueeze(0), cache.v[layer, :, :upto].unsqueeze(0),
        attn_mask=mask,
    )
    h = rows + block.attn.proj(y[0].transpose(0, 1).reshape(len(rpos), C))
    return h + block.mlp(block.ln2(h))
