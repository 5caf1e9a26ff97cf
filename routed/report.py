"""The reproduction report: markdown beside the folder, CSV tables and figures inside it, from finished runs.

Everything is rebuilt from the files each run leaves (result.json, sweep.csv, blocks.npz, train.json), so
the report can be regenerated at any time without a model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from routed.budget_check import budget_checks
from routed.checkpoint import read_sweep
from routed.convergence import with_budget_check


def load_results(out: Path) -> dict[str, list[dict]]:
    """Finished runs by run name (seed order), each with its marker-free sweep as "curve"."""
    results: dict[str, list[dict]] = {}
    for path in sorted((out / "runs").glob("*/result.json")):
        result = json.loads(path.read_text())
        result["curve"] = read_sweep(path.parent / "sweep.csv")
        results.setdefault(result["run"], []).append(result)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in results.items()}


def load_blocks(out: Path) -> dict[tuple[str, int], dict]:
    blocks = {}
    for path in (out / "runs").glob("*/blocks.npz"):
        result = json.loads((path.parent / "result.json").read_text()) if (path.parent / "result.json").exists() else None
        if result:
            with np.load(path, allow_pickle=False) as z:
                blocks[(result["run"], result["seed"])] = {k: z[k] for k in z.files}
    return blocks


def load_histories(out: Path) -> dict[tuple[str, int], list]:
    histories = {}
    for path in (out / "runs").glob("*/train.json"):
        info = json.loads(path.read_text())
        if info.get("history"):
            histories[(info["run"], info["seed"])] = info["history"]
    return histories


def report_path(out: Path) -> Path:
    """The report sits beside its folder (reports/reproduction -> reports/reproduction.md) and links into it."""
    return out.parent / f"{out.name}.md"


def command_of(settings, out: Path) -> str:
    """The `python -m routed reproduce` command that makes this report."""
    command = f"python -m routed reproduce --corpus {settings.corpus} --seeds {settings.seeds}"
    command += " --quick" if settings.quick else (f" --steps {settings.steps}" if settings.steps else f" --epochs {settings.budget()['epochs']:g}")
    command += "" if settings.alphas else " --no-alphas"
    for flag, value in (("--vocab-size", settings.vocab_size), ("--d-model", settings.d_model), ("--n-heads", settings.n_heads)):
        command += f" {flag} {value}" if value else ""
    local = settings.corpus in ("wikitext-2", "tinystories", "tinyshakespeare")
    return ("ROUTED_DATA_DIR=../shared/data " if local else "") + command + f" --out {out}"


def _header(out: Path, settings, results: dict, session_s: float | None) -> list[str]:
    cfg = settings.model_config()
    done = {name: len(rs) for name, rs in results.items()}
    train_min = sum(r["train_s"] for rs in results.values() for r in rs) / 60
    tokens = next((rs[0] for rs in results.values() if rs), None)
    bytes_only = cfg.vocab_size <= 256 + 8
    # what the runs did, read from them: runs trained before every run had to finish its budget had a patience rule
    budget = {k: v for k, v in settings.budget().items() if k != "patience"}
    stopped = [f"{r['run']} s{r['seed']}" for rs in results.values() for r in rs if r.get("stopped_early")]
    lines = [
        "# Reproduction of the research notes' tables", "",
        f"Command: `{command_of(settings, out)}`", "",
        f"Corpus: {settings.corpus}; model: 3 layers (1 for standard_1l), d_model {cfg.d_model}, {cfg.n_heads} heads, "
        f"context {cfg.context_length}; tokenizer: byte-level BPE, {cfg.vocab_size} tokens"
        + (" (the 256 bytes and the corpus' marker tokens, no merges: PPL per token is PPL per byte on the marker-free "
           "tokens)" if bytes_only else "")
        + "; the corpus' markup (e.g. `<unk>`, `<|endoftext|>`) is one special token each. "
        f"Budget: {json.dumps(budget)}, the same for every run, with the same tokenizer and data order per seed; "
        + (f"{len(stopped)} run(s) stopped early on the patience rule ({', '.join(stopped)}); the others trained their whole "
           "budget" if stopped else "every run trained its whole budget (none stopped early)")
        + " and kept its best validated weights.",
        "",
        "PPL is exp(mean NLL per token) over the whole test split in non-overlapping windows, **with the marker tokens "
        "left out** unless a column says 'all tokens'; bits per byte = total NLL in bits / UTF-8 bytes of the predicted "
        "tokens. Mean ± sample standard deviation over seeds.", "",
        f"Finished runs: {sum(done.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(done.items()))}); "
        f"training time {train_min:.1f} min in all"
        + (f"; test split: {tokens['test_tokens']:,} tokens without markers ({tokens['test_tokens_all']:,} with), "
           f"{tokens['test_bytes']:,} bytes" if tokens else "") + ".", "",
    ]
    retrained = [r for rs in results.values() for r in rs if isinstance(r.get("retrained"), dict)]
    if retrained:  # their weights were lost (a clone keeps results, not models) and were trained again to be exported
        lines += ["Trained again with the same seed and data order, their models having been lost: "
                  + "; ".join(f"{r['run']} s{r['seed']}: {r['retrained'].get('summary')}" for r in retrained)
                  + ". Float results depend on the CPU, the number of threads, the library build and the code "
                  "version that trained a model, so one trained again can differ slightly from the lost one; the "
                  "tables describe the new models, the ones exported.", ""]
    if session_s is not None:
        lines += [f"Wall time of the last reproduce invocation: {session_s / 60:.1f} min.", ""]
    return lines


def _regime_lines(results: dict) -> list[str]:
    notes = {"standard_routing": {0.5: 95.5, 0.95: 57.1}, "lpt": {0.5: 95.1, 0.95: 64.6}}
    lines = []
    for name, ref in notes.items():
        if name not in results:
            continue
        ours = {t: float(np.mean([r["at_notes_thresholds"][f"{t:g}"]["shallow_pct"] for r in results[name]])) for t in ref}
        every = {t: float(np.mean([r["at_notes_thresholds_all"][f"{t:g}"]["shallow_pct"] for r in results[name]])) for t in ref}
        differs = any(ours[t] < 0.5 * ref[t] for t in ref)
        lines.append(
            f"- {name}: Shallow% at .5 is {ours[0.5]:.1f}% ({every[0.5]:.1f}% with markers; notes {ref[0.5]}%), at .95 "
            f"{ours[0.95]:.1f}% ({every[0.95]:.1f}% with markers; notes {ref[0.95]}%)"
            + (" — **a different regime from the notes': far fewer tokens are confident, so routing has little to route.**"
               if differs else "."))
    return (["## 8. Regime", ""] + lines + [""]) if lines else []


def write_report(out: Path, settings, session_s: float | None = None) -> Path:
    """Write OUT.md and the CSVs and figures in OUT from the finished runs; returns the markdown's path."""
    from routed import report_plots as plots
    from routed import report_sections as sections
    from routed.config import PRESETS

    results = load_results(out)
    histories = load_histories(out)
    checks = budget_checks(out.parent / "convergence", settings, histories, reproductions=out.parent)
    for name, rs in results.items():
        for r in rs:
            r["convergence"] = with_budget_check(r["convergence"], checks.get(name))
    lines = _header(out, settings, results, session_s)
    figure = plots.validation_curves(out, histories) if results else None
    conv, provisional = sections.convergence_section(out, results, figure, checks)
    lines += conv
    rank_lines, rank_rows = sections.ranking(results, settings)
    lines += rank_lines
    sections.write_csv(out / "final_ranking.csv", rank_rows)
    lines += sections.threshold_tables(out, results)
    lines += sections.alpha_table(out, results)
    lines += sections.verdict_section(out, results, load_blocks(out), provisional)
    lines += sections.exits_section(results)
    lines += sections.hypotheses_section(out)
    lines += _regime_lines(results)
    if results:
        points = {}
        for name in ("standard_1l", "standard_3l"):
            rs = results.get(name)
            row = next((r for r in rank_rows if r["model"] == name), None)
            if rs and row:
                points[name] = {"compute_pct": 100.0 * PRESETS[name].n_layers / 3, "flops_pct": row["flops_pct_mean"],
                                "ppl": row["ppl_mean"]}
        files = plots.cost_curves(out, results, points, settings.corpus)
        lines += ["## Figures", ""] + [f"![{f}]({out.name}/{f})" for f in files] + [
            "", f"Tables as CSV: `{out.name}/*.csv`. Every run's result.json, sweeps and blocks: `{out.name}/runs/`.", ""]
    if (out.parent / "regimes.md").exists():
        lines += ["Other regimes tried (where small models are more confident): [regimes.md](regimes.md).", ""]
    path = report_path(out)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)  # several processes may write the report: each write is whole
    return path
