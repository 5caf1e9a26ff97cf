"""The reproduction report's figures: PPL against Compute% and FLOPs%, and every run's validation curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routed.config import PRESETS
from routed.sweep import ppl_at


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cost_curves(out: Path, results: dict, points: dict, corpus: str) -> list[str]:
    """ppl_vs_compute.png and ppl_vs_flops.png (mean over seeds; markers left out); the files written."""
    plt = _pyplot()
    written = []
    for x, label, name in (("compute_pct", "Compute% (layers on the path vs a 3-layer model)", "ppl_vs_compute"),
                           ("flops_pct", "FLOPs% (recompute execution vs the plain 3-layer model)", "ppl_vs_flops")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run, rs in sorted(results.items()):
            if PRESETS.get(run) is not None and PRESETS[run].routing_threshold is None and run != "lpt":
                continue
            lo = max(min(r["curve"][x].min() for r in rs), 0.0)
            hi = min(r["curve"][x].max() for r in rs)
            grid = np.linspace(lo, hi, 80)
            y = np.mean([[ppl_at(r["curve"], c, x) for c in grid] for r in rs], axis=0)
            ax.plot(grid, y, label=run, linewidth=1.5 if run in PRESETS else 0.8)
        for (run, xy), marker in zip(points.items(), ("s", "D")):
            ax.scatter([xy[x]], [xy["ppl"]], marker=marker, color="black", zorder=3, label=run)
        ax.set_xlabel(label)
        ax.set_ylabel("test PPL per token (routed; markers left out)")
        ax.set_title(f"PPL against {label.split(' ')[0]} — {corpus}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        written.append(f"{name}.png")
    return written


def validation_curves(out: Path, histories: dict) -> str | None:
    """validation_curves.png: validation PPL of each run's last exit against training tokens (log scale)."""
    if not histories:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for (run, seed), history in sorted(histories.items()):
        last = str(max(int(k) for k in history[0]["val_ppl"]))
        tokens = [h["tokens"] / 1e6 for h in history]
        ppl = [h["val_ppl"][last] for h in history]
        line = ax.plot(tokens, ppl, color=colours.get(run), linewidth=2.0 if run == "standard_3l" else 0.8,
                       label=run if run not in colours else None, alpha=1.0 if seed == 0 else 0.5)
        colours.setdefault(run, line[0].get_color())
    ax.set_yscale("log")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("validation PPL, last exit")
    ax.set_title("Validation curves (every seed; standard_3l thick)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "validation_curves.png", dpi=110)
    plt.close(fig)
    return "validation_curves.png"
