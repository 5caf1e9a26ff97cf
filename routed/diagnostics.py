"""Split-level diagnostics of a checkpoint: calibration, agreement counts, settling depth, exits by position.

Computed once from the lens on the validation and test splits (their first MAX_SPLIT_TOKENS tokens,
corpus markers left out) and kept as a small JSON file: in the checkpoint folder when exported (`diagnostics.json`, so the app shows them
offline), otherwise in the cache. Everything here is counts, so thresholds and guarantees are
recomputed from it without the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from routed.calibrate import AGREEMENT_GRID, agreement_counts
from routed.lens import LensRecords, lens
from routed.reliability import N_BINS, reliability_of_lens

DIAGNOSTICS_FILE = "diagnostics.json"
DIAGNOSTICS_VERSION = 1
MAX_FILE_BYTES = 8 * 2**20
POSITION_BUCKETS = 16
CONFIDENCE_BINS = 100  # exit rates by position are exact at thresholds that are multiples of 0.01
PROBE_TOKENS = 50_000
MAX_SPLIT_TOKENS = 100_000  # plenty for 15-bin reliability and tight binomial bounds; keeps an export quick
SPLITS = ("validation", "test")


def _probe_confidences(ckpt, corpus, split_tokens: dict[str, torch.Tensor]) -> dict[str, np.ndarray] | None:
    """The learned probe (fitted on the first PROBE_TOKENS train tokens) read on each split; None without layer 1."""
    from routed.records import probe_training_data
    from routed.routing import fit_confidence_probe
    from routed.tokenizer import encode

    if ckpt.model.config.n_layers < 2:
        return None
    train = encode(ckpt.tokenizer, corpus.split("train")[: 8 * PROBE_TOKENS])[: PROBE_TOKENS + 1]
    probe = fit_confidence_probe(*probe_training_data(ckpt.model, train))
    with torch.no_grad():
        return {s: probe(probe_training_data(ckpt.model, t)[0]).numpy() for s, t in split_tokens.items()}


def _position_histogram(conf: np.ndarray, window_position: np.ndarray, context: int) -> list[list[int]]:
    bucket = np.minimum(window_position * POSITION_BUCKETS // max(1, context), POSITION_BUCKETS - 1)
    level = np.minimum((conf.astype(np.float64) * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS)
    hist = np.zeros((POSITION_BUCKETS, CONFIDENCE_BINS + 1), np.int64)
    np.add.at(hist, (bucket, level), 1)
    return hist.tolist()


def _plain(value):
    """JSON-ready: arrays to lists, NaN to None, int keys to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def split_summary(records: LensRecords, probe: np.ndarray | None, context: int) -> dict:
    """The diagnostics of one split from its lens records (and the probe's confidences at the first exit)."""
    first = records.layers[0]
    measures = dict(records.confidence) | ({"probe": probe[None, :]} if probe is not None else {})
    agrees = records.agrees_last[0]
    grid = np.linspace(0.0, 1.0, AGREEMENT_GRID)
    agreement = {}
    for m, values in measures.items():
        shallow, disagree = agreement_counts(values[0], agrees, grid)
        agreement[m] = {"shallow": shallow, "disagree": disagree}
    settle = records.settling()
    return _plain({
        "tokens": len(records),
        "accuracy": {layer: float(records.correct[r].mean()) for r, layer in enumerate(records.layers)},
        "agreement_rate": {layer: float(records.agrees_last[r].mean()) for r, layer in enumerate(records.layers)},
        "reliability": reliability_of_lens(records, {"probe": probe} if probe is not None else None),
        "agreement": agreement,
        "settling": {layer: int((settle == layer).sum()) for layer in records.layers},
        "exit_by_position": {m: _position_histogram(v[0], records.window_position, context) for m, v in measures.items()},
        "first_exit": first,
    })


def compute_diagnostics(ckpt, corpus=None) -> dict:
    """Diagnostics of a checkpoint on its corpus' validation and test splits (up to MAX_SPLIT_TOKENS each, markers left out)."""
    from routed.data import load_corpus
    from routed.tokenizer import encode, marker_ids

    corpus = load_corpus(corpus or ckpt.corpus) if not hasattr(corpus, "split") else corpus
    cfg = ckpt.model.config
    tokens = {s: encode(ckpt.tokenizer, corpus.split(s))[: MAX_SPLIT_TOKENS + 1] for s in SPLITS}
    probe = _probe_confidences(ckpt, corpus, tokens)
    splits = {}
    for s in SPLITS:
        records = lens(ckpt.model, tokens[s], top_k=0, marker_ids=marker_ids(ckpt.tokenizer))
        keep = ~records.is_marker
        splits[s] = split_summary(records.subset(keep), None if probe is None else probe[s][keep], cfg.context_length)
    return {
        "version": DIAGNOSTICS_VERSION,
        "checkpoint_fingerprint": ckpt.fingerprint,
        "corpus": corpus.name,
        "corpus_fingerprint": corpus.fingerprint,
        "markers_excluded": True,
        "max_tokens": MAX_SPLIT_TOKENS,
        "layers": list(range(1, cfg.n_layers + 1)),
        "context_length": cfg.context_length,
        "grid": AGREEMENT_GRID,
        "n_bins": N_BINS,
        "position_buckets": POSITION_BUCKETS,
        "confidence_bins": CONFIDENCE_BINS,
        "probe_train_tokens": PROBE_TOKENS if probe is not None else None,
        "splits": splits,
    }


def write_diagnostics(folder: Path | str, diagnostics: dict) -> Path:
    """Write diagnostics.json into a folder, atomically."""
    path = Path(folder) / DIAGNOSTICS_FILE
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(diagnostics, separators=(",", ":")), encoding="utf-8")
    tmp.replace(path)
    return path


def read_diagnostics(folder: Path | str, fingerprint: str | None = None) -> dict | None:
    """The diagnostics.json of a folder; None when absent or made for other weights (fingerprint)."""
    path = Path(folder) / DIAGNOSTICS_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes is too large for a diagnostics file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable diagnostics file ({exc})") from exc
    if not isinstance(data, dict) or data.get("version") != DIAGNOSTICS_VERSION or "splits" not in data:
        return None  # another version: recomputed
    if fingerprint is not None and data.get("checkpoint_fingerprint") != fingerprint:
        return None
    return data


def diagnostics_for_checkpoint(ckpt, use_cache: bool = True, compute: bool = True) -> dict | None:
    """The checkpoint's diagnostics: its own diagnostics.json, else the cache, else computed (needs the
    corpus; with compute=False, None instead)."""
    from routed.data import cache_dir

    shipped = read_diagnostics(ckpt.path, ckpt.fingerprint) if ckpt.path is not None else None
    if shipped is not None:
        return shipped
    folder = cache_dir() / "diagnostics" / f"v{DIAGNOSTICS_VERSION}-{ckpt.fingerprint}"
    if use_cache:
        try:
            cached = read_diagnostics(folder, ckpt.fingerprint)
        except ValueError:
            cached = None
        if cached is not None:
            return cached
    if not compute:
        return None
    result = compute_diagnostics(ckpt)
    if use_cache:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_diagnostics(folder, result)
        except OSError:
            pass
    return result


def early_agreement(ckpt, split: str, corpus=None, use_cache: bool = True) -> dict[str, np.ndarray]:
    """Per token of a whole split: the first exit's confidence measures, whether its top-1 agrees with the
    last layer's, and whether the token is a corpus marker; cached on disk (what a guarantee is fitted on)."""
    from routed.data import cache_dir, load_corpus
    from routed.tokenizer import encode, marker_ids

    corpus = load_corpus(corpus or ckpt.corpus) if not hasattr(corpus, "split") else corpus
    path = cache_dir() / "agreement" / f"v{DIAGNOSTICS_VERSION}-{ckpt.fingerprint}-{corpus.fingerprint}-{split}.npz"
    if use_cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    rec = lens(ckpt.model, encode(ckpt.tokenizer, corpus.split(split)), [1], top_k=0, marker_ids=marker_ids(ckpt.tokenizer))
    arrays = {m: v[0] for m, v in rec.confidence.items()} | {"agrees": rec.agrees_last[0], "is_marker": rec.is_marker}
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            tmp.replace(path)
        except OSError:
            pass
    return arrays
