"""Every threshold at once: routed PPL, bits per byte, Shallow%, Compute% and FLOPs% from per-token records.

A threshold move never runs the model: tokens are sorted by confidence once, and the tokens that
exit at threshold t (confidence >= t, the routing rule) are a suffix of that order.

The PPL of a sweep is the notes' (dense) routing: a deep token sees every earlier token's deeper
states. The cheapest execution that gives exactly that output is "recompute" (see routed.ledger),
and FLOPs% is its cost unless another execution is named.
"""

from __future__ import annotations

import math

import numpy as np

from routed.ledger import execution_cost, two_exit_cost
from routed.records import TokenRecords
from routed.routing import check_threshold

DENSE_EXECUTION = "recompute"  # the cheapest execution whose output is the dense routed output
LN2 = math.log(2)


def _ppl(mean_nll):
    return np.exp(np.minimum(mean_nll, 50.0))


def _bpb(nll_sum, n_bytes: int):
    """Bits per byte of a summed NLL (nats); NaN when the bytes are unknown."""
    return nll_sum / LN2 / n_bytes if n_bytes else nll_sum * np.nan


def _check_thresholds(thresholds) -> np.ndarray:
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if t.size and (np.isnan(t).any() or t.min() < 0 or t.max() > 1):
        raise ValueError("thresholds: every threshold must be a number in [0, 1]")
    return t


def sweep(
    records: TokenRecords, thresholds, measure: str = "max_softmax", execution: str = DENSE_EXECUTION
) -> dict[str, np.ndarray]:
    """Per threshold: routed PPL and bits per byte, Shallow%, Compute%, FLOPs% of `execution`, and references.

    References: shallow-only, deep-only and oracle (each token's better exit) PPL and bits per byte.
    """
    if measure not in records.confidence:
        raise ValueError(f"measure: unknown confidence measure {measure!r}; choose one of {list(records.confidence)}")
    t = _check_thresholds(thresholds)
    n = len(records)
    if n == 0:
        raise ValueError("records: no tokens to sweep over")
    conf = records.confidence[measure]
    order = np.argsort(conf, kind="stable")
    conf_sorted = conf[order].astype(np.float64)
    early_nll = records.nll[records.early_exit][order].astype(np.float64)
    final_nll = records.nll[records.final_exit][order].astype(np.float64)
    # deep tokens at threshold t: the first k = #(conf < t) in ascending order
    k = np.searchsorted(conf_sorted, t, side="left")
    cum_early = np.concatenate([[0.0], np.cumsum(early_nll)])
    cum_final = np.concatenate([[0.0], np.cumsum(final_nll)])
    routed_sum = cum_final[k] + (cum_early[-1] - cum_early[k])
    shallow_frac = (n - k) / n
    cfg = records.model_config
    compute, flops = two_exit_cost(cfg, shallow_frac, execution, records.early_exit, probe=measure == "probe")
    n_bytes = records.total_bytes()
    ones = np.ones_like(t)
    oracle_sum = np.minimum(early_nll, final_nll).sum()
    return {
        "threshold": t,
        "routed_ppl": _ppl(routed_sum / n),
        "routed_bpb": _bpb(routed_sum, n_bytes),
        "shallow_pct": 100.0 * shallow_frac,
        "compute_pct": compute,
        "flops_pct": flops,
        "shallow_ppl": ones * _ppl(cum_early[-1] / n),
        "deep_ppl": ones * _ppl(cum_final[-1] / n),
        "oracle_ppl": ones * _ppl(oracle_sum / n),
        "shallow_bpb": ones * _bpb(cum_early[-1], n_bytes),
        "deep_bpb": ones * _bpb(cum_final[-1], n_bytes),
        "oracle_bpb": ones * _bpb(oracle_sum, n_bytes),
    }


def sweep_exits(records: TokenRecords, thresholds, exits, execution: str = DENSE_EXECUTION) -> dict[str, np.ndarray]:
    """Multi-exit sweep (max-softmax confidence): a token leaves at the first exit whose confidence >= t.

    Per threshold: routed PPL and bits per byte, Compute%, FLOPs% of `execution` and the share of
    tokens leaving at each exit (`exit_<layer>_pct`). Vectorised: a token leaves at exit e exactly for
    t in (max confidence at its earlier exits, its confidence at e], so each token adds its NLL over
    those threshold intervals through difference arrays.
    """
    if records.layer_confidence is None:
        raise ValueError("records: these records lack per-layer confidences; evaluate them again")
    cfg = records.model_config
    exits = sorted(set(exits) | {cfg.n_layers})
    if exits[0] < 1 or exits[-1] > cfg.n_layers:
        raise ValueError(f"exits: must be layers within 1..{cfg.n_layers}, got {exits!r}")
    t = _check_thresholds(thresholds)
    order = np.argsort(t, kind="stable")
    ts = t[order]
    n, K = len(records), len(t)
    if n == 0:
        raise ValueError("records: no tokens to sweep over")
    nll_sum = np.zeros(K + 1)
    counts = {e: np.zeros(K + 1) for e in exits}
    earlier_max = np.full(n, -np.inf)  # a token reaches exit e for t > max confidence at earlier exits
    for e in exits:
        lo = np.searchsorted(ts, earlier_max, side="right")  # t > earlier_max
        if e == exits[-1]:
            hi = np.full(n, K)
        else:
            conf = records.layer_confidence[e].astype(np.float64)
            hi = np.searchsorted(ts, conf, side="right")  # t <= conf
            earlier_max = np.maximum(earlier_max, conf)
        valid = hi > lo
        nll = records.nll[e].astype(np.float64)
        np.add.at(nll_sum, lo[valid], nll[valid])
        np.add.at(nll_sum, hi[valid], -nll[valid])
        np.add.at(counts[e], lo[valid], 1)
        np.add.at(counts[e], hi[valid], -1)
    routed_sum = np.cumsum(nll_sum)[:K]
    fracs = {e: np.cumsum(c)[:K] / n for e, c in counts.items()}
    compute, flops = execution_cost(cfg, fracs, execution, exits=exits)
    unsort = np.argsort(order, kind="stable")
    result = {"threshold": t, "routed_ppl": _ppl(routed_sum / n)[unsort],
              "routed_bpb": _bpb(routed_sum, records.total_bytes())[unsort],
              "compute_pct": np.asarray(compute)[unsort], "flops_pct": np.asarray(flops)[unsort]}
    result |= {f"exit_{e}_pct": 100.0 * fracs[e][unsort] for e in exits}
    return result


def ppl_at(curve, level: float, x: str = "compute_pct", y: str = "routed_ppl") -> float:
    """A sweep's y (routed PPL) where its x (Compute% or FLOPs%) equals `level`, linearly interpolated; NaN outside."""
    xs, ys = np.asarray(curve[x], dtype=float), np.asarray(curve[y], dtype=float)
    order = np.argsort(xs, kind="stable")
    if not xs.min() <= level <= xs.max():
        return float("nan")
    return float(np.interp(level, xs[order], ys[order]))


def pareto_front(cost, ppl) -> np.ndarray:
    """Boolean mask of the points no other point beats on both cost and PPL (lower is better for both)."""
    cost, ppl = np.asarray(cost, dtype=float), np.asarray(ppl, dtype=float)
    order = np.lexsort((ppl, cost))
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(ppl[order])[:-1]])
    mask = np.zeros(len(cost), dtype=bool)
    mask[order] = ppl[order] < best_before - 1e-12
    return mask


def summary(
    records: TokenRecords, threshold: float | None, measure: str = "max_softmax", execution: str = DENSE_EXECUTION
) -> dict:
    """The headline numbers of one model at one threshold (None: no routing, the last exit for all)."""
    check_threshold(threshold)
    if len(records) == 0:
        raise ValueError("records: no tokens to evaluate")
    cfg = records.model_config
    n_bytes = records.total_bytes()
    sums = {layer: float(v.astype(np.float64).sum()) for layer, v in records.nll.items()}
    ppl_by_exit = {layer: float(_ppl(s / len(records))) for layer, s in sums.items()}
    bpb_by_exit = {layer: float(_bpb(s, n_bytes)) for layer, s in sums.items()}
    if threshold is None:
        compute, flops = execution_cost(cfg, {cfg.n_layers: 1.0}, "plain")
        row = {
            "routed_ppl": ppl_by_exit[records.final_exit],
            "routed_bpb": bpb_by_exit[records.final_exit],
            "shallow_pct": 0.0,
            "compute_pct": float(compute),
            "flops_pct": float(flops),
        }
        execution = "plain"
    else:
        s = sweep(records, [threshold], measure, execution)
        row = {key: float(s[key][0]) for key in ("routed_ppl", "routed_bpb", "shallow_pct", "compute_pct", "flops_pct")}
    return {"threshold": threshold, "measure": measure, **row, "execution": execution, "ppl_by_exit": ppl_by_exit,
            "bpb_by_exit": bpb_by_exit, "tokens": len(records), "bytes": n_bytes}
