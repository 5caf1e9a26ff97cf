"""Calibration of confidence: reliability-diagram bins and expected calibration error (ECE).

A confidence measure is calibrated when, among tokens given confidence c, a share c is right
(the exit's top-1 is the true next token). Only max softmax and the learned probe claim to be
probabilities; margin and rescaled negative entropy are scores in [0, 1], so their ECE says how far
reading them as probabilities would mislead.
"""

from __future__ import annotations

import numpy as np

N_BINS = 15


def _check(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hit = np.asarray(correct).ravel()
    if len(conf) != len(hit):
        raise ValueError(f"confidence and correct: need one label per confidence, got {len(conf)} and {len(hit)}")
    if len(conf) == 0:
        raise ValueError("confidence: no tokens to measure calibration on")
    if np.isnan(conf).any() or conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidence: every value must be a number in [0, 1]")
    return conf, hit.astype(np.float64)


def reliability_bins(confidence, correct, n_bins: int = N_BINS) -> dict[str, np.ndarray | float]:
    """Equal-width bins on [0, 1]: tokens, mean confidence and accuracy per bin (NaN where empty), and the ECE.

    ECE = sum over bins of (tokens in bin / tokens) x |accuracy - mean confidence|.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: must be a positive integer, got {n_bins!r}")
    conf, hit = _check(confidence, correct)
    index = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)  # confidence 1.0 joins the top bin
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=hit, minlength=n_bins) / count
    gaps = np.where(count > 0, np.abs(accuracy - mean_conf), 0.0)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count.astype(np.int64),
        "confidence": mean_conf,
        "accuracy": accuracy,
        "ece": float((count * gaps).sum() / count.sum()),
    }


def expected_calibration_error(confidence, correct, n_bins: int = N_BINS) -> float:
    """ECE of `confidence` (N,) in [0, 1] as a probability that `correct` (N,) holds, over equal-width bins."""
    return reliability_bins(confidence, correct, n_bins)["ece"]


def reliability_of_lens(lens, extra: dict[str, np.ndarray] | None = None, n_bins: int = N_BINS) -> dict[int, dict[str, dict]]:
    """Reliability bins of every exit of a LensRecords for each confidence measure it holds.

    `extra` adds measures read at the first exit only (e.g. {"probe": (N,) confidences}).
    Returns {layer: {measure: reliability_bins(...)}}.
    """
    table = {}
    for r, layer in enumerate(lens.layers):
        table[layer] = {m: reliability_bins(v[r], lens.correct[r], n_bins) for m, v in lens.confidence.items()}
    for measure, values in (extra or {}).items():
        table[lens.layers[0]][measure] = reliability_bins(values, lens.correct[0], n_bins)
    return table
