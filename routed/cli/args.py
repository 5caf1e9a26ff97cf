"""Argument types and option groups shared by the commands."""

from __future__ import annotations

import argparse


def layer_weights(text: str) -> dict[int, float]:
    """Parse "1:0.7,3:0.3" into {1: 0.7, 3: 0.3}."""
    weights = {}
    for part in text.split(","):
        layer, sep, weight = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"layer weights are LAYER:WEIGHT pairs, got {part!r}")
        try:
            layer, weight = int(layer), float(weight)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad layer weight {part!r}") from exc
        if layer in weights:
            raise argparse.ArgumentTypeError(f"layer {layer} is given twice in {text!r}")
        weights[layer] = weight
    return weights


def alpha_schedule(text: str) -> tuple[float, float]:
    """Parse "0.9:0.5" (alpha at the first and at the last step) into (0.9, 0.5)."""
    start, sep, end = text.partition(":")
    try:
        values = (float(start), float(end))
    except ValueError:
        values = None
    if not sep or values is None or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"alpha schedule is START:END with alphas in [0, 1], e.g. 0.9:0.5; got {text!r}")
    return values


def threshold(text: str) -> float | str:
    if text.lower() in ("none", "off", "default"):
        return text.lower().replace("off", "none")
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"threshold must be a number in [0, 1] or 'none', got {text!r}") from exc


def thresholds(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"thresholds are comma-separated numbers, got {text!r}") from exc
    if not values:  # an empty table would have no reference row to print
        raise argparse.ArgumentTypeError(f"thresholds: give at least one number in [0, 1], got {text!r}")
    return values


def exits(text: str) -> list[int]:
    try:
        return sorted({int(e) for e in text.split(",") if e.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"exits are comma-separated layer numbers, got {text!r}") from exc


def add_checkpoint_args(p, with_threshold: bool = True, markers_default: bool | None = True,
                        with_exits: bool = True) -> None:
    """--checkpoint, --corpus, --measure, --exclude-markers (unless markers_default is None), --threshold, --exits."""
    from routed.routing import CONFIDENCE_MEASURES

    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder, exit-adapters folder, or hf:NAME_OR_FOLDER (a pretrained causal LM)")
    if with_exits:
        p.add_argument("--exits", type=exits, help='pretrained models: the layers to read out, e.g. "6,12,18" '
                       "(the last is added; default: the adapters' exits, else a spread of the layers)")
    p.add_argument("--corpus", help="evaluate on another corpus than the checkpoint's")
    p.add_argument("--measure", default="max_softmax", choices=list(CONFIDENCE_MEASURES))
    if markers_default is not None:
        p.add_argument("--exclude-markers", action=argparse.BooleanOptionalAction, default=markers_default,
                       help="leave the corpus' marker tokens (e.g. <unk>) out of every number"
                            f" (default: {'on' if markers_default else 'off'})")
    if with_threshold:
        p.add_argument("--threshold", type=threshold, default="default", help="default: the checkpoint's own")
