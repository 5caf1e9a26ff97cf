"""Plotly charts of calibration: reliability diagrams per exit, and the guaranteed threshold's evidence."""

from __future__ import annotations

import numpy as np
import pandas as pd

from appkit.style import MODEL_COLOURS

MEASURE_COLOURS = dict(zip(("max_softmax", "margin", "neg_entropy", "probe"), MODEL_COLOURS))


def ece_table(diagnostics: dict) -> pd.DataFrame:
    """ECE of every (split, exit) row and confidence-measure column, with each exit's accuracy."""
    rows = []
    for split, data in diagnostics["splits"].items():
        for layer, table in data["reliability"].items():
            rows.append({"split": split, "exit": f"L{layer}", "accuracy": data["accuracy"][layer],
                         **{f"ECE {m}": v["ece"] for m, v in table.items()}})
    return pd.DataFrame(rows)


def reliability_figure(split: dict, measures: list[str]):
    """One reliability diagram per exit: accuracy against mean confidence per bin, a line per measure."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    layers = list(split["reliability"])
    fig = make_subplots(rows=1, cols=len(layers), shared_yaxes=True, subplot_titles=[f"exit L{k}" for k in layers],
                        horizontal_spacing=0.04)
    for c, layer in enumerate(layers, start=1):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999", dash="dash"),
                                 showlegend=False, hoverinfo="skip"), row=1, col=c)
        for m in measures:
            bins = split["reliability"][layer].get(m)
            if bins is None:
                continue
            conf = np.array([np.nan if v is None else v for v in bins["confidence"]], dtype=float)
            acc = np.array([np.nan if v is None else v for v in bins["accuracy"]], dtype=float)
            count = np.asarray(bins["count"], dtype=float)
            keep = count > 0
            size = 5 + 20 * np.sqrt(count[keep] / max(1.0, count.max()))
            fig.add_trace(go.Scatter(
                x=conf[keep], y=acc[keep], mode="lines+markers", name=f"{m} (ECE at L{layer} {bins['ece']:.3f})",
                legendgroup=m, showlegend=c == 1, line=dict(color=MEASURE_COLOURS.get(m)), marker=dict(size=size),
                customdata=np.stack([count[keep]], axis=-1),
                hovertemplate=f"{m}, exit L{layer}<br>mean confidence %{{x:.3f}}<br>accuracy %{{y:.3f}}<br>"
                              f"%{{customdata[0]:,.0f}} tokens<br>ECE {bins['ece']:.4f}<extra></extra>",
            ), row=1, col=c)
        fig.update_xaxes(range=[0, 1], title_text="confidence", row=1, col=c)
    fig.update_yaxes(range=[0, 1], title_text="accuracy (top-1 = next token)", row=1, col=1)
    fig.update_layout(template="plotly_white", height=360, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25, x=0))
    return fig


def guarantee_figure(validation: dict, test: dict, grid: np.ndarray, epsilon: float, delta: float, chosen: float | None):
    """Disagreement with the last layer among shallow tokens against the threshold: validation (with its
    Clopper–Pearson upper bound) and test, the allowed epsilon and the chosen threshold."""
    import plotly.graph_objects as go

    from routed.binomial import clopper_pearson_upper

    every = np.arange(0, len(grid), max(1, (len(grid) - 1) // 100))  # the bound on a 0.01 grid is plenty to draw
    t = np.asarray(grid)[every]
    fig = go.Figure()
    for label, counts, dash in (("validation", validation, "solid"), ("test", test, "dot")):
        n = np.asarray(counts["shallow"], dtype=float)[every]
        k = np.asarray(counts["disagree"], dtype=float)[every]
        rate = np.where(n > 0, 100 * k / np.maximum(n, 1), np.nan)
        fig.add_trace(go.Scatter(x=t, y=rate, mode="lines", name=f"{label}: disagreement", line=dict(dash=dash),
                                 customdata=np.stack([n, k], -1),
                                 hovertemplate="threshold %{x:.2f}: %{customdata[1]:,.0f} of %{customdata[0]:,.0f} "
                                               "shallow tokens disagree (%{y:.2f}%)<extra>" + label + "</extra>"))
        if label == "validation":
            bound = 100 * clopper_pearson_upper(k, n, delta)
            fig.add_trace(go.Scatter(x=t, y=np.where(n > 0, bound, np.nan), mode="lines", name=f"validation: upper {1 - delta:.0%} bound",
                                     line=dict(color="#7570b3", width=1), hovertemplate="threshold %{x:.2f}: bound %{y:.2f}%<extra></extra>"))
    fig.add_hline(y=100 * epsilon, line=dict(color="black", dash="dash"), annotation_text=f"allowed {100 * epsilon:.1f}%")
    if chosen is not None:
        fig.add_vline(x=chosen, line=dict(color="#e7298a", width=2), annotation_text=f"chosen {chosen:.3f}")
    fig.update_layout(template="plotly_white", height=340, xaxis_title="threshold", yaxis_title="shallow tokens that disagree (%)",
                      yaxis_rangemode="tozero", margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.25, x=0))
    return fig
