"""The notes' claims checked on a reproduction: each as an effect with its 95% CI, p-value, test and rule.

Between presets, seed s of one is paired with seed s of the other (same tokenizer, data order and budget):
a paired t-test over seeds, with a bootstrap interval over seeds beside it. Within one model (the threshold
claims) the same test tokens are routed both ways: a paired bootstrap over blocks of tokens (context
windows), pooled over seeds. A claim between presets with a single seed falls back to that window
bootstrap (test-set noise only, not seed spread; its test says so). Rule: "held" when the 95% CI lies on
the claimed side of zero, "contradicted" when it lies on the other side, "not shown" otherwise. Numbers leave out the corpus' marker tokens.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from routed.config import PRESETS, trained_as
from routed.stats import Comparison, bootstrap_mean_ci, paired_block_bootstrap, paired_t, verdict
from routed.sweep import ppl_at

RULE = "held: 95% CI of the difference on the claimed side of 0; contradicted: on the other side; else not shown"


def preset_ppl(result: dict, name: str) -> float:
    """A run's test PPL as the preset `name` is read: at its routing threshold, or its last exit unrouted."""
    threshold = PRESETS[name].routing_threshold
    if threshold is None:
        return result["ppl_by_exit"][str(result["n_layers"])]
    curve = result["curve"]
    return float(curve["routed_ppl"][int(np.argmin(np.abs(curve["threshold"] - threshold)))])


def _by_seed(results: dict, name: str, metric) -> dict[int, float]:
    return {r["seed"]: metric(r) for r in results.get(name, [])}


def seed_comparison(a: dict[int, float], b: dict[int, float]) -> Comparison | None:
    """Paired comparison (a − b) over the seeds both have; None with fewer than 2 finite pairs."""
    seeds = sorted(s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s]))
    if len(seeds) < 2:
        return None
    return paired_t([a[s] for s in seeds], [b[s] for s in seeds])


def _row(claim: str, c: Comparison | None, unit: str, evidence: str, differences=None) -> dict:
    if c is None:
        return {"claim": claim, "verdict": "not tested (fewer than 2 paired seeds)", "effect": math.nan,
                "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "unit": unit, "test": "", "n": 0,
                "bootstrap_ci": "", "evidence": evidence}
    boot = ""
    if differences is not None and len(differences) >= 2:
        lo, hi = bootstrap_mean_ci(differences)
        boot = f"[{lo:.3g}, {hi:.3g}]"
    return {"claim": claim, "verdict": verdict(c), "effect": c.effect, "ci_low": c.ci_low, "ci_high": c.ci_high,
            "p": c.p, "unit": unit, "test": c.test, "n": c.n, "bootstrap_ci": boot, "evidence": evidence}


def _seeds_claim(claim: str, a: dict, b: dict, evidence: str, blocks_a: dict | None = None,
                 blocks_b: dict | None = None) -> dict:
    """Paired over seeds; with fewer than 2 seeds and block sums for both sides, paired over test windows.

    The window bootstrap compares the two trained models on the same test tokens: it covers the test
    set's sampling noise, not the spread between training seeds, and says so in its `test`.
    """
    c = seed_comparison(a, b)
    shared = sorted(s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s]))
    diffs = [a[s] - b[s] for s in shared]
    mean_a = np.mean([a[s] for s in shared]) if shared else math.nan
    mean_b = np.mean([b[s] for s in shared]) if shared else math.nan
    text = f"{evidence}: {mean_a:.2f} vs {mean_b:.2f}"
    both = sorted(set(blocks_a or {}) & set(blocks_b or {}) & set(shared))
    if c is None and both:
        sums_a, sums_b = [blocks_a[s][0] for s in both], [blocks_b[s][0] for s in both]
        c = paired_block_bootstrap(sums_a, sums_b, [blocks_a[s][1] for s in both])
        c = replace(c, test=f"{c.test}; test windows only, not seed spread")
        return _row(claim, c, "nats/token", text)
    return _row(claim, c, "PPL", text, diffs)


def preset_blocks(results: dict, blocks: dict, name: str) -> dict[int, tuple]:
    """{seed: (per-window NLL sums, tokens)} of preset `name` as `preset_ppl` reads it (markers left out)."""
    source = trained_as(name)
    threshold = PRESETS[name].routing_threshold
    out = {}
    for r in results.get(source, []):
        arrays = blocks.get((source, r["seed"]))
        key = f"routed_{threshold:g}" if threshold is not None else f"nll_{r['n_layers']}"
        if arrays is not None and key in arrays:
            out[r["seed"]] = (arrays[key], arrays["tokens"])
    return out


def _threshold_claim(results: dict, name: str, blocks: dict, high: float = 0.95, low: float = 0.5) -> dict | None:
    runs = [r for r in results.get(name, []) if (name, r["seed"]) in blocks]
    if not runs:
        return None
    per_seed = [blocks[(name, r["seed"])] for r in runs]
    c = paired_block_bootstrap([b[f"routed_{high:g}"] for b in per_seed], [b[f"routed_{low:g}"] for b in per_seed],
                               [b["tokens"] for b in per_seed])
    ppl_hi = np.mean([r["at_notes_thresholds"][f"{high:g}"]["routed_ppl"] for r in runs])
    ppl_lo = np.mean([r["at_notes_thresholds"][f"{low:g}"]["routed_ppl"] for r in runs])
    return _row(f"a higher threshold gives a better PPL ({name}: {high:g} vs {low:g})", c, "nats/token",
                f"PPL at {high:g} vs {low:g}: {ppl_hi:.2f} vs {ppl_lo:.2f}; {len(per_seed[0]['tokens']):,} blocks per seed")


def claims(results: dict, blocks: dict) -> list[dict]:
    """Every checkable claim of the notes with its statistics; `blocks[(run, seed)]` are blocks.npz arrays."""
    rows = []

    def ppl(name):
        source = trained_as(name)
        return _by_seed(results, source, lambda r: preset_ppl(r, name))

    def windows(name):
        return preset_blocks(results, blocks, name)

    def at_compute(name, level):
        return _by_seed(results, name, lambda r: ppl_at(r["curve"], level))

    def at_flops(name, level):
        return _by_seed(results, name, lambda r: ppl_at(r["curve"], level, "flops_pct"))

    base = ppl("standard_3l")
    for name in ("standard_routing", "asymmetric_best"):
        if name in results and base:
            rows.append(_seeds_claim(f"routing ({name}) beats Standard 3L at ~65% compute", at_compute(name, 65.0),
                                     base, f"{name} PPL at 65% Compute vs Standard 3L"))
            rows.append(_seeds_claim(f"routing ({name}) beats Standard 3L at equal FLOPs (recompute execution)",
                                     at_flops(name, 100.0), base, f"{name} PPL at 100% FLOPs vs Standard 3L"))
    if "asymmetric_best" in results and "standard_routing" in results:
        rows.append(_seeds_claim("alpha 0.7 beats alpha 0.5 (at matched 65% compute)", at_compute("asymmetric_best", 65.0),
                                 at_compute("standard_routing", 65.0), "PPL at 65% Compute, alpha 0.7 vs 0.5"))
        rows.append(_seeds_claim("alpha 0.7 beats alpha 0.5 (at threshold .95)", ppl("asymmetric_best"),
                                 ppl("standard_routing"), "PPL at threshold .95, alpha 0.7 vs 0.5",
                                 windows("asymmetric_best"), windows("standard_routing")))
    if "asymmetric_l2" in results and "asymmetric_best" in results:
        # 'an L2 loss hurts' holds when the model without the L2 loss is better (a − b < 0)
        rows.append(_seeds_claim("an L2 loss hurts (asymmetric without L2 beats with L2, threshold .95)",
                                 ppl("asymmetric_best"), ppl("asymmetric_l2"), "PPL without vs with L2 loss",
                                 windows("asymmetric_best"), windows("asymmetric_l2")))
        rows.append(_seeds_claim("an L2 loss hurts (at matched 65% compute)", at_compute("asymmetric_best", 65.0),
                                 at_compute("asymmetric_l2", 65.0), "PPL at 65% Compute without vs with L2 loss"))
    if "lpt" in results:
        routed = [r["at_notes_thresholds"]["0.7"]["compute_pct"] for r in results["lpt"]]
        level = float(np.mean(routed))
        for other in ("standard_routing", "asymmetric_best"):
            if other in results:
                rows.append(_seeds_claim(f"LPT routing is more efficient than {other} (at LPT routing's {level:.1f}% compute)",
                                         at_compute("lpt", level), at_compute(other, level),
                                         f"PPL at {level:.1f}% Compute, LPT vs {other}"))
        if base:
            rows.append(_seeds_claim("LPT improves a plain 3-layer model (no routing)", ppl("lpt"), base,
                                     "LPT last exit vs Standard 3L", windows("lpt"), windows("standard_3l")))
    for schedule in sorted(n for n in results if n.startswith("alpha_") and "to" in n):
        start, end = schedule.removeprefix("alpha_").split("to")
        for fixed, alpha in (("asymmetric_best", "0.7"), ("standard_routing", "0.5")):
            if fixed in results:
                rows.append(_seeds_claim(f"a dynamic alpha ({start} → {end}) beats fixed alpha {alpha} (at matched 65% compute)",
                                         at_compute(schedule, 65.0), at_compute(fixed, 65.0),
                                         f"PPL at 65% Compute, schedule {start} → {end} vs alpha {alpha}"))
    for name in ("standard_routing", "lpt"):
        row = _threshold_claim(results, name, blocks)
        if row:
            rows.append(row)
    if ppl("asymmetric_best") and ppl("standard_1l"):
        rows.append(_seeds_claim("the best routed model beats Standard 1L", ppl("asymmetric_best"), ppl("standard_1l"),
                                 "asymmetric_best at .95 vs Standard 1L", windows("asymmetric_best"), windows("standard_1l")))
    if ppl("asymmetric_best") and base:
        rows.append(_seeds_claim("the best routed model beats Standard 3L", ppl("asymmetric_best"), base,
                                 "asymmetric_best at .95 vs Standard 3L", windows("asymmetric_best"), windows("standard_3l")))
    for row in rows:
        row["rule"] = RULE
    return rows


def saves_arithmetic(results: dict) -> list[dict]:
    """Does routing at the preset threshold cost fewer FLOPs than the plain 3-layer model? (No test: a count.)"""
    rows = []
    for name in ("standard_routing", "asymmetric_best", "lpt_routing"):
        source = trained_as(name)
        if source not in results:
            continue
        t = PRESETS[name].routing_threshold
        flops = [r["curve"]["flops_pct"][int(np.argmin(np.abs(r["curve"]["threshold"] - t)))] for r in results[source]]
        compute = [r["curve"]["compute_pct"][int(np.argmin(np.abs(r["curve"]["threshold"] - t)))] for r in results[source]]
        rows.append({"claim": f"routing ({name}, threshold {t:g}) saves arithmetic", "verdict": "held" if max(flops) < 100 else "not held",
                     "evidence": f"Compute% {np.mean(compute):.1f} but FLOPs% {np.mean(flops):.1f} of the plain 3-layer model "
                                 f"(recompute execution, the cheapest with the notes' output; n={len(flops)})"})
    return rows
