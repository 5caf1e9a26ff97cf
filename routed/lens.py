"""The per-layer lens: what every exit predicts for every token, and the depth where predictions settle.

Each requested exit is read through the shared head (final LayerNorm + output projection), as the
routing rule reads layer 1. The last layer is always read too: "agrees with the last layer" and the
settling depth compare every exit with it. Only the model interface is used (`config`,
`exit_features(idx, exits)`, `lm_head(h)`), so any model exposing it can be looked through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from routed.records import windows
from routed.routing import CONFIDENCE_MEASURES, confidence_measures

TOP_K = 5
MEMORY_BUDGET = 256 * 2**20  # bytes of logits and softmax held at once
MAX_CELLS = 400_000_000  # layers x tokens the lens may allocate (about 10 bytes each without top-k)


def settling_depth(top1: np.ndarray, layers) -> np.ndarray:
    """The first layer from which every deeper exit's top-1 equals the last exit's, per token.

    `top1` is (L, N): each listed layer's top-1 token id for N tokens; `layers` names its rows (ascending).
    The last row always agrees with itself, so every token settles by the last layer.
    """
    top1 = np.asarray(top1)
    layers = np.asarray(list(layers))
    if top1.ndim != 2 or len(layers) != top1.shape[0] or len(layers) == 0:
        raise ValueError(f"settling_depth: need an (L, N) array and L layer names, got {top1.shape} and {len(layers)}")
    agrees = top1 == top1[-1]
    # agrees with the last exit at this row and at every row below it (a suffix of each column)
    settled = np.logical_and.accumulate(agrees[::-1], axis=0)[::-1]
    return layers[len(layers) - settled.sum(axis=0)]


@dataclass
class LensRecords:
    """Per token (columns) and per exit (rows): the exit's prediction against the true next token."""

    layers: tuple[int, ...]  # the exits read, ascending; the last is the model's last layer
    position: np.ndarray  # (N,) index of the predicted token in the sequence
    window_position: np.ndarray  # (N,) index in its context window of the token that predicts it (0: sees one token)
    token_id: np.ndarray  # (N,) the true next token
    top1: np.ndarray  # (L, N) each exit's top-1 token
    confidence: dict[str, np.ndarray]  # {measure: (L, N)} max_softmax (= top-1 probability), margin, neg_entropy
    true_prob: np.ndarray  # (L, N) probability of the true next token
    true_nll: np.ndarray  # (L, N) its negative log-likelihood, nats
    true_rank: np.ndarray  # (L, N) its rank among the exit's predictions (1: the top-1)
    top_ids: np.ndarray | None = None  # (L, N, k) the top-k tokens, for hover
    top_probs: np.ndarray | None = None  # (L, N, k) their probabilities
    is_marker: np.ndarray | None = None  # (N,) the true token is a corpus marker

    def __len__(self) -> int:
        return len(self.token_id)

    def row(self, layer: int) -> int:
        """The row of `layer` in the (L, N) arrays."""
        if layer not in self.layers:
            raise ValueError(f"layer: {layer} was not read; the lens holds layers {list(self.layers)}")
        return self.layers.index(layer)

    @property
    def top1_prob(self) -> np.ndarray:
        return self.confidence["max_softmax"]

    @property
    def agrees_last(self) -> np.ndarray:
        """(L, N) bool: the exit's top-1 equals the last layer's top-1."""
        return self.top1 == self.top1[-1]

    @property
    def correct(self) -> np.ndarray:
        """(L, N) bool: the exit's top-1 is the true next token."""
        return self.top1 == self.token_id

    def settling(self) -> np.ndarray:
        """(N,) settling depth of each token over the layers read (see settling_depth)."""
        return settling_depth(self.top1, self.layers)

    def subset(self, mask: np.ndarray) -> LensRecords:
        """The tokens where `mask` (N,) is True."""
        def cut(name, value):
            if name == "layers" or value is None:
                return value
            if isinstance(value, dict):
                return {k: v[:, mask] for k, v in value.items()}
            return value[mask] if value.ndim == 1 else value[:, mask]

        return replace(self, **{f.name: cut(f.name, getattr(self, f.name)) for f in fields(self)})

    def without_markers(self) -> LensRecords:
        """These records less the tokens that are corpus markers (unchanged when there are none)."""
        if self.is_marker is None or not self.is_marker.any():
            return self
        return self.subset(~self.is_marker)


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def check_layers(layers, n_layers: int) -> tuple[int, ...]:
    """The layers to read, ascending, with the last layer added; ValueError outside 1..n_layers."""
    if layers is None:
        return tuple(range(1, n_layers + 1))
    try:
        wanted = {int(layer) for layer in layers}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"layers: must be layer numbers within 1..{n_layers}, got {layers!r}") from exc
    if any(not 1 <= layer <= n_layers for layer in wanted):
        raise ValueError(f"layers: must be within 1..{n_layers}, got {sorted(wanted)}")
    return tuple(sorted(wanted | {n_layers}))


@torch.no_grad()
def lens(model, tokens: torch.Tensor, layers=None, top_k: int = TOP_K, marker_ids=(), memory_budget: int = MEMORY_BUDGET) -> LensRecords:
    """Lens records of a token sequence, read in contiguous context windows (see routed.records.windows).

    Windows are batched and each exit's logits made in chunks of positions, so memory stays within
    about `memory_budget` bytes besides the records themselves, whatever the vocabulary.
    """
    cfg = model.config
    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()
    n = len(tokens) - 1
    if n < 1:
        raise ValueError("tokens: at least two tokens are needed (the first token is only context)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k: must be an integer in 0..{cfg.vocab_size}, got {top_k!r}")
    layers = check_layers(layers, cfg.n_layers)
    L, V = len(layers), cfg.vocab_size
    if L * n * (1 + top_k) > MAX_CELLS:
        raise ValueError(f"tokens: {n:,} tokens x {L} layers is too much for the lens; pass fewer tokens or layers")
    model.eval()
    device = _device(model)
    width = getattr(cfg, "d_model", 1024)
    batch = max(1, min(64, memory_budget // (cfg.context_length * width * L * 4)))  # windows per trunk pass
    chunk = max(1, memory_budget // (V * 4 * 4))  # positions per head call: logits, log-probs, probs, a mask
    top1 = np.zeros((L, n), np.int64)
    conf = {m: np.zeros((L, n), np.float32) for m in CONFIDENCE_MEASURES}
    true_prob, true_nll = np.zeros((L, n), np.float32), np.zeros((L, n), np.float32)
    true_rank = np.zeros((L, n), np.int64)
    top_ids = np.zeros((L, n, top_k), np.int64) if top_k else None
    top_probs = np.zeros((L, n, top_k), np.float32) if top_k else None
    window_position = np.zeros(n, np.int64)
    for x, y, starts in windows(tokens, cfg.context_length, batch):
        features = model.exit_features(x.to(device), exits=list(layers))
        B, T = y.shape
        columns = (torch.tensor(starts).unsqueeze(1) + torch.arange(T)).flatten().numpy()  # predicted position - 1
        window_position[columns] = np.tile(np.arange(T), B)
        targets = y.flatten().to(device)
        for r, layer in enumerate(layers):
            h = features[layer].flatten(0, 1)
            for lo in range(0, len(targets), chunk):
                cols, target = columns[lo : lo + chunk], targets[lo : lo + chunk, None]
                logits = model.lm_head(h[lo : lo + chunk]).float()
                logp = torch.log_softmax(logits, dim=-1)
                for m, values in confidence_measures(logits, logp).items():
                    conf[m][r, cols] = values.cpu().numpy()
                true_logp = logp.gather(-1, target)
                true_nll[r, cols] = -true_logp.squeeze(-1).cpu().numpy()
                true_prob[r, cols] = true_logp.exp().squeeze(-1).cpu().numpy()
                true_rank[r, cols] = (logp > true_logp).sum(-1).cpu().numpy() + 1
                if top_k:
                    best = logp.topk(top_k, dim=-1)
                    top1[r, cols] = best.indices[:, 0].cpu().numpy()
                    top_ids[r, cols] = best.indices.cpu().numpy()
                    top_probs[r, cols] = best.values.exp().cpu().numpy()
                else:
                    top1[r, cols] = logp.argmax(-1).cpu().numpy()
    token_id = tokens[1:].numpy()
    return LensRecords(
        layers=layers,
        position=np.arange(1, n + 1),
        window_position=window_position,
        token_id=token_id,
        top1=top1,
        confidence=conf,
        true_prob=true_prob,
        true_nll=true_nll,
        true_rank=true_rank,
        top_ids=top_ids,
        top_probs=top_probs,
        is_marker=np.isin(token_id, np.asarray(list(marker_ids), dtype=np.int64)),
    )


def n_windows(n_tokens: int, context_length: int) -> int:
    """Context windows a sequence of n_tokens is cut into (each predicts up to context_length tokens)."""
    return max(1, math.ceil((n_tokens - 1) / context_length))
