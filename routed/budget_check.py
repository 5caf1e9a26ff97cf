"""Is a reproduction's budget long enough? The same preset trained on twice the tokens answers directly.

`benchmarks/convergence.py` writes one record per corpus, preset and budget (reports/convergence/*.json), and
a reproduction's seed-0 runs are such records too (reports/reproduction*/runs/<preset>-s0/train.json). A
reproduction's preset has a doubling check where a record of the same corpus, vocabulary, model size and
seed trained on twice the tokens of that seed's run in the reproduction: the check is what the
longer training gained at its best validation on the preset's own objective (its weighted exits). This is
stronger evidence than the run's own last fifth, whose gain includes the learning-rate anneal: a 9,600-step
TinyStories Standard 3L run gained 1.3% over its last fifth, yet 19,200 steps gained 0.5% on it. The benchmark
validates more often than a reproduction (every 125 steps against a twelfth of the budget), which gives the
longer run more chances at a low validation: if anything the check errs towards "not converged".
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from routed.config import PRESETS, ModelConfig
from routed.convergence import doubling_gain_pct
from routed.files import MB, read_json

# "twice the tokens", allowing for an epoch budget's rounding to whole steps. Far longer budgets are not this
# check: 8 times the tokens gaining 2% does not say that twice would gain 1%.
DOUBLED = (1.99, 2.05)


def _best_loss(curve: list[dict], preset: str) -> float | None:
    """The best validation objective of a curve; records written before the objective was kept hold only the last
    exit's PPL, which is the objective just for a single-exit preset."""
    if all("val_loss" in c for c in curve):
        losses = [c["val_loss"] for c in curve]
    elif {k for k, w in PRESETS[preset].layer_weights.items() if w} == {PRESETS[preset].n_layers}:
        losses = [math.log(c["val_ppl"]) for c in curve]
    else:
        return None
    finite = [v for v in losses if math.isfinite(v)]
    return min(finite) if finite else None


def _check(record: dict, histories: dict, model: tuple) -> dict | None:
    """The doubling check a record gives, or None where it is of another model or not twice as long."""
    default = ModelConfig()
    preset, seed = record["preset"], record["seed"]
    # Sizes are kept in records since they are read here; before that, a size other than the default
    # showed only in the file name ("-d256-").
    sized_by_name_only = "d_model" not in record and re.search(r"-d\d+-v\d+-", record["file"])
    same_model = (record.get("corpus"), record.get("vocab_size"), record.get("d_model", default.d_model),
                  record.get("n_heads", default.n_heads), record.get("context_length", default.context_length)) == model
    history = [h for h in histories.get((preset, seed)) or [] if math.isfinite(h["val_loss"])]
    if preset not in PRESETS or not history or not same_model or sized_by_name_only:
        return None
    best, doubled_best = min(h["val_loss"] for h in history), _best_loss(record["curve"], preset)
    tokens, doubled_tokens = int(history[-1]["tokens"]), int(record["curve"][-1]["tokens"])
    if doubled_best is None or not DOUBLED[0] * tokens <= doubled_tokens <= DOUBLED[1] * tokens:
        return None
    return {"seed": int(seed), "tokens": tokens, "doubled_tokens": doubled_tokens, "doubled_steps": int(record["steps"]),
            "doubled_best_step": int(record["best_step"]), "best_ppl": math.exp(best),
            "doubled_best_ppl": math.exp(doubled_best), "gain_pct": doubling_gain_pct(best, doubled_best)}


def _records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = read_json(path, 16 * MB, path.name)
        except (OSError, ValueError):
            continue  # a record being written, or not one of ours: no check rather than a failed report
        if isinstance(record, dict) and record.get("curve"):
            records.append({**record, "file": path.name, "label": f"{folder.name}/{path.name}"})
    return records


def reproduction_records(reports: Path, preset: str, seed: int = 0) -> list[dict]:
    """The preset's runs of one seed trained in the reproductions under REPORTS, as records of the benchmark's form
    (one more budget each). Unreadable folders and runs still training are left out."""
    from routed.reproduce import saved_settings

    records = []
    for folder in sorted(reports.glob("reproduction*/")):
        train_json = folder / "runs" / f"{preset}-s{seed}" / "train.json"
        if not train_json.is_file():
            continue
        try:
            settings = saved_settings(folder)
            run = read_json(train_json, 16 * MB, "train.json")
            cfg = settings.model_config()
            last = str(max(int(k) for k in run["history"][-1]["val_ppl"]))
            curve = [{"step": h["step"], "tokens": h["tokens"], "val_ppl": h["val_ppl"][last], "val_loss": h["val_loss"],
                      "val_ppl_by_exit": h["val_ppl"]} for h in run["history"]]
            records.append({
                "corpus": settings.corpus, "preset": preset, "seed": seed, "epochs": settings.epochs,
                "steps": curve[-1]["step"], "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
                "n_heads": cfg.n_heads, "context_length": cfg.context_length, "quick": settings.quick,
                "final_val_ppl": curve[-1]["val_ppl"], "best_val_ppl": min(c["val_ppl"] for c in curve),
                "best_step": run["best_step"], "train_s": run["train_s"], "curve": curve,
                "stopped_early": run.get("stopped_early", False), "file": train_json.name,
                "label": f"{folder.name}/runs/{preset}-s{seed}/train.json", "source": f"{folder.name}/",
            })
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue  # not a run this code finished: no record rather than a failed report
    return records


def budget_checks(folder: Path, settings, histories: dict[tuple[str, int], list],
                  reproductions: Path | None = None) -> dict[str, dict]:
    """{preset: check} for the presets of a reproduction that have a doubled-budget record in FOLDER (the
    benchmark's) or, given REPRODUCTIONS, among the seed-0 runs of the reproductions there.

    HISTORIES are the reproduction's validation histories by (run, seed). Each check holds the reproduction
    run's and the longer run's token counts, best objective PPL (exp of the best validation objective) and
    the gain in %; where there are several, the benchmark's is used (it validates more often)."""
    cfg = settings.model_config()
    model = (settings.corpus, cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.context_length)
    records = _records(folder)
    if reproductions is not None:
        presets = sorted({run for run, _ in histories} & set(PRESETS))
        records += [r for preset in presets for r in reproduction_records(reproductions, preset)]
    checks: dict[str, dict] = {}
    for record in records:
        try:
            check = _check(record, histories, model)
        except (KeyError, TypeError, ValueError):
            continue  # not a record this code wrote: no check rather than a failed report
        preset = record["preset"] if check else None
        if check and preset not in checks:
            checks[preset] = {**check, "record": record["label"]}
    return checks
