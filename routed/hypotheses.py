"""What could produce the notes' numbers? Candidate mistakes applied to our own model and records.

Hypotheses, not findings: each recomputes the notes' threshold table (Shallow% and PPL at .5 … .95) with
one candidate error, so the tables can be set beside the notes'. Candidates:
- confidence as a softmax over the batch dimension (the max over the vocabulary of softmax(logits, dim=0))
  for batches of B sequences, or over the sequence dimension (dim=1), instead of over the vocabulary;
- PPL as 2 ** (mean NLL in nats) instead of e ** (mean NLL);
- PPL as the mean of per-batch PPLs instead of exp of the mean NLL over all tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from routed.notes import NOTES_THRESHOLD_TABLES, NOTES_THRESHOLDS
from routed.records import windows

BATCH_SIZES = (4, 8, 16)


@torch.no_grad()
def wrong_dimension_confidences(model, tokens: torch.Tensor, batch_sizes=BATCH_SIZES, early_exit: int = 1) -> dict:
    """Early-exit confidences with the softmax over the batch (per B) or sequence dimension, aligned with
    the rows of routed.records.evaluate (full windows in order, then the short last window)."""
    model.eval()
    ctx = model.config.context_length
    out = {}
    for b in batch_sizes:
        parts = []
        for x, _, _ in windows(tokens, ctx, b):
            logits = model(x, exits=[early_exit])[early_exit].float()
            parts.append(torch.softmax(logits, dim=0).amax(-1).flatten())  # a batch of one gives 1.0 everywhere
        out[f"softmax over batch (B={b})"] = torch.cat(parts).numpy()
    parts = []
    for x, _, _ in windows(tokens, ctx, 32):
        logits = model(x, exits=[early_exit])[early_exit].float()
        parts.append(torch.softmax(logits, dim=1).amax(-1).flatten())
    out["softmax over sequence"] = torch.cat(parts).numpy()
    return out


def _routed_nll(records, conf: np.ndarray, t: float) -> np.ndarray:
    return np.where(conf >= t, records.nll[records.early_exit], records.nll[records.final_exit]).astype(np.float64)


def _batch_mean_ppl(records, nll: np.ndarray, batch_windows: int = 32) -> float:
    window = (records.position - 1) // records.model_config.context_length
    batch = window // batch_windows
    sums = np.bincount(batch, weights=nll)
    counts = np.bincount(batch)
    keep = counts > 0
    return float(np.mean(np.exp(sums[keep] / counts[keep])))


def hypothesis_tables(records, confidences: dict, thresholds=NOTES_THRESHOLDS) -> list[dict]:
    """Rows (hypothesis, threshold, shallow_pct, ppl) for the correct measure and each candidate error."""
    rows = []
    variants = {"as defined (softmax over the vocabulary)": records.confidence["max_softmax"], **confidences}
    for name, conf in variants.items():
        for t in thresholds:
            nll = _routed_nll(records, conf, t)
            shallow = 100.0 * float((conf >= t).mean())
            rows.append({"hypothesis": name, "threshold": t, "shallow_pct": shallow, "ppl": math.exp(nll.mean())})
            if name.startswith("as defined"):
                rows.append({"hypothesis": "PPL as 2 ** mean NLL (nats)", "threshold": t, "shallow_pct": shallow,
                             "ppl": 2.0 ** nll.mean()})
                rows.append({"hypothesis": "PPL as the mean of per-batch PPLs (32 windows)", "threshold": t,
                             "shallow_pct": shallow, "ppl": _batch_mean_ppl(records, nll)})
    return rows


def fit_to_notes(rows: list[dict], preset: str = "standard_routing") -> list[dict]:
    """Per hypothesis: RMSE of its Shallow% column against the notes' (percentage points), and whether its PPL
    falls as the threshold rises, as the notes' does from .5 to .95."""
    notes = NOTES_THRESHOLD_TABLES[preset]
    fits = []
    for name in dict.fromkeys(r["hypothesis"] for r in rows):
        mine = {r["threshold"]: r for r in rows if r["hypothesis"] == name}
        err = [mine[t]["shallow_pct"] - notes[t][1] for t in notes if t in mine]
        trend = mine[max(notes)]["ppl"] - mine[min(notes)]["ppl"]
        fits.append({"hypothesis": name, "shallow_rmse_pp": float(np.sqrt(np.mean(np.square(err)))),
                     "ppl_change_05_to_095": float(trend),
                     "ppl_ratio_095_over_05": float(mine[max(notes)]["ppl"] / mine[min(notes)]["ppl"]),
                     "notes_ppl_ratio_095_over_05": notes[max(notes)][0] / notes[min(notes)][0]})
    return sorted(fits, key=lambda f: f["shallow_rmse_pp"])
