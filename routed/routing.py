"""Confidence measures and the routing rule (the one place a threshold is applied).

The rule: a token leaves at the early exit when its confidence >= threshold, otherwise it takes
the deep path to the last layer. A threshold of None means no routing (every token goes deep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CONFIDENCE_MEASURES = ("max_softmax", "margin", "neg_entropy")


def confidence_measures(logits: torch.Tensor, logp: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All confidence measures of logits (..., V), each (...,) in [0, 1], from one softmax.

    max_softmax: the top probability (the notes' measure). margin: top-1 minus top-2 probability.
    neg_entropy: negative entropy rescaled to [0, 1] as 1 - H / log(V) (same order as -H).
    `logp`, when the caller already has log_softmax(logits), saves computing it again.
    """
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1) if logp is None else logp
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
