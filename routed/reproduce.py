"""Regenerate the research notes' tables: every preset over seeds, with error bars and verdicts.

Each (run, seed) is trained, evaluated on the test split and written to OUT/runs/<run>-s<seed>/
(checkpoint + result.json + sweep.csv); finished runs are skipped, so an interrupted reproduction
resumes where it stopped. The report (markdown, CSV, plots) is rewritten after every run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from routed.checkpoint import read_sweep, write_sweep
from routed.config import PRESETS, ModelConfig, TrainConfig
from routed.data import load_corpus
from routed.sweep import ppl_at
from routed.tokenizer import encode, load_tokenizer, train_tokenizer

NOTES_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
ALPHAS = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
MATCHED_COMPUTE = (50.0, 65.0, 80.0)  # Compute% levels at which routed models are compared

# The notes' numbers, for the side-by-side tables (see shared research README).
NOTES_RANKING = {
    "asymmetric_best": (22.95, 65.0, 34.2),
    "standard_routing": (23.98, 65.2, 31.2),
    "lpt_routing": (28.13, 46.6, 19.3),
    "lpt": (30.54, 100.0, 12.4),
    "asymmetric_l2": (32.07, 42.5, 8.0),
    "standard_3l": (34.86, 100.0, 0.0),
    "standard_1l": (35.29, 33.3, -1.2),
}
NOTES_THRESHOLD_TABLES = {  # threshold: (PPL, Shallow%, Compute%)
    "standard_routing": {0.5: (40.61, 95.5, 36.3), 0.7: (39.41, 88.7, 40.9), 0.8: (40.36, 83.7, 44.2),
                         0.9: (36.98, 71.8, 52.1), 0.95: (32.21, 57.1, 61.9)},
    "lpt": {0.5: (43.05, 95.1, 36.6), 0.7: (44.44, 89.9, 40.1), 0.8: (45.89, 85.2, 43.2),
            0.9: (47.38, 75.5, 49.7), 0.95: (48.16, 64.6, 56.9)},
}


@dataclass
class ReproduceSettings:
    corpus: str = "wikitext-2"
    seeds: int = 3
    epochs: float | None = None  # default 1 epoch when neither epochs nor steps is given
    steps: int | None = None
    quick: bool = False  # a minutes-long miniature: small model, short runs, 2 seeds
    alphas: bool = True
    vocab_size: int | None = None  # model-size overrides (None: the defaults, or the quick miniature's)
    d_model: int | None = None
    n_heads: int | None = None

    def model_config(self) -> ModelConfig:
        base = ModelConfig(vocab_size=512, d_model=64, n_heads=2, context_length=64) if self.quick else ModelConfig()
        overrides = {k: v for k, v in (("vocab_size", self.vocab_size), ("d_model", self.d_model), ("n_heads", self.n_heads)) if v}
        return replace(base, **overrides)

    def budget(self) -> dict:
        if self.quick:
            return {"steps": self.steps or 30, "epochs": None, "eval_interval": 15, "batch_size": 16}
        if self.steps is not None:
            return {"steps": self.steps, "epochs": None, "eval_interval": max(1, self.steps // 6)}
        return {"steps": None, "epochs": self.epochs or 1.0, "eval_interval": 125}


@dataclass(frozen=True)
class Run:
    """One model to train: a preset (lpt_routing shares lpt's model) or an alpha of the sweep."""

    name: str
    layer_weights: dict
    routing_threshold: float | None
    n_layers: int = 3


def planned_runs(settings: ReproduceSettings) -> list[Run]:
    runs = [
        Run(p.name, dict(p.layer_weights), p.routing_threshold, p.n_layers)
        for p in PRESETS.values()
        if p.name != "lpt_routing"  # the same training as lpt; only the threshold differs
    ]
    if settings.alphas:
        runs += [
            Run(f"alpha_{a:g}", {1: a, 2: 0.0, 3: round(1 - a, 6)}, 0.95)
            for a in ALPHAS
            if a not in (0.5, 0.7)  # standard_routing and asymmetric_best are those alphas
        ]
    return runs


def _schedule(settings: ReproduceSettings) -> list[tuple[Run, int]]:
    """Every preset at seed 0 first (the shipped checkpoints), then the other seeds, then the alphas."""
    runs = planned_runs(settings)
    presets = [r for r in runs if r.name in PRESETS]
    alphas = [r for r in runs if r.name not in PRESETS]
    seeds = range(settings.seeds if not settings.quick else min(settings.seeds, 2))
    return [(r, s) for s in seeds for r in presets] + [(r, s) for s in seeds for r in alphas]


def _prepare(settings: ReproduceSettings, out: Path):
    """The corpus, one shared tokenizer (saved in OUT) and the token ids of every split."""
    corpus = load_corpus(settings.corpus, max_chars=400_000 if settings.quick else None)
    model_config = settings.model_config()
    tok_path = out / "tokenizer.json"
    if tok_path.exists():
        tokenizer = load_tokenizer(tok_path)
    else:
        tokenizer = train_tokenizer(corpus.train, model_config.vocab_size, corpus.markers)
        tok_path.write_text(tokenizer.to_str(), encoding="utf-8")
    ids = {split: encode(tokenizer, corpus.split(split)) for split in ("train", "validation", "test")}
    return corpus, tokenizer, ids


def _run_one(run: Run, seed: int, settings: ReproduceSettings, corpus, tokenizer, ids, run_dir: Path, log) -> dict:
    from routed.checkpoint import load_checkpoint, save_trained
    from routed.records import evaluate
    from routed.sweep import sweep
    from routed.train import train

    model_config = replace(settings.model_config(), n_layers=run.n_layers, vocab_size=tokenizer.get_vocab_size())
    train_config = TrainConfig(layer_weights=run.layer_weights, routing_threshold=run.routing_threshold,
                               seed=seed, **settings.budget())
    start = time.perf_counter()
    last_print = [0.0]

    def on_progress(p):
        now = time.perf_counter()
        if p.validation or now - last_print[0] > 30:
            last_print[0] = now
            val = f" val PPL {'/'.join(f'{v:.1f}' for v in p.validation['val_ppl'].values())}" if p.validation else ""
            log(f"  {run.name} s{seed}: step {p.step}/{p.total_steps} loss {p.train_loss:.3f} "
                f"{p.tokens_per_s:,.0f} tok/s ETA {p.eta_s / 60:.1f} min{val}")

    result = train(model_config, train_config, corpus, tokenizer=tokenizer,
                   encoded=(ids["train"], ids["validation"]), on_progress=on_progress)
    train_s = time.perf_counter() - start
    save_trained(run_dir / "checkpoint", result, extra={"preset": run.name})
    # Evaluate the saved (fp16-rounded) weights: the numbers describe the checkpoint users get.
    model = load_checkpoint(run_dir / "checkpoint").model
    records = evaluate(model, ids["test"])
    grid = np.round(np.linspace(0, 1, 1001), 3)
    curve = sweep(records, grid)
    write_sweep(run_dir / "sweep.csv", curve)
    at_notes = sweep(records, NOTES_THRESHOLDS)
    ppl_by_exit = {str(k): float(np.exp(v.astype(np.float64).mean())) for k, v in records.nll.items()}
    return {
        "run": run.name, "seed": seed, "layer_weights": {str(k): v for k, v in run.layer_weights.items()},
        "routing_threshold": run.routing_threshold, "n_layers": run.n_layers,
        "steps": result.history[-1]["step"] if result.history else 0, "best_step": result.best_step,
        "stopped_early": result.stopped_early, "train_s": train_s, "test_tokens": len(records),
        "ppl_by_exit": ppl_by_exit,
        "at_notes_thresholds": {f"{t:g}": {k: float(at_notes[k][i]) for k in at_notes} for i, t in enumerate(NOTES_THRESHOLDS)},
        "reference": {k: float(curve[k][0]) for k in ("shallow_ppl", "deep_ppl", "oracle_ppl")},
    }


def _claim(run_dir: Path) -> bool:
    """Atomically claim a run for this process, so several processes can share one output folder.

    A claim whose process has died is taken over.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    claim = run_dir / "claim"
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(claim.read_text() or 0)
                os.kill(pid, 0)
                return False  # alive: someone else's run
            except (ValueError, ProcessLookupError, FileNotFoundError):
                claim.unlink(missing_ok=True)  # stale
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def reproduce(settings: ReproduceSettings, out: Path, log=print) -> Path:
    """Train and evaluate every scheduled run (skipping finished ones), then write the report."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    (out / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    log(f"preparing corpus {settings.corpus!r} and its tokenizer ...")
    corpus, tokenizer, ids = _prepare(settings, out)
    schedule = _schedule(settings)
    for i, (run, seed) in enumerate(schedule, start=1):
        run_dir = out / "runs" / f"{run.name}-s{seed}"
        if (run_dir / "result.json").exists():
            log(f"[{i}/{len(schedule)}] {run.name} seed {seed}: done earlier, kept")
            continue
        if not _claim(run_dir):
            log(f"[{i}/{len(schedule)}] {run.name} seed {seed}: being trained by another process, skipped")
            continue
        log(f"[{i}/{len(schedule)}] {run.name} seed {seed}: training ...")
        try:
            result = _run_one(run, seed, settings, corpus, tokenizer, ids, run_dir, log)
            tmp = run_dir / "result.json.part"
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(run_dir / "result.json")  # written last: a run with result.json is complete
        finally:
            (run_dir / "claim").unlink(missing_ok=True)
        log(f"[{i}/{len(schedule)}] {run.name} seed {seed}: test PPL by exit "
            f"{ {k: round(v, 2) for k, v in result['ppl_by_exit'].items()} } in {result['train_s'] / 60:.1f} min")
        write_report(out, settings, session_s=time.perf_counter() - started)
    path = write_report(out, settings, session_s=time.perf_counter() - started)
    log(f"report: {path}")
    return path


# --------------------------------------------------------------------------------------------
# Report


def load_results(out: Path) -> dict[str, list[dict]]:
    """Finished runs by run name, each with its sweep curve."""
    results: dict[str, list[dict]] = {}
    for path in sorted((out / "runs").glob("*/result.json")):
        result = json.loads(path.read_text())
        result["curve"] = read_sweep(path.parent / "sweep.csv")
        results.setdefault(result["run"], []).append(result)
    return results


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _model_row(results: dict, name: str) -> dict | None:
    """Per-seed numbers of a preset at its own routing threshold (lpt_routing uses lpt's runs)."""
    source = "lpt" if name == "lpt_routing" else name
    if source not in results:
        return None
    threshold = PRESETS[name].routing_threshold
    rows = []
    for r in results[source]:
        if threshold is None:
            n_layers = r["n_layers"]
            ppl = r["ppl_by_exit"][str(n_layers)]
            rows.append({"ppl": ppl, "compute": 100.0 * n_layers / 3, "shallow": 0.0, "flops": None,
                         "shallow_ppl": None, "deep_ppl": None})
        else:
            c = r["curve"]
            i = int(np.argmin(np.abs(c["threshold"] - threshold)))
            rows.append({"ppl": c["routed_ppl"][i], "compute": c["compute_pct"][i], "shallow": c["shallow_pct"][i],
                         "flops": c["flops_pct"][i], "shallow_ppl": c["shallow_ppl"][i], "deep_ppl": c["deep_ppl"][i]})
    return {"name": name, "threshold": threshold, "seeds": rows}


def _plain_flops(name: str, settings: ReproduceSettings) -> float:
    from routed.ledger import execution_cost

    cfg = replace(settings.model_config(), n_layers=PRESETS[name].n_layers)
    return float(execution_cost(cfg, {cfg.n_layers: 1.0}, "plain")[1])


def compare(a, b, lower_is_better: bool = True) -> str:
    """'better', 'worse' or 'within noise' for seeds a against seeds b (difference > 2 standard errors)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = a.mean() - b.mean()
    se = math.sqrt((a.var(ddof=1) / len(a) if len(a) > 1 else 0.0) + (b.var(ddof=1) / len(b) if len(b) > 1 else 0.0))
    if len(a) < 2 or len(b) < 2:
        se = 0.0  # one seed: no error bar; the sign alone decides, and the report says so
    if abs(diff) <= 2 * se:
        return "within noise"
    return "better" if (diff < 0) == lower_is_better else "worse"


def report_path(out: Path) -> Path:
    """The report sits beside its folder (reports/reproduction -> reports/reproduction.md) and links into it."""
    return out.parent / f"{out.name}.md"


def write_report(out: Path, settings: ReproduceSettings, session_s: float = 0.0) -> Path:
    results = load_results(out)
    lines: list[str] = []
    seeds_done = {name: len(rs) for name, rs in results.items()}
    total_train_s = sum(r["train_s"] for rs in results.values() for r in rs)
    model_cfg = settings.model_config()
    command = f"python -m routed reproduce --corpus {settings.corpus} --seeds {settings.seeds}"
    command += " --quick" if settings.quick else (f" --steps {settings.steps}" if settings.steps else f" --epochs {settings.epochs or 1:g}")
    command += "" if settings.alphas else " --no-alphas"
    for flag, value in (("--vocab-size", settings.vocab_size), ("--d-model", settings.d_model), ("--n-heads", settings.n_heads)):
        command += f" {flag} {value}" if value else ""
    lines += [
        "# Reproduction of the research notes' tables",
        "",
        f"Command: `{command} --out {out}`" + (" (with `ROUTED_DATA_DIR=../shared/data`)" if settings.corpus in ("wikitext-2", "tinystories", "tinyshakespeare") else ""),
        "",
        f"Corpus: {settings.corpus}; model: {model_cfg.n_layers} layers (1 for standard_1l), d_model {model_cfg.d_model}, "
        f"{model_cfg.n_heads} heads, context {model_cfg.context_length}, BPE vocabulary {model_cfg.vocab_size}"
        f"{' (the 256 bytes and a few merges: about one token per character)' if model_cfg.vocab_size <= 264 else ''}; "
        f"budget: {json.dumps(settings.budget())}; every run uses the same tokenizer, data order per seed and budget. "
        f"PPL is exp(mean NLL per token) on the whole test split, non-overlapping windows. Mean ± sample std over seeds.",
        "",
        f"Finished runs: {sum(seeds_done.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(seeds_done.items()))}); "
        f"training time {total_train_s / 60:.1f} min in all.",
        "",
    ]
    rows = {name: _model_row(results, name) for name in NOTES_RANKING}
    ranking_csv = []
    if rows.get("standard_3l"):
        base = np.array([s["ppl"] for s in rows["standard_3l"]["seeds"]])
        lines += ["## 1. Final ranking", "",
                  "| Model | notes PPL | notes Compute% | notes vs 3L | our PPL | our Compute% | Shallow% | FLOPs% | shallow-only PPL | deep-only PPL | our vs 3L | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, (n_ppl, n_comp, n_vs) in NOTES_RANKING.items():
            row = rows[name]
            if row is None:
                lines.append(f"| {name} | {n_ppl} | {n_comp}% | {n_vs:+.1f}% | (not run yet) | | | | | | | 0 |")
                continue
            s = row["seeds"]
            ppl = _mean_std([x["ppl"] for x in s])
            comp = _mean_std([x["compute"] for x in s])
            shallow = _mean_std([x["shallow"] for x in s])
            flops = (_mean_std([x["flops"] for x in s]) if s[0]["flops"] is not None
                     else (_plain_flops(name, settings), float("nan")))
            sp = _mean_std([x["shallow_ppl"] for x in s]) if s[0]["shallow_ppl"] is not None else None
            dp = _mean_std([x["deep_ppl"] for x in s]) if s[0]["deep_ppl"] is not None else None
            vs = 100 * (base.mean() - ppl[0]) / base.mean()
            lines.append(
                f"| {name} | {n_ppl} | {n_comp}% | {n_vs:+.1f}% | {_fmt(*ppl)} | {comp[0]:.1f}% | {shallow[0]:.1f}% | "
                f"{flops[0]:.1f}% | {_fmt(*sp) if sp else '–'} | {_fmt(*dp) if dp else '–'} | {vs:+.1f}% | {len(s)} |")
            ranking_csv.append({"model": name, "notes_ppl": n_ppl, "notes_compute_pct": n_comp, "notes_vs_3l": n_vs,
                                "ppl_mean": ppl[0], "ppl_std": ppl[1], "compute_pct_mean": comp[0],
                                "shallow_pct_mean": shallow[0], "flops_pct_mean": flops[0],
                                "shallow_ppl_mean": sp[0] if sp else "", "deep_ppl_mean": dp[0] if dp else "",
                                "vs_3l_pct": vs, "n_seeds": len(s)})
        lines += ["", "'vs 3L' is (PPL of Standard 3L − PPL) / PPL of Standard 3L; positive is better. "
                  "Routed models are read at their preset threshold; FLOPs% counts the output head "
                  "(a deep token of a routed model pays it twice).", ""]
    _write_csv(out / "final_ranking.csv", ranking_csv)

    # 2. Threshold tables
    for name, table_name in (("standard_routing", "threshold_standard_routing"), ("lpt", "threshold_lpt")):
        if name not in results:
            continue
        lines += [f"## 2. Threshold analysis: {name}", "",
                  "| Threshold | notes PPL | notes Shallow% | notes Compute% | our PPL | our Shallow% | our Compute% | FLOPs% |",
                  "|---|---|---|---|---|---|---|---|"]
        csv_rows = []
        for t in NOTES_THRESHOLDS:
            per_seed = [r["at_notes_thresholds"][f"{t:g}"] for r in results[name]]
            ppl = _mean_std([p["routed_ppl"] for p in per_seed])
            sh = _mean_std([p["shallow_pct"] for p in per_seed])
            comp = _mean_std([p["compute_pct"] for p in per_seed])
            fl = _mean_std([p["flops_pct"] for p in per_seed])
            n = NOTES_THRESHOLD_TABLES[name][t]
            lines.append(f"| {t:.2f} | {n[0]} | {n[1]}% | {n[2]}% | {_fmt(*ppl)} | {_fmt(*sh, 1)}% | {comp[0]:.1f}% | {fl[0]:.1f}% |")
            csv_rows.append({"threshold": t, "notes_ppl": n[0], "notes_shallow_pct": n[1], "notes_compute_pct": n[2],
                             "ppl_mean": ppl[0], "ppl_std": ppl[1], "shallow_pct_mean": sh[0],
                             "compute_pct_mean": comp[0], "flops_pct_mean": fl[0]})
        ref = [r["reference"] for r in results[name]]
        lines += ["", f"Reference lines: shallow-only PPL {_fmt(*_mean_std([x['shallow_ppl'] for x in ref]))}, "
                  f"deep-only PPL {_fmt(*_mean_std([x['deep_ppl'] for x in ref]))}, "
                  f"oracle PPL {_fmt(*_mean_std([x['oracle_ppl'] for x in ref]))}.", ""]
        _write_csv(out / f"{table_name}.csv", csv_rows)

    # 3. Alpha sweep
    alpha_rows = []
    for a in ALPHAS:
        name = {0.5: "standard_routing", 0.7: "asymmetric_best"}.get(a, f"alpha_{a:g}")
        if name not in results:
            continue
        rs = results[name]
        row = {"alpha": a, "run": name, "n_seeds": len(rs)}
        row["ppl_at_095_mean"], row["ppl_at_095_std"] = _mean_std([r["at_notes_thresholds"]["0.95"]["routed_ppl"] for r in rs])
        row["compute_at_095_mean"] = _mean_std([r["at_notes_thresholds"]["0.95"]["compute_pct"] for r in rs])[0]
        for c in MATCHED_COMPUTE:
            row[f"ppl_at_{c:g}pct_mean"], row[f"ppl_at_{c:g}pct_std"] = _mean_std([ppl_at(r["curve"], c) for r in rs])
        alpha_rows.append(row)
    if alpha_rows:
        lines += ["## 3. Alpha sweep (loss weights {1: alpha, 3: 1 − alpha}, no L2 loss)", "",
                  "| alpha | PPL at threshold .95 | Compute% at .95 | " + " | ".join(f"PPL at {c:g}% compute" for c in MATCHED_COMPUTE) + " | seeds |",
                  "|---|---|---|" + "---|" * len(MATCHED_COMPUTE) + "---|"]
        for row in alpha_rows:
            lines.append(f"| {row['alpha']:g} | {_fmt(row['ppl_at_095_mean'], row['ppl_at_095_std'])} | {row['compute_at_095_mean']:.1f}% | "
                         + " | ".join(_fmt(row[f'ppl_at_{c:g}pct_mean'], row[f'ppl_at_{c:g}pct_std']) for c in MATCHED_COMPUTE)
                         + f" | {row['n_seeds']} |")
        lines += ["", "Matched compute: each model's routed PPL interpolated along its threshold sweep at that Compute%.", ""]
    _write_csv(out / "alpha_sweep.csv", alpha_rows)

    # 4. Verdicts and regime
    verdicts = _verdicts(results, rows)
    if verdicts:
        lines += ["## 4. The notes' claims, checked", "", "| Claim | Verdict | Evidence |", "|---|---|---|"]
        lines += [f"| {v['claim']} | **{v['verdict']}** | {v['evidence']} |" for v in verdicts]
        lines += ["", "Verdicts compare seed means; a difference within two standard errors is 'within noise'. "
                  "With one seed there is no error bar and the verdict rests on the sign alone.", ""]
    _write_csv(out / "verdicts.csv", verdicts)
    lines += _regime_lines(results)
    _plots(out, results, settings)
    if (out / "ppl_vs_compute.png").exists():
        lines += ["## Plots", "", f"![PPL against Compute%]({out.name}/ppl_vs_compute.png)", "",
                  f"Interactive: `{out.name}/ppl_vs_compute.html`. Tables as CSV: `{out.name}/*.csv`.", ""]
    if (out.parent / "regimes.md").exists():
        lines += ["Other regimes tried (where small models are more confident): [regimes.md](regimes.md).", ""]
    if session_s:
        lines += [f"Wall time of the last reproduce invocation: {session_s / 60:.1f} min.", ""]
    path = report_path(out)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)  # several processes may write the report: each write is whole
    return path


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp.replace(path)


def _seed_ppls(row: dict | None) -> list[float]:
    return [s["ppl"] for s in row["seeds"]] if row else []


def _verdicts(results: dict, rows: dict) -> list[dict]:
    out = []

    def verdict(claim: str, a, b, what: str) -> None:
        if not len(a) or not len(b):
            return
        v = compare(a, b)
        label = {"better": "held", "worse": "not held", "within noise": "within noise"}[v]
        if min(len(a), len(b)) < 2:
            label += " (1 seed)"
        out.append({"claim": claim, "verdict": label,
                    "evidence": f"{what}: {np.mean(a):.2f} vs {np.mean(b):.2f} (n={len(a)}, {len(b)})"})

    base = _seed_ppls(rows.get("standard_3l"))
    for name in ("standard_routing", "asymmetric_best"):
        if name in results and base:
            at65 = [ppl_at(r["curve"], 65.0) for r in results[name]]
            verdict(f"routing ({name}) beats Standard 3L at ~65% compute", at65, base,
                    f"{name} PPL at 65% Compute vs Standard 3L PPL")
    if "asymmetric_best" in results and "standard_routing" in results:
        a = [ppl_at(r["curve"], 65.0) for r in results["asymmetric_best"]]
        b = [ppl_at(r["curve"], 65.0) for r in results["standard_routing"]]
        verdict("alpha 0.7 beats alpha 0.5 (at matched 65% compute)", a, b, "PPL at 65% Compute, alpha 0.7 vs 0.5")
        verdict("alpha 0.7 beats alpha 0.5 (at threshold .95)", _seed_ppls(rows["asymmetric_best"]),
                _seed_ppls(rows["standard_routing"]), "PPL at threshold .95, alpha 0.7 vs 0.5")
    if "asymmetric_l2" in results and "asymmetric_best" in results:
        # 'an L2 loss hurts' holds when the model without the L2 loss is better
        verdict("an L2 loss hurts (asymmetric without L2 beats with L2, threshold .95)", _seed_ppls(rows["asymmetric_best"]),
                _seed_ppls(rows["asymmetric_l2"]), "PPL without vs with L2 loss")
        a = [ppl_at(r["curve"], 65.0) for r in results["asymmetric_best"]]
        b = [ppl_at(r["curve"], 65.0) for r in results["asymmetric_l2"]]
        verdict("an L2 loss hurts (at matched 65% compute)", a, b, "PPL at 65% Compute without vs with L2 loss")
    if "lpt" in results and rows.get("lpt_routing"):
        level = float(np.mean([s["compute"] for s in rows["lpt_routing"]["seeds"]]))
        lpt = [ppl_at(r["curve"], level) for r in results["lpt"]]
        for other in ("standard_routing", "asymmetric_best"):
            if other in results:
                b = [ppl_at(r["curve"], level) for r in results[other]]
                verdict(f"LPT routing is more efficient than {other} (at LPT routing's {level:.1f}% compute)", lpt, b,
                        f"PPL at {level:.1f}% Compute, LPT vs {other}")
    for name in ("standard_routing", "lpt"):
        if name in results:
            hi = [r["at_notes_thresholds"]["0.95"]["routed_ppl"] for r in results[name]]
            lo = [r["at_notes_thresholds"]["0.5"]["routed_ppl"] for r in results[name]]
            verdict(f"a higher threshold gives a better PPL ({name}: .95 vs .5)", hi, lo, "PPL at .95 vs at .5")
    for name in ("standard_routing", "asymmetric_best", "lpt_routing"):
        if rows.get(name):  # Compute% counts layers only; FLOPs% also counts the output head(s)
            flops = [s["flops"] for s in rows[name]["seeds"]]
            compute = [s["compute"] for s in rows[name]["seeds"]]
            out.append({"claim": f"routing ({name}, threshold {PRESETS[name].routing_threshold:g}) saves arithmetic",
                        "verdict": "held" if max(flops) < 100 else "not held",
                        "evidence": f"Compute% {np.mean(compute):.1f} but FLOPs% {np.mean(flops):.1f} of the plain 3-layer "
                                    f"model (n={len(flops)})"})
    if rows.get("asymmetric_best") and rows.get("standard_1l") and base:
        verdict("the best routed model beats Standard 1L", _seed_ppls(rows["asymmetric_best"]),
                _seed_ppls(rows["standard_1l"]), "asymmetric_best at .95 vs Standard 1L")
        verdict("the best routed model beats Standard 3L", _seed_ppls(rows["asymmetric_best"]), base,
                "asymmetric_best at .95 vs Standard 3L")
    return out


def _regime_lines(results: dict) -> list[str]:
    notes = {"standard_routing": {0.5: 95.5, 0.95: 57.1}, "lpt": {0.5: 95.1, 0.95: 64.6}}
    lines = []
    for name, ref in notes.items():
        if name not in results:
            continue
        ours = {t: float(np.mean([r["at_notes_thresholds"][f"{t:g}"]["shallow_pct"] for r in results[name]])) for t in ref}
        differs = any(ours[t] < 0.5 * ref[t] for t in ref)
        lines.append(
            f"- {name}: Shallow% at .5 is {ours[0.5]:.1f}% (notes {ref[0.5]}%), at .95 {ours[0.95]:.1f}% (notes {ref[0.95]}%)"
            + (" — **a different regime from the notes': far fewer tokens are confident, so routing saves less.**" if differs else ".")
        )
    return (["## Regime", ""] + lines + [""]) if lines else []


def _plots(out: Path, results: dict, settings: ReproduceSettings) -> None:
    """PPL against Compute% for every routed run (mean over seeds), with the plain models as points."""
    curves = {}
    grid = np.linspace(100 / 3, 100, 68)
    for name, rs in results.items():
        if PRESETS.get(name) is not None and PRESETS[name].routing_threshold is None and name != "lpt":
            continue
        curves[name] = np.mean([[ppl_at(r["curve"], c) for c in grid] for r in rs], axis=0)
    points = {name: (100.0 * PRESETS[name].n_layers / 3, float(np.mean(_seed_ppls(_model_row(results, name)))))
              for name in ("standard_1l", "standard_3l") if name in results}
    if not curves and not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, y in curves.items():
        ax.plot(grid, y, label=name, linewidth=1.5 if name in PRESETS else 0.8)
    for (name, (x, y)), marker in zip(points.items(), ("s", "D")):
        ax.scatter([x], [y], marker=marker, color="black", zorder=3, label=name)  # not a path colour
    ax.set_xlabel("Compute% (layers per token vs 3-layer model)")
    ax.set_ylabel("test PPL (routed)")
    ax.set_title(f"PPL against compute — {settings.corpus}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ppl_vs_compute.png", dpi=110)
    plt.close(fig)
    try:
        import altair as alt
        import pandas as pd

        frame = pd.DataFrame([{"model": n, "compute_pct": float(c), "ppl": float(p)} for n, y in curves.items() for c, p in zip(grid, y)])
        dots = pd.DataFrame([{"model": n, "compute_pct": x, "ppl": y} for n, (x, y) in points.items()])
        chart = alt.Chart(frame).mark_line().encode(x="compute_pct", y=alt.Y("ppl", scale=alt.Scale(zero=False)), color="model")
        if len(dots):
            chart = chart + alt.Chart(dots).mark_square(size=80).encode(x="compute_pct", y="ppl", color="model")
        chart.properties(width=600, height=380).save(str(out / "ppl_vs_compute.html"))
    except Exception:
        pass  # the PNG is the record; the interactive copy is a convenience


def export_checkpoints(out: Path, dest: Path, seed: int = 0, prefix: str = "") -> list[Path]:
    """Copy each preset's seed-`seed` run into dest/<prefix><preset>/ with its own threshold, sweep.csv, summary.json
    and diagnostics.json."""
    from routed.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    from routed.diagnostics import compute_diagnostics, write_diagnostics

    written = []
    for name, preset in PRESETS.items():
        source = out / "runs" / f"{'lpt' if name == 'lpt_routing' else name}-s{seed}"
        if not (source / "result.json").exists():
            continue
        ckpt = load_checkpoint(source / "checkpoint")
        train_config = TrainConfig.from_dict({**ckpt.train_config.to_dict(), "routing_threshold": preset.routing_threshold})
        target = save_checkpoint(checkpoint_path(prefix + name, dest), ckpt.model, ckpt.tokenizer, train_config, ckpt.meta["corpus"]["name"],
                                 ckpt.meta["corpus"]["fingerprint"], ckpt.history,
                                 extra={"preset": name, "best_step": ckpt.meta.get("best_step"), "seed": seed})
        shutil.copy(source / "sweep.csv", target / "sweep.csv")
        result = json.loads((source / "result.json").read_text())
        (target / "summary.json").write_text(json.dumps({k: result[k] for k in ("ppl_by_exit", "at_notes_thresholds", "reference", "test_tokens")}, indent=2))
        # calibration, agreement counts and settling depth, so the app shows them without the corpus
        write_diagnostics(target, compute_diagnostics(load_checkpoint(target)))
        written.append(target)
    return written
