"""Evaluate one finished reproduction run on the test split: what result.json, sweep.csv and blocks.npz hold.

Numbers are computed twice: with the corpus' marker tokens left out (the default everywhere, sweep.csv)
and over every token (sweep_all.csv, the `_all` fields). blocks.npz keeps, per context window of the
marker-free tokens, summed NLLs per exit and of routing at the notes' thresholds: the paired block
bootstrap of the report runs on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from routed.convergence import convergence
from routed.notes import NOTES_THRESHOLDS

EVAL_VERSION = 2  # bump when what result.json or the files beside it hold changes
GRID = np.round(np.linspace(0, 1, 1001), 3)


def window_sums(records, values: np.ndarray) -> np.ndarray:
    """Sums of per-token `values` over each context window (rows of records, by position)."""
    window = (records.position - 1) // records.model_config.context_length
    return np.bincount(window, weights=values.astype(np.float64), minlength=int(window.max()) + 1 if len(window) else 0)


def block_arrays(records) -> dict[str, np.ndarray]:
    """Per-window token and byte counts, NLL sums per exit and routed NLL sums at the notes' thresholds."""
    arrays = {"tokens": window_sums(records, np.ones(len(records))),
              "bytes": window_sums(records, records.n_bytes if records.n_bytes is not None else np.zeros(len(records)))}
    for layer, nll in records.nll.items():
        arrays[f"nll_{layer}"] = window_sums(records, nll)
    conf = records.confidence["max_softmax"]
    early, final = records.nll[records.early_exit], records.nll[records.final_exit]
    for t in NOTES_THRESHOLDS:
        arrays[f"routed_{t:g}"] = window_sums(records, np.where(conf >= t, early, final))  # the routing rule
    keep = arrays["tokens"] > 0
    return {k: v[keep].astype(np.float32) for k, v in arrays.items()}


def _at(rows: dict) -> dict:
    return {f"{t:g}": {k: float(v[i]) for k, v in rows.items()} for i, t in enumerate(NOTES_THRESHOLDS)}


def evaluate_run(run, seed: int, run_dir: Path, tokenizer, test_ids) -> dict:
    """Evaluate the saved (fp16-rounded) weights of a run: the numbers describe the checkpoint users get."""
    from routed.breakdown import what_exits
    from routed.checkpoint import load_checkpoint, write_sweep
    from routed.records import evaluate_with_tokenizer
    from routed.sweep import summary, sweep
    from routed.tokenizer import token_strings

    ckpt = load_checkpoint(run_dir / "checkpoint")
    train_info = json.loads((run_dir / "train.json").read_text())
    every = evaluate_with_tokenizer(ckpt.model, tokenizer, test_ids)
    clean = every.without_markers()
    write_sweep(run_dir / "sweep.csv", sweep(clean, GRID))
    write_sweep(run_dir / "sweep_all.csv", sweep(every, GRID))
    tmp = run_dir / ".blocks.npz.part"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **block_arrays(clean))
    tmp.replace(run_dir / "blocks.npz")
    base, base_all = summary(clean, None), summary(every, None)
    ids = sorted({int(i) for i in every.token_id})
    strings = dict(zip(ids, token_strings(tokenizer, ids)))
    exits = {f"{t:g}": what_exits(every, strings, t, top=20) for t in (0.5, 0.95)} if run.routing_threshold is not None else {}
    reference = sweep(clean, [1.0])
    return {
        "eval_version": EVAL_VERSION,
        "run": run.name, "seed": seed, "layer_weights": {str(k): v for k, v in run.layer_weights.items()},
        "final_layer_weights": {str(k): v for k, v in run.final_layer_weights.items()} if run.final_layer_weights else None,
        "routing_threshold": run.routing_threshold, "n_layers": run.n_layers,
        "steps": train_info["steps"], "best_step": train_info["best_step"], "stopped_early": train_info["stopped_early"],
        "train_s": train_info["train_s"],
        "convergence": convergence(train_info["history"]),
        "test_tokens": len(clean), "test_tokens_all": len(every), "test_bytes": clean.total_bytes(),
        "ppl_by_exit": {str(k): v for k, v in base["ppl_by_exit"].items()},
        "bpb_by_exit": {str(k): v for k, v in base["bpb_by_exit"].items()},
        "ppl_by_exit_all": {str(k): v for k, v in base_all["ppl_by_exit"].items()},
        "bpb_by_exit_all": {str(k): v for k, v in base_all["bpb_by_exit"].items()},
        "at_notes_thresholds": _at(sweep(clean, NOTES_THRESHOLDS)),
        "at_notes_thresholds_all": _at(sweep(every, NOTES_THRESHOLDS)),
        "reference": {k: float(reference[k][0]) for k in ("shallow_ppl", "deep_ppl", "oracle_ppl",
                                                          "shallow_bpb", "deep_bpb", "oracle_bpb")},
        "what_exits": exits,  # markers included: the tokens behind Shallow%, artefacts and all
    }
