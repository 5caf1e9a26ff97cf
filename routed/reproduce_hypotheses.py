"""hypotheses.json: the notes' threshold tables under candidate mistakes (routed.hypotheses), computed on a
reproduction's seed-0 standard_routing and lpt models.

Each entry names the weights it was computed from. A model trained again after its weights were lost (a clone
keeps results, not models) can differ slightly from the lost one, so its entry is computed again rather than kept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from routed.files import MB
from routed.reproduce import write_json

PRESETS = ("standard_routing", "lpt")


def weights_digest(checkpoint_dir: Path) -> str | None:
    """A short hash of a checkpoint's weights file; None when the folder holds none."""
    path = checkpoint_dir / "model.safetensors"
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:  # in chunks: the file's size is not checked here
        for chunk in iter(lambda: f.read(MB), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def compute_hypotheses(out: Path, tokenizer, test_ids, log=print) -> None:
    """Add or refresh the entry of each seed-0 model present whose entry is missing or names other weights."""
    from routed.checkpoint import load_checkpoint
    from routed.hypotheses import fit_to_notes, hypothesis_tables, wrong_dimension_confidences
    from routed.records import evaluate_with_tokenizer

    path = out / "hypotheses.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    for preset in PRESETS:
        run_dir = out / "runs" / f"{preset}-s0"
        digest = weights_digest(run_dir / "checkpoint")
        if digest is None or not (run_dir / "result.json").exists():
            continue  # not trained yet, or its model is not here: an entry recorded earlier stands
        if data.get(preset, {}).get("weights") == digest:
            continue
        log(f"hypotheses for {preset} seed 0 ...")
        model = load_checkpoint(run_dir / "checkpoint").model
        records = evaluate_with_tokenizer(model, tokenizer, test_ids)
        tables = hypothesis_tables(records, wrong_dimension_confidences(model, test_ids))
        data[preset] = {"weights": digest, "tables": tables, "fits": fit_to_notes(tables, preset)}
        write_json(path, data)
