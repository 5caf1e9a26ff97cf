"""Which reproduction trained a checkpoint, and what its report says of that training's convergence.

A shipped checkpoint is a reproduction's seed-0 run copied out (`reproduce --export`), so the reproduction's
report is where its convergence was judged (the last fifth of training, or a run on twice the tokens). Pages
show that verdict beside the model, so that an undertrained model is never read as a finished one.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from routed.config import trained_as
from routed.files import MB, read_json, read_regular


def _fingerprint_of_run(config: Path) -> str | None:
    try:
        return read_json(config, MB, "config.json").get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None  # a run being written or damaged: not the source


def _run_of(config: dict) -> tuple[str | None, int | None]:
    """The reproduction run (and seed) a checkpoint is: lpt_routing is the lpt model read at another threshold."""
    preset = config.get("preset")
    return (trained_as(preset) if isinstance(preset, str) else None), config.get("seed")


def _same_recipe(settings, config: dict) -> bool:
    """True where the reproduction's settings train the checkpoint's preset at its size, corpus and budget."""
    model, train = settings.model_config(), config.get("train", {})
    budget = settings.budget()
    return (settings.corpus == config.get("corpus", {}).get("name")
            and all(config.get("model", {}).get(k) == getattr(model, k)
                    for k in ("vocab_size", "d_model", "n_heads", "context_length"))
            and train.get("steps") == budget["steps"]
            and (budget["epochs"] is None or train.get("epochs") == budget["epochs"]))


def _trained_in(config: dict, folders: list[Path]) -> tuple[Path, str, int] | None:
    """(reproduction folder, run, seed) that trained the checkpoint with this config.json: the run holding its
    weights' fingerprint, else a run whose settings train its preset and seed alike (reproductions that kept no
    weights)."""
    from routed.reproduce import saved_settings

    fingerprint = config.get("fingerprint")
    for folder in folders if fingerprint else []:
        for run_config in sorted(folder.glob("runs/*-s*/checkpoint/config.json")):
            if _fingerprint_of_run(run_config) == fingerprint:
                run, _, seed = run_config.parent.parent.name.rpartition("-s")
                if seed.isdigit():
                    return folder, run, int(seed)
    run, seed = _run_of(config)
    for folder in folders if run and isinstance(seed, int) else []:
        try:
            settings = saved_settings(folder)
        except ValueError:
            continue
        if _same_recipe(settings, config) and (folder / "runs" / f"{run}-s{seed}" / "result.json").is_file():
            return folder, run, seed
    return None


def source_of(config: dict, folders: list[Path]) -> Path | None:
    """The reproduction folder among FOLDERS that trained the checkpoint with this config.json, or None."""
    found = _trained_in(config, folders)
    return found[0] if found else None


def training_status(config: dict, folders: list[Path]) -> str | None:
    """One sentence on the checkpoint's training: its budget, best step and the convergence verdict of the
    reproduction that trained it, e.g. "Trained 9,600 steps (best validation at step 8,800); converged: twice
    the tokens gained 0.50% (reproduction-tinystories-9600)". None where no reproduction trained it."""
    found = _trained_in(config, folders)
    if found is None:
        return None
    folder, run, seed = found
    try:
        text = read_regular(folder / "convergence.csv", 4 * MB, "convergence.csv").decode("utf-8")
        rows = [r for r in csv.DictReader(io.StringIO(text)) if r.get("run") == run and r.get("seed") == str(seed)]
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        return None
    if not rows:
        return None
    row, train = rows[0], config.get("train", {})
    length = f"{train['epochs']:g} epochs" if train.get("epochs") else f"{train.get('steps', 0):,} steps"
    best = config.get("best_step")
    line = f"Trained {length}" + (f" (best validation at step {best:,})" if isinstance(best, int) else "")
    try:
        if row.get("rule") == "budget doubled":
            why = f"twice the tokens gained {float(row['doubling_gain_pct']):.2f}%"
        else:
            why = f"its last fifth of training gained {float(row['tail_gain_pct']):.2f}%, and no run on twice the tokens"
    except (KeyError, ValueError, TypeError):
        why = ""
    status = row.get("status", "")
    return f"{line}; {status}{': ' + why if why else ''} ({folder.name})."
