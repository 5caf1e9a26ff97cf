"""hypotheses.json: the notes' threshold tables under candidate mistakes (routed.hypotheses), computed on a
reproduction's seed-0 standard_routing and lpt models.

Each entry names the weights it was computed from. A model trained again after its weights were lost (a clone
keeps results, not models) can differ slightly from the lost one, so its entry is computed again rather than kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from routed.reproduce import write_json

PRESETS = ("standard_routing", "lpt")


def compute_hypotheses(out: Path, tokenizer, test_ids, log=print) -> None:
    """Add or refresh the entry of each seed-0 model present whose entry is missing or names other weights."""
    from routed.checkpoint import holds_checkpoint, load_checkpoint
    from routed.hypotheses import fit_to_notes, hypothesis_tables, wrong_dimension_confidences
    from routed.records import evaluate_with_tokenizer

    path = out / "hypotheses.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    for preset in PRESETS:
        run_dir = out / "runs" / f"{preset}-s0"
        if not holds_checkpoint(run_dir / "checkpoint") or not (run_dir / "result.json").exists():
            continue  # not trained yet, or its model is not here: an entry recorded earlier stands
        checkpoint = load_checkpoint(run_dir / "checkpoint")
        if data.get(preset, {}).get("weights") == checkpoint.fingerprint:
            continue
        log(f"hypotheses for {preset} seed 0 ...")
        model = checkpoint.model
        records = evaluate_with_tokenizer(model, tokenizer, test_ids)
        tables = hypothesis_tables(records, wrong_dimension_confidences(model, test_ids))
        data[preset] = {"weights": checkpoint.fingerprint, "tables": tables, "fits": fit_to_notes(tables, preset)}
        write_json(path, data)
