"""Confidence measures, the routing rule, and what a routed token costs.

The rule: a token leaves at the early exit when its confidence >= threshold, otherwise it takes
the deep path to the last layer. A threshold of None means no routing (every token goes deep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from routed.config import ModelConfig

CONFIDENCE_MEASURES = ("max_softmax", "margin", "neg_entropy")


def confidence_measures(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """All confidence measures of logits (..., V), each (...,) in [0, 1], from one softmax.

    max_softmax: the top probability (the notes' measure). margin: top-1 minus top-2 probability.
    neg_entropy: negative entropy rescaled to [0, 1] as 1 - H / log(V) (same order as -H).
    """
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    top2 = p.topk(2, dim=-1).values
    entropy = -(p * logp).sum(-1)
    return {
        "max_softmax": _max_softmax(logits),
        "margin": top2[..., 0] - top2[..., 1],
        "neg_entropy": 1.0 - entropy / math.log(logits.shape[-1]),
    }


def confidence(logits: torch.Tensor, measure: str = "max_softmax") -> torch.Tensor:
    """One confidence measure of logits (..., V) -> (...,)."""
    if measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"measure: unknown confidence measure {measure!r}; choose one of {CONFIDENCE_MEASURES}")
    if measure == "max_softmax":  # the routing hot path: no full softmax kept
        return _max_softmax(logits.float())
    return confidence_measures(logits)[measure]


def _max_softmax(logits: torch.Tensor) -> torch.Tensor:
    # One expression everywhere, so that sweeps over stored confidences and live routing agree bit for bit.
    return (logits.amax(-1) - torch.logsumexp(logits, -1)).exp()


@dataclass
class ConfidenceProbe:
    """A learned confidence: sigmoid(w . h + b) of the early exit's normalised state h.

    Trained to predict whether the early exit's argmax is right, it replaces max softmax without
    computing the early exit's logits, so deep tokens skip one output head.
    """

    weight: torch.Tensor  # (C,)
    bias: torch.Tensor  # ()

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(features.float() @ self.weight + self.bias)


def fit_confidence_probe(features: torch.Tensor, correct: torch.Tensor, l2: float = 1e-3, steps: int = 100) -> ConfidenceProbe:
    """Logistic regression of `correct` (N,) on `features` (N, C), by L-BFGS."""
    x, y = features.float(), correct.float()
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError("features: need (N, C) features and N labels, N > 0")
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ConfidenceProbe(w.detach(), b.detach())


def check_threshold(threshold: float | None) -> None:
    """Raise ValueError unless threshold is None or a number in [0, 1]."""
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold:
        raise ValueError(f"threshold: must be a number in [0, 1], got {threshold!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: must be in [0, 1], got {threshold!r}")


def exits_early(conf: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """The routing rule: True where a token takes the shallow path (confidence >= threshold)."""
    check_threshold(threshold)
    if threshold is None:
        return torch.zeros_like(conf, dtype=torch.bool)
    return conf >= threshold


def route(
    logits: dict[int, torch.Tensor], threshold: float | None, measure: str = "max_softmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routed output of a forward pass: (per-token logits of the chosen path, shallow mask).

    `logits` holds the early exit (its smallest key) and the last layer (its largest key).
    """
    early, last = min(logits), max(logits)
    shallow = exits_early(confidence(logits[early], measure), threshold)
    chosen = torch.where(shallow.unsqueeze(-1), logits[early], logits[last])
    return chosen, shallow


@dataclass(frozen=True)
class TokenCost:
    """Forward FLOPs per token of one transformer layer, of one output head, and of a layer's K/V projection."""

    layer: float
    head: float
    kv: float  # what an exited token still pays per deeper layer in sparse mode (state propagation)

    @classmethod
    def of(cls, cfg: ModelConfig) -> TokenCost:
        d, T = cfg.d_model, cfg.context_length
        # qkv 6d^2 + out-proj 2d^2 + MLP 16d^2 multiply-adds x2, plus attention over (T+1)/2
        # positions on average for QK^T and AV (2 * 2d each).
        layer = 24 * d * d + 2 * d * (T + 1)
        head = 2 * d * cfg.vocab_size
        return cls(layer=float(layer), head=float(head), kv=float(4 * d * d))


def compute_pct(shallow_frac, n_layers: int, exit_layer: int = 1, reference_layers: int | None = None):
    """The notes' Compute%: layers run per token relative to a `reference_layers` model (default n_layers).

    Works on floats and on arrays/tensors of shallow fractions.
    """
    ref = reference_layers or n_layers
    return 100.0 * (shallow_frac * exit_layer + (1 - shallow_frac) * n_layers) / ref


def flops_pct(
    shallow_frac,
    cfg: ModelConfig,
    exit_layer: int = 1,
    routed: bool = True,
    reference_layers: int = 3,
    propagate_kv: bool = False,
):
    """FLOPs per token relative to a plain `reference_layers`-layer model of the same width.

    An exited token pays its layers and one head (in sparse execution, with propagate_kv, also the
    K/V projection of every deeper layer); a deep token pays all layers and, when routed, two heads
    (one for the confidence check). Unrouted models pay their layers and one head.
    """
    cost = TokenCost.of(cfg)
    reference = reference_layers * cost.layer + cost.head
    shallow = exit_layer * cost.layer + cost.head
    if propagate_kv:
        shallow += (cfg.n_layers - exit_layer) * cost.kv
    second_head = routed and exit_layer < cfg.n_layers  # a single-exit model never checks twice
    deep = cfg.n_layers * cost.layer + (2 if second_head else 1) * cost.head
    return 100.0 * (shallow_frac * shallow + (1 - shallow_frac) * deep) / reference


def multi_exit_pct(exit_fracs: dict, cfg: ModelConfig, exits: list[int], reference_layers: int = 3, propagate_kv: bool = False):
    """(Compute%, FLOPs%) when a share exit_fracs[e] of tokens leaves at exit e (shares sum to 1).

    A token leaving at exit e has run e layers and checked every exit up to e, paying one head
    each; relative to a plain `reference_layers`-layer model with one head. For exits {1, n} this
    is compute_pct and flops_pct.
    """
    cost = TokenCost.of(cfg)
    exits = sorted(exits)
    layers = sum(frac * e for e, frac in exit_fracs.items())
    flops = 0.0
    for e, frac in exit_fracs.items():
        per_token = e * cost.layer + (exits.index(e) + 1) * cost.head
        if propagate_kv:
            per_token += (cfg.n_layers - e) * cost.kv
        flops = flops + frac * per_token
    return 100.0 * layers / reference_layers, 100.0 * flops / (reference_layers * cost.layer + cost.head)
