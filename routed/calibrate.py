"""Picking a threshold on one split (validation) for a target: a compute budget or a PPL tolerance."""

from __future__ import annotations

import math

import numpy as np

from routed.records import TokenRecords
from routed.sweep import sweep


def threshold_for(
    records: TokenRecords,
    target_compute: float | None = None,
    max_ppl_increase: float | None = None,
    measure: str = "max_softmax",
    grid: int = 1001,
) -> float:
    """Calibrate a threshold on these records (use the validation split).

    target_compute: the highest threshold whose Compute% stays <= target (in percent).
    max_ppl_increase: the lowest threshold whose routed PPL is within (1 + x) of the deep-only PPL.
    """
    if (target_compute is None) == (max_ppl_increase is None):
        raise ValueError("threshold_for: give exactly one of target_compute or max_ppl_increase")
    for name, value in (("target_compute", target_compute), ("max_ppl_increase", max_ppl_increase)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
            raise ValueError(f"{name}: must be a number, got {value!r}")
    t = np.linspace(0.0, 1.0, grid)
    s = sweep(records, t, measure)
    if target_compute is not None:
        ok = s["compute_pct"] <= target_compute + 1e-9
        if not ok.any():
            raise ValueError(f"target_compute: no threshold reaches {target_compute}% (minimum {s['compute_pct'].min():.1f}%)")
        return float(t[ok].max())
    if not (math.isfinite(max_ppl_increase) and max_ppl_increase >= 0):
        raise ValueError(f"max_ppl_increase: must be a non-negative number, got {max_ppl_increase!r}")
    ok = s["routed_ppl"] <= s["deep_ppl"] * (1 + max_ppl_increase)
    return float(t[ok].min()) if ok.any() else 1.0


# --------------------------------------------------------------------------------------------
# A threshold with a guarantee: the shallow tokens agree with the last layer's top-1.
#
# Calibrated early exit as in "Learn then Test" (Angelopoulos et al., 2021) and CALM (Schuster et al.,
# 2022): each candidate threshold t is a hypothesis "the disagreement rate of the tokens that exit at t
# exceeds epsilon", tested with an exact binomial (Clopper–Pearson) bound on validation. Candidates are
# tested in a fixed order, from high to low thresholds, and the scan stops at the first one that fails
# (fixed-sequence testing), so each test may spend all of delta: no multiplicity correction is needed.

AGREEMENT_GRID = 1001


def check_open_unit(name: str, value, example: str) -> None:
    """Raise ValueError unless `value` is a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not 0.0 < value < 1.0:
        raise ValueError(f"{name}: must be a number strictly between 0 and 1 ({example}), got {value!r}")


def check_risk(epsilon, delta) -> None:
    """Raise ValueError unless epsilon (allowed disagreement) and delta (allowed failure probability) are in (0, 1)."""
    check_open_unit("epsilon", epsilon, "the allowed disagreement, e.g. 0.05")
    check_open_unit("delta", delta, "the allowed failure probability, e.g. 0.1")


def agreement_counts(confidence, agrees, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold: tokens that exit (confidence >= t, the routing rule) and how many of them disagree."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(agrees, dtype=bool)
    if conf.shape != ok.shape or conf.ndim != 1:
        raise ValueError(f"confidence and agrees: need two (N,) arrays, got {conf.shape} and {ok.shape}")
    order = np.argsort(conf, kind="stable")
    k = np.searchsorted(conf[order], np.asarray(thresholds, dtype=np.float64), side="left")  # deep: the first k
    misses = np.concatenate([[0], np.cumsum(~ok[order])])
    return len(conf) - k, misses[-1] - misses[k]


def guaranteed_threshold(shallow, disagree, thresholds, epsilon: float, delta: float) -> dict:
    """The smallest threshold certified by fixed-sequence testing from counts (see agreement_counts).

    Certified: P(Binomial(n, epsilon) <= k) <= delta, i.e. the Clopper–Pearson upper bound on the
    disagreement rate of its n shallow tokens (k disagreeing) is at most epsilon. Thresholds whose
    shallow sets are too small to be certified even with no disagreement are passed over: the sets are
    nested, so they are the first ones in the scan, fixed by the confidences alone. Returns the
    threshold (None: none certified, route nothing) with its counts and bound.
    """
    from routed.binomial import binom_cdf, clopper_pearson_upper

    check_risk(epsilon, delta)
    t = np.asarray(thresholds, dtype=np.float64)
    n, k = np.asarray(shallow), np.asarray(disagree)
    order = np.argsort(-t, kind="stable")  # high to low
    n_min = math.ceil(math.log(delta) / math.log1p(-epsilon))  # n with 0 disagreements that just passes
    order = order[n[order] >= n_min]
    # p-value of "disagreement rate > epsilon" at each candidate (all at once: the scan reads them in order)
    passed = binom_cdf(k[order], n[order], epsilon) <= delta
    first_fail = len(order) if passed.all() else int(np.argmin(passed))
    tested = min(len(order), first_fail + 1)  # the scan stops at the first failure
    chosen = order[first_fail - 1] if first_fail > 0 else None
    result = {"epsilon": float(epsilon), "delta": float(delta), "candidates": len(t), "tested": tested, "min_shallow": n_min}
    if chosen is None:
        return result | {"threshold": None, "shallow": 0, "disagree": 0, "upper_bound": None}
    bound = float(clopper_pearson_upper(k[chosen], n[chosen], delta)[()])
    return result | {"threshold": float(t[chosen]), "shallow": int(n[chosen]), "disagree": int(k[chosen]), "upper_bound": bound}


def threshold_with_guarantee(confidence, agrees, epsilon: float, delta: float, grid: int = AGREEMENT_GRID) -> dict:
    """Pick on validation the smallest threshold whose shallow tokens agree with the last layer's top-1 on
    at least 1 - epsilon of them, with probability at least 1 - delta (see guaranteed_threshold)."""
    check_risk(epsilon, delta)
    thresholds = np.linspace(0.0, 1.0, grid)
    shallow, disagree = agreement_counts(confidence, agrees, thresholds)
    return guaranteed_threshold(shallow, disagree, thresholds, epsilon, delta) | {"tokens": int(len(np.asarray(agrees)))}


def guarantee_report(validation: dict, test: dict, thresholds, epsilon: float, delta: float) -> dict:
    """Pick the threshold on validation counts and check it on test counts (both from agreement_counts
    over `thresholds`, as {"shallow", "disagree", "tokens"}): did the test's shallow tokens agree on at
    least 1 - epsilon of them?"""
    pick = guaranteed_threshold(validation["shallow"], validation["disagree"], thresholds, epsilon, delta)
    pick["tokens"] = int(validation["tokens"])
    if pick["threshold"] is None:
        return {"validation": pick, "test": {"shallow": 0, "disagree": 0, "agreement": None, "held": True,
                                             "tokens": int(test["tokens"])}, "threshold": None}
    j = int(np.argmin(np.abs(np.asarray(thresholds, dtype=np.float64) - pick["threshold"])))
    n, k = int(test["shallow"][j]), int(test["disagree"][j])
    held = k <= epsilon * n  # with no shallow test token, vacuously
    return {"threshold": pick["threshold"], "validation": pick,
            "test": {"shallow": n, "disagree": k, "agreement": 1.0 - k / n if n else None, "held": bool(held),
                     "tokens": int(test["tokens"])}}
