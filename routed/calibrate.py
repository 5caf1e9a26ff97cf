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
