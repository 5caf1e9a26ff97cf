"""Ship a reproduction's runs as checkpoints: each preset's run of one seed, with its own threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from routed.config import PRESETS, TrainConfig, trained_as
from routed.reproduce import write_json


def export_source(out: Path, name: str, seed: int = 0) -> Path:
    """The run a preset is exported from: lpt_routing reuses the lpt model (it differs only in its threshold)."""
    return out / "runs" / f"{trained_as(name)}-s{seed}"


def unfinished_exports(out: Path, seed: int = 0) -> list[str]:
    """The presets whose seed-`seed` run has not finished yet."""
    return [name for name in PRESETS if not (export_source(out, name, seed) / "result.json").exists()]


def missing_weights(out: Path, seed: int = 0) -> list[str]:
    """The presets whose seed-`seed` run has finished but whose model is not in the folder."""
    from routed.checkpoint import holds_checkpoint

    sources = {name: export_source(out, name, seed) for name in PRESETS}
    return [name for name, run in sources.items()
            if (run / "result.json").exists() and not holds_checkpoint(run / "checkpoint")]


def export_checkpoints(out: Path, dest: Path, seed: int = 0, prefix: str = "") -> list[Path]:
    """Copy each preset's seed-`seed` run into dest/<prefix><preset>/ with its own threshold, test sweeps,
    summary.json and diagnostics.json. Nothing is written unless every finished run's model is there, so the
    shipped set is never half old, half new."""
    from routed.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, save_checkpoint
    from routed.diagnostics import compute_diagnostics, write_diagnostics

    lost = missing_weights(out, seed)
    if lost:
        raise CheckpointError(f"export: the seed-{seed} models of {', '.join(lost)} are not in {out} (their results "
                              "are); run `reproduce` with this --out and --export to retrain them, then export")
    written = []
    for name, preset in PRESETS.items():
        source = export_source(out, name, seed)
        if not (source / "result.json").exists():
            continue
        ckpt = load_checkpoint(source / "checkpoint")
        train_config = TrainConfig.from_dict({**ckpt.train_config.to_dict(), "routing_threshold": preset.routing_threshold})
        target = save_checkpoint(checkpoint_path(prefix + name, dest), ckpt.model, ckpt.tokenizer, train_config,
                                 ckpt.meta["corpus"]["name"], ckpt.meta["corpus"]["fingerprint"], ckpt.history,
                                 extra={"preset": name, "best_step": ckpt.meta.get("best_step"), "seed": seed})
        for extra in ("sweep.csv", "sweep_all.csv"):  # markers left out / every token
            if (source / extra).exists():
                shutil.copy(source / extra, target / extra)
        result = json.loads((source / "result.json").read_text())
        keep = ("ppl_by_exit", "bpb_by_exit", "ppl_by_exit_all", "at_notes_thresholds", "reference", "test_tokens",
                "convergence")
        write_json(target / "summary.json", {k: result[k] for k in keep if k in result})
        # calibration, agreement counts and settling depth, so the app shows them without the corpus
        write_diagnostics(target, compute_diagnostics(load_checkpoint(target)))
        written.append(target)
    return written
