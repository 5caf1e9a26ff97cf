"""Is a reproduction's budget long enough? The same preset trained on twice the tokens answers directly.

`benchmarks/convergence.py` writes one record per corpus, preset and budget (reports/convergence/*.json). A
reproduction's preset has a doubling check where such a record, of the same corpus, vocabulary, model size
and seed, trained on at least twice the tokens of that seed's run in the reproduction: the check is what the
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

DOUBLED = 1.99  # "twice the tokens", allowing for an epoch budget's rounding to whole steps


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
    """The doubling check a record gives, or None where it is of another model or not at least twice as long."""
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
    if doubled_best is None or doubled_tokens < DOUBLED * tokens:
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
            records.append({**record, "file": path.name})
    return records


def budget_checks(folder: Path, settings, histories: dict[tuple[str, int], list]) -> dict[str, dict]:
    """{preset: check} for the presets of a reproduction that have a doubled-budget record in FOLDER.

    HISTORIES are the reproduction's validation histories by (run, seed). Each check holds the reproduction
    run's and the longer run's token counts, best objective PPL (exp of the best validation objective) and
    the gain in %; the smallest longer budget is used where there are several."""
    cfg = settings.model_config()
    model = (settings.corpus, cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.context_length)
    checks: dict[str, dict] = {}
    for record in _records(folder):
        try:
            check = _check(record, histories, model)
        except (KeyError, TypeError, ValueError):
            continue  # not a record this code wrote: no check rather than a failed report
        preset = record["preset"] if check else None
        if check and (preset not in checks or check["doubled_tokens"] < checks[preset]["doubled_tokens"]):
            checks[preset] = {**check, "record": f"{folder.name}/{record['file']}"}
    return checks
