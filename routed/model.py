"""The decoder-only transformer whose every layer can be an exit.

One shared final LayerNorm and one output head (tied to the token embedding) read out any layer,
so a single forward pass returns the logits of every exit asked for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from routed.config import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.proj(y)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model),
            nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class RoutedTransformer(nn.Module):
    """Causal LM with an exit after every layer; `forward` returns {layer: logits}."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.is_routed_block:
            raise ValueError("model config: grouped-query attention, d_ff and gated_mlp describe pretrained models; "
                             "routed's own block has full attention and a 4 x d_model GELU MLP")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: the same head reads every exit
        self.apply(self._init_weights)
        # Residual projections start small so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings, (B, T) -> (B, T, C)."""
        T = idx.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"sequence of {T} tokens exceeds context_length={self.config.context_length}")
        pos = torch.arange(T, device=idx.device)
        return self.drop(self.tok_emb(idx) + self.pos_emb(pos))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The shared exit: final LayerNorm + tied output projection, (..., C) -> (..., V)."""
        return self.lm_head(self.ln_f(hidden))

    def exit_features(self, idx: torch.Tensor, exits=None) -> dict[int, torch.Tensor]:
        """Final-LayerNorm'd hidden states (B, T, C) of each requested exit, one trunk pass.

        The head is `lm_head` applied to these; the trainer fuses that product with the loss.
        """
        wanted = sorted(set(exits)) if exits is not None else list(range(1, self.config.n_layers + 1))
        if not wanted or wanted[0] < 1 or wanted[-1] > self.config.n_layers:
            raise ValueError(f"exits must be within 1..{self.config.n_layers}, got {exits!r}")
        x = self.embed(idx)
        features: dict[int, torch.Tensor] = {}
        for layer, block in enumerate(self.blocks[: wanted[-1]], start=1):
            x = block(x)
            if layer in wanted:
                features[layer] = self.ln_f(x)
        return features

    def forward(self, idx: torch.Tensor, exits=None) -> dict[int, torch.Tensor]:
        """Logits (B, T, V) of each requested exit layer (default: every layer), one trunk pass."""
        return {layer: self.lm_head(h) for layer, h in self.exit_features(idx, exits).items()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
