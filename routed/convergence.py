"""Has a run converged? Its validation curve: where it was best, and what its last stretch still gained.

A run has converged when its last fifth of training improved validation PPL by under 1%. Where its best step
falls says little on its own: under a cosine schedule the last step is nearly always the best, and a last
validation a hair above the best one is noise while the curve may still be falling (a 4,800-step TinyStories
run was best at step 4,750 yet gained 2.5% over its last fifth). A run that overfits gains nothing over its
last fifth, so it counts as converged by the same rule.

The last fifth's gain includes the learning-rate anneal, so the rule can flag a budget that is long enough. Where
the preset was also trained on twice the tokens (routed/budget_check.py), that doubling check decides instead:
under 1% gained at the best validation, the budget is on the flat part of the curve; 1% or more, it is not.
"""

from __future__ import annotations

import math

TAIL = 0.2  # the last fifth of training
TOLERANCE_PCT = 1.0  # at most this much PPL gained over the tail counts as flat


def convergence(history: list[dict], tail: float = TAIL, tolerance_pct: float = TOLERANCE_PCT) -> dict:
    """{status, best_step, last_step, tail_from_step, tail_gain_pct} of a training history (validation records)."""
    records = [h for h in history if math.isfinite(h.get("val_loss", math.nan))]
    if not records:
        return {"status": "no validation", "best_step": None, "last_step": None, "tail_from_step": None,
                "tail_gain_pct": None}
    steps = [h["step"] for h in records]
    losses = [h["val_loss"] for h in records]
    last = steps[-1]
    best = min(range(len(losses)), key=lambda i: (losses[i], steps[i]))
    start = max([i for i, s in enumerate(steps) if s <= (1 - tail) * last] or [0])
    gain_pct = 100.0 * math.expm1(losses[start] - min(losses[start:]))  # PPL = exp(loss)
    if len(records) < 2 or start == len(records) - 1:
        status = "too few validations"
    else:
        status = "converged" if gain_pct < tolerance_pct else "not converged"
    return {"status": status, "best_step": steps[best], "last_step": last, "tail_from_step": steps[start],
            "tail_gain_pct": gain_pct}


def doubling_gain_pct(best_loss: float, doubled_best_loss: float) -> float:
    """PPL gained at the best validation by training on twice the tokens, in % (negative: the longer run did worse)."""
    return 100.0 * math.expm1(best_loss - doubled_best_loss)


def with_budget_check(run: dict, check: dict | None, tolerance_pct: float = TOLERANCE_PCT) -> dict:
    """A run's convergence (from `convergence`) once its preset's budget may have been checked by doubling it."""
    if check is None or run["status"] == "no validation":
        return {**run, "rule": "last fifth", "doubling_gain_pct": None}
    status = "converged" if check["gain_pct"] < tolerance_pct else "not converged"
    return {**run, "status": status, "rule": "budget doubled", "doubling_gain_pct": check["gain_pct"]}
