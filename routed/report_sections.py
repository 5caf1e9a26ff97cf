"""The sections of the reproduction report, each as markdown lines (and a CSV table written beside it)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from routed.config import trained_as
from routed.notes import ALPHAS, MATCHED_COMPUTE, NOTES_RANKING, NOTES_THRESHOLD_TABLES, NOTES_THRESHOLDS
from routed.stats import what_n_allows
from routed.sweep import ppl_at
from routed.verdicts import RULE, claims, preset_ppl, saves_arithmetic


def mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def fmt(mean: float, std: float = math.nan, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp.replace(path)


def _at_threshold(r: dict, t: float, key: str) -> float:
    c = r["curve"]
    return float(c[key][int(np.argmin(np.abs(c["threshold"] - t)))])


def ranking(results: dict, settings) -> tuple[list[str], list[dict]]:
    from routed.config import PRESETS
    from routed.ledger import execution_cost

    lines, rows = [], []
    base = [preset_ppl(r, "standard_3l") for r in results.get("standard_3l", [])]
    lines += ["## 2. Final ranking", "",
              "| Model | notes PPL | notes Compute% | notes vs 3L | our PPL (markers out) | all tokens | bits/byte | "
              "Compute% | Shallow% | FLOPs% | shallow-only PPL | deep-only PPL | our vs 3L | seeds | converged |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (n_ppl, n_comp, n_vs) in NOTES_RANKING.items():
        rs = results.get(trained_as(name), [])
        if not rs:
            lines.append(f"| {name} | {n_ppl} | {n_comp}% | {n_vs:+.1f}% | (not run yet) |" + " |" * 10)
            continue
        t = PRESETS[name].routing_threshold
        last = str(rs[0]["n_layers"])
        ppl = mean_std([preset_ppl(r, name) for r in rs])
        if t is None:
            ppl_all = mean_std([r["ppl_by_exit_all"][last] for r in rs])
            bpb = mean_std([r["bpb_by_exit"][last] for r in rs])
            cfg = settings.model_config().__class__(**{**settings.model_config().to_dict(), "n_layers": rs[0]["n_layers"]})
            comp, flops = execution_cost(cfg, {cfg.n_layers: 1.0}, "plain")
            shallow, sp, dp = 0.0, (math.nan, math.nan), (math.nan, math.nan)
        else:
            ppl_all = mean_std([r["at_notes_thresholds_all"][f"{t:g}"]["routed_ppl"] for r in rs])
            bpb = mean_std([_at_threshold(r, t, "routed_bpb") for r in rs])
            comp = np.mean([_at_threshold(r, t, "compute_pct") for r in rs])
            flops = np.mean([_at_threshold(r, t, "flops_pct") for r in rs])
            shallow = np.mean([_at_threshold(r, t, "shallow_pct") for r in rs])
            sp = mean_std([r["reference"]["shallow_ppl"] for r in rs])
            dp = mean_std([r["reference"]["deep_ppl"] for r in rs])
        vs = 100 * (np.mean(base) - ppl[0]) / np.mean(base) if base else math.nan
        converged = sum(r["convergence"]["status"] == "converged" for r in rs)
        lines.append(f"| {name} | {n_ppl} | {n_comp}% | {n_vs:+.1f}% | {fmt(*ppl)} | {fmt(*ppl_all)} | {fmt(*bpb, 4)} | "
                     f"{comp:.1f}% | {shallow:.1f}% | {flops:.1f}% | {fmt(*sp)} | {fmt(*dp)} | {vs:+.1f}% | {len(rs)} | "
                     f"{converged}/{len(rs)} |")
        rows.append({"model": name, "notes_ppl": n_ppl, "notes_compute_pct": n_comp, "notes_vs_3l": n_vs,
                     "ppl_mean": ppl[0], "ppl_std": ppl[1], "ppl_all_tokens_mean": ppl_all[0], "bpb_mean": bpb[0],
                     "bpb_std": bpb[1], "compute_pct_mean": float(comp), "shallow_pct_mean": float(shallow),
                     "flops_pct_mean": float(flops), "shallow_ppl_mean": sp[0], "deep_ppl_mean": dp[0],
                     "vs_3l_pct": float(vs), "n_seeds": len(rs), "converged_runs": converged})
    lines += ["", "PPL is per token with the corpus' marker tokens left out ('all tokens': with them); bits per byte "
              "counts the UTF-8 bytes of the predicted tokens and compares across tokenizers. Routed models are read at "
              "their preset threshold. FLOPs% is the recompute execution (the cheapest that gives the notes' routed "
              "output exactly) against the plain 3-layer model; a deep token of a routed model pays the head twice. "
              "lpt_routing is the lpt models read at threshold .7 (the same training).", ""]
    return lines, rows


def threshold_tables(out: Path, results: dict) -> list[str]:
    lines = []
    for name in ("standard_routing", "lpt"):
        rs = results.get(name)
        if not rs:
            continue
        lines += [f"## 3. Threshold analysis: {name}", "",
                  "| Threshold | notes PPL | notes Shallow% | notes Compute% | our PPL | our Shallow% | Shallow% all tokens | "
                  "bits/byte | Compute% | FLOPs% |", "|---|---|---|---|---|---|---|---|---|---|"]
        csv_rows = []
        for t in NOTES_THRESHOLDS:
            key = f"{t:g}"
            ppl = mean_std([r["at_notes_thresholds"][key]["routed_ppl"] for r in rs])
            sh = mean_std([r["at_notes_thresholds"][key]["shallow_pct"] for r in rs])
            sh_all = mean_std([r["at_notes_thresholds_all"][key]["shallow_pct"] for r in rs])
            bpb = mean_std([r["at_notes_thresholds"][key]["routed_bpb"] for r in rs])
            comp = np.mean([r["at_notes_thresholds"][key]["compute_pct"] for r in rs])
            fl = np.mean([r["at_notes_thresholds"][key]["flops_pct"] for r in rs])
            n = NOTES_THRESHOLD_TABLES[name][t]
            lines.append(f"| {t:.2f} | {n[0]} | {n[1]}% | {n[2]}% | {fmt(*ppl)} | {fmt(*sh, 1)}% | {fmt(*sh_all, 1)}% | "
                         f"{fmt(*bpb, 4)} | {comp:.1f}% | {fl:.1f}% |")
            csv_rows.append({"threshold": t, "notes_ppl": n[0], "notes_shallow_pct": n[1], "notes_compute_pct": n[2],
                             "ppl_mean": ppl[0], "ppl_std": ppl[1], "shallow_pct_mean": sh[0],
                             "shallow_pct_all_tokens_mean": sh_all[0], "bpb_mean": bpb[0], "compute_pct_mean": float(comp),
                             "flops_pct_mean": float(fl)})
        ref = [r["reference"] for r in rs]
        lines += ["", f"Reference lines (markers left out): shallow-only PPL {fmt(*mean_std([x['shallow_ppl'] for x in ref]))}, "
                  f"deep-only PPL {fmt(*mean_std([x['deep_ppl'] for x in ref]))}, "
                  f"oracle PPL {fmt(*mean_std([x['oracle_ppl'] for x in ref]))}.", ""]
        write_csv(out / f"threshold_{name}.csv", csv_rows)
    return lines


def alpha_table(out: Path, results: dict) -> list[str]:
    names = [(a, {0.5: "standard_routing", 0.7: "asymmetric_best"}.get(a, f"alpha_{a:g}")) for a in ALPHAS]
    names += [(None, n) for n in sorted(results) if n.startswith("alpha_") and "to" in n]
    rows = []
    for alpha, name in names:
        rs = results.get(name)
        if not rs:
            continue
        label = f"{alpha:g}" if alpha is not None else name.removeprefix("alpha_").replace("to", " → ") + " (linear schedule)"
        row = {"alpha": label, "run": name, "n_seeds": len(rs)}
        row["ppl_at_095_mean"], row["ppl_at_095_std"] = mean_std([r["at_notes_thresholds"]["0.95"]["routed_ppl"] for r in rs])
        row["bpb_at_095_mean"] = mean_std([r["at_notes_thresholds"]["0.95"]["routed_bpb"] for r in rs])[0]
        for c in MATCHED_COMPUTE:
            row[f"ppl_at_{c:g}pct_mean"], row[f"ppl_at_{c:g}pct_std"] = mean_std([ppl_at(r["curve"], c) for r in rs])
        row["deep_ppl_mean"] = mean_std([r["reference"]["deep_ppl"] for r in rs])[0]
        rows.append(row)
    write_csv(out / "alpha_sweep.csv", rows)
    if not rows:
        return []
    lines = ["## 4. Alpha sweep (loss weights {1: alpha, 3: 1 − alpha}, no L2 loss), fixed and scheduled", "",
             "| alpha | PPL at .95 | bits/byte at .95 | " + " | ".join(f"PPL at {c:g}% compute" for c in MATCHED_COMPUTE)
             + " | deep-only PPL | seeds |", "|---|---|---|" + "---|" * len(MATCHED_COMPUTE) + "---|---|"]
    for row in rows:
        lines.append(f"| {row['alpha']} | {fmt(row['ppl_at_095_mean'], row['ppl_at_095_std'])} | {fmt(row['bpb_at_095_mean'], digits=4)} | "
                     + " | ".join(fmt(row[f'ppl_at_{c:g}pct_mean'], row[f'ppl_at_{c:g}pct_std']) for c in MATCHED_COMPUTE)
                     + f" | {fmt(row['deep_ppl_mean'])} | {row['n_seeds']} |")
    lines += ["", "Matched compute: each model's routed PPL interpolated along its threshold sweep at that Compute% ('–': "
              "the sweep does not reach it). A schedule a → b moves the loss weights linearly from {1: a, 3: 1 − a} at the "
              "first step to {1: b, 3: 1 − b} at the last; its best step is chosen on the final weights.", ""]
    return lines


def convergence_section(out: Path, results: dict, figure: str | None, checks: dict) -> tuple[list[str], bool]:
    rows, provisional = [], False
    for name, rs in sorted(results.items()):
        for r in rs:
            c = r["convergence"]
            rows.append({"run": name, "seed": r["seed"], "steps": r["steps"], "best_step": c["best_step"],
                         "tail_gain_pct": c["tail_gain_pct"], "doubling_gain_pct": c.get("doubling_gain_pct"),
                         "rule": c.get("rule", "last fifth"), "status": c["status"]})
            provisional |= c["status"] != "converged" and name in NOTES_RANKING
    write_csv(out / "convergence.csv", rows)
    lines = ["## 1. Convergence", "",
             "Every run has the same token budget. A run has converged when its last fifth of training improved "
             "validation PPL by less than 1%; where its best step falls is not enough (under a cosine schedule the last "
             "step is nearly always the best, and a last validation a hair above the best is noise). The last fifth's "
             "gain includes the learning-rate anneal, so where a preset was also trained on twice the tokens "
             "(`benchmarks/convergence.py`, reports/convergence.md) that doubling check decides for every seed of the "
             "preset instead: converged when doubling gained under 1% at the best validation of the preset's "
             "objective. Best weights are kept.", ""]
    for name, check in sorted(checks.items()):
        lines.append(f"- {name}: twice the tokens ({check['doubled_tokens'] / 1e6:.1f}M, seed {check['seed']}) reached "
                     f"{check['doubled_best_ppl']:.3f} at step {check['doubled_best_step']:,} against {check['best_ppl']:.3f} "
                     f"here: {'gained' if check['gain_pct'] >= 0 else 'lost'} {abs(check['gain_pct']):.2f}% "
                     f"(objective PPL, exp of the weighted validation loss; `{check['record']}`).")
    if checks:
        lines.append("")
    bad = [r for r in rows if r["status"] != "converged"]
    lines.append(f"{len(rows) - len(bad)} of {len(rows)} runs converged." + (
        " Not converged: " + ", ".join(_not_converged(r) for r in bad)
        + ". **Verdicts involving them are provisional.**" if bad else ""))
    three = [r for r in rows if r["run"] == "standard_3l"]
    if three:
        lines.append("standard_3l: " + "; ".join(f"seed {r['seed']}: best step {r['best_step']} of {r['steps']}, "
                                                  f"last fifth gained {r['tail_gain_pct']:.2f}%" for r in three) + ".")
    if figure:
        lines += ["", f"![validation curves]({out.name}/{figure})"]
    lines += ["", f"Per run: `{out.name}/convergence.csv`.", ""]
    return lines, provisional


def _not_converged(row: dict) -> str:
    if row["rule"] == "budget doubled":
        return f"{row['run']} s{row['seed']} (doubling its budget gained {row['doubling_gain_pct']:.1f}%)"
    if row["tail_gain_pct"] is None:
        return f"{row['run']} s{row['seed']} ({row['status']})"
    status = "" if row["status"] == "not converged" else f"{row['status']}, "
    return f"{row['run']} s{row['seed']} ({status}+{row['tail_gain_pct']:.1f}% over the last fifth)"


def method_and_n(row: dict) -> str:
    """The test behind a verdict and its sample size; a dash where no test ran."""
    return f"{row['test']}, n={row['n']}" if row["test"] else "–"


def _signed(value: float) -> str:
    """Three significant digits with the sign, trailing zeros kept so that an effect and its CI line up."""
    return f"{value:+#.3g}".rstrip(".")


def verdict_section(out: Path, results: dict, blocks: dict, provisional: bool) -> list[str]:
    rows = claims(results, blocks)
    counts = rows + saves_arithmetic(results)
    write_csv(out / "verdicts.csv", [{k: r.get(k, "") for k in ("claim", "verdict", "effect", "ci_low", "ci_high", "p",
                                                                  "unit", "test", "n", "bootstrap_ci", "evidence")}
                                     for r in counts])
    if not counts:
        return []
    lines = ["## 5. The notes' claims, checked", "",
             "| Claim | Verdict | Effect (a − b) | 95% CI | p | test, n | seed bootstrap 95% CI | Evidence |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        effect = "–" if math.isnan(r["effect"]) else f"{_signed(r['effect'])} {r['unit']}"
        ci = "–" if math.isnan(r["ci_low"]) else f"[{_signed(r['ci_low'])}, {_signed(r['ci_high'])}]"
        p = "–" if math.isnan(r["p"]) else (f"{r['p']:.2g}" if r["p"] >= 1e-4 else "< 1e-4")
        lines.append(f"| {r['claim']} | **{r['verdict']}**{' (provisional)' if provisional else ''} | {effect} | {ci} | {p} | "
                     f"{method_and_n(r)} | {r['bootstrap_ci'] or '–'} | {r['evidence']} |")
    for r in saves_arithmetic(results):
        lines.append(f"| {r['claim']} | **{r['verdict']}** | | | | count, no test | | {r['evidence']} |")
    n = max((len(rs) for rs in results.values()), default=0)
    lines += ["", f"Rule: {RULE}. A negative effect means the first model named is better (lower PPL or NLL).",
              f"What n allows: {what_n_allows(n)}. The threshold claims compare a model with itself on the same test "
              "tokens (paired block bootstrap over context windows, pooled over seeds): they measure the test set's "
              "sampling noise, not the training seed's.", ""]
    return lines


def exits_section(results: dict) -> list[str]:
    rs = results.get("standard_routing") or results.get("asymmetric_best") or []
    if not rs or "what_exits" not in rs[0]:
        return []
    lines = ["## 6. What exits", "", f"The shallow tokens of {rs[0]['run']} (seed 0) on the test split, markers included:", ""]
    for key, table in rs[0]["what_exits"].items():
        lines += [f"At threshold {key}: {table['shallow_tokens']:,} of {table['tokens']:,} tokens exit "
                  f"({table['shallow_pct']:.2f}%); corpus markers are {table['marker_share_pct']:.1f}% of them; without "
                  f"markers Shallow% is {table['shallow_pct_without_markers']:.2f}%.", "",
                  "| token | count | share of shallow | NLL at exit 1 | NLL at exit 3 | marker |", "|---|---|---|---|---|---|"]
        for row in table["rows"][:10]:
            nll = row["nll_by_exit"]
            lines.append(f"| `{row['token']!r}` | {row['count']:,} | {row['share_pct']:.1f}% | {nll['1']:.3f} | "
                         f"{nll[max(nll, key=int)]:.3f} | {'yes' if row['marker'] else ''} |")
        lines.append("")
    return lines


def hypotheses_section(out: Path) -> list[str]:
    path = out / "hypotheses.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    lines = ["## 7. What could produce the notes' numbers (hypotheses)", "",
             "Candidate mistakes applied to our own seed-0 model and test records; each recomputes the notes' threshold "
             "table. These are hypotheses about how such numbers can arise, not findings about the notes' code. "
             "Shallow% is over every token (the notes do not say they left markup out).", ""]
    for preset, block in data.items():
        lines += [f"{preset}: notes' Shallow% " + " / ".join(f"{v[1]}" for v in NOTES_THRESHOLD_TABLES[preset].values())
                  + " at " + " / ".join(f"{t:g}" for t in NOTES_THRESHOLDS) + ".", "",
                  "| hypothesis | Shallow% at .5 / .7 / .8 / .9 / .95 | PPL at .5 → .95 | RMSE of Shallow% vs notes (pp) |",
                  "|---|---|---|---|"]
        by = {}
        for row in block["tables"]:
            by.setdefault(row["hypothesis"], []).append(row)
        for fit in block["fits"]:
            rows = sorted(by[fit["hypothesis"]], key=lambda r: r["threshold"])
            shallow = " / ".join(f"{r['shallow_pct']:.1f}" for r in rows)
            lines.append(f"| {fit['hypothesis']} | {shallow} | "
                         f"{rows[0]['ppl']:.2f} → {rows[-1]['ppl']:.2f} | {fit['shallow_rmse_pp']:.1f} |")
        best = block["fits"][0]
        lines += ["", f"Closest Shallow% column: **{best['hypothesis']}** (RMSE {best['shallow_rmse_pp']:.1f} points). "
                  f"The notes' PPL falls by a factor {best['notes_ppl_ratio_095_over_05']:.2f} from .5 to .95; under this "
                  f"hypothesis ours changes by {best['ppl_ratio_095_over_05']:.2f}.", ""]
    return lines
