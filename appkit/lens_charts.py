"""Plotly charts of the lens: the token x layer heatmap, settling depth, and exit rate by position in the window."""

from __future__ import annotations

import html

import numpy as np

from appkit.style import DEEP, SHALLOW

LENS_TOKENS = 80  # tokens drawn at once in the heatmap (a window of the text): cells wide enough to read
COLOUR_BY = {
    "true token's probability": "true_prob",
    "top-1 probability": "top1_prob",
    "agrees with the last layer": "agrees",
}


def _label(token: str) -> str:
    """A token for an axis: escaped, newlines visible as \\n, no quotes (∅ for the empty piece of a split character)."""
    return html.escape(repr(token)[1:-1] or "∅")


def _quoted(token: str) -> str:
    """A token for hover text: quoted, so its spaces show."""
    return html.escape(repr(token))


def _cell_values(rec, colour: str) -> np.ndarray:
    if colour == "agrees":
        return rec.agrees_last.astype(np.float32)
    return rec.top1_prob if colour == "top1_prob" else rec.true_prob


def lens_heatmap(seen, strings: dict, confidence: np.ndarray, exit_index: np.ndarray, start: int = 0,
                 count: int = LENS_TOKENS, colour: str = "true_prob", measure: str = "max_softmax"):
    """Token x layer heatmap of predicted tokens start..start+count: colour per cell, the first exit's
    confidence as a row underneath (hover: the thresholds at which the token exits), the settling depth
    as a marker per token; hover gives each exit's top-5, the true token's probability, rank and NLL."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rec = seen.records
    stop = min(len(rec), start + count)
    cols = np.arange(start, stop)
    x = [f"{i + 1}" for i in cols]  # position of the predicted token in the text
    ticks = [_label(seen.tokens[i + 1]) for i in cols]
    layers = list(rec.layers)
    settle = rec.settling()[cols]
    hover = []
    for r, layer in enumerate(layers):
        row = []
        for i in cols:
            tops = ""
            if rec.top_ids is not None:
                tops = "<br>".join(f"  {_quoted(strings.get(int(t), '?'))}  {p:.3f}"
                                   for t, p in zip(rec.top_ids[r, i], rec.top_probs[r, i]))
            row.append(
                f"<b>{_quoted(seen.tokens[i])} → {_quoted(seen.tokens[i + 1])}</b> (token {i + 1})<br>"
                f"layer {layer} top-5:<br>{tops}<br>true token: p {rec.true_prob[r, i]:.3f}, rank {rec.true_rank[r, i]}, "
                f"NLL {rec.true_nll[r, i]:.2f}<br>{'agrees' if rec.agrees_last[r, i] else 'differs'} with layer {layers[-1]}; "
                f"settles at layer {settle[i - start]}"
            )
        hover.append(row)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.82, 0.18], vertical_spacing=0.03)
    values = _cell_values(rec, colour)[:, cols]
    title = next(k for k, v in COLOUR_BY.items() if v == colour)
    fig.add_trace(go.Heatmap(z=values, x=x, y=[f"L{layer}" for layer in layers], zmin=0, zmax=1, colorscale="Blues",
                             customdata=hover, hovertemplate="%{customdata}<extra></extra>", xgap=1, ygap=1,
                             colorbar=dict(title=dict(text=title, side="right"), len=0.8, y=0.6)), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[f"L{d}" for d in settle], mode="markers", name="settling depth",
                             marker=dict(symbol="diamond", size=9, color="#e7298a", line=dict(width=1, color="white")),
                             hoverinfo="skip"), row=1, col=1)
    routes = [[f"shallow at thresholds ≤ {k / 100:.2f}" if k >= 0 else "deep at every threshold" for k in exit_index[cols]]]
    fig.add_trace(go.Heatmap(z=confidence[cols].astype(np.float32)[None, :], x=x, y=["confidence"], zmin=0, zmax=1,
                             showscale=False, xgap=1, colorscale=[[0, DEEP], [1, SHALLOW]], customdata=routes,
                             hovertemplate=f"token %{{x}}: {measure} %{{z:.3f}}, %{{customdata}}<extra></extra>"), row=2, col=1)
    angle = 0 if max(len(t) for t in ticks) <= 2 else -60
    fig.update_xaxes(tickvals=x, ticktext=ticks, tickangle=angle, tickfont=dict(family="monospace", size=12), row=2, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_layout(template="plotly_white", height=260 + 28 * len(layers), margin=dict(l=10, r=10, t=30, b=10), showlegend=True,
                      legend=dict(orientation="h", y=1.08, x=0), hoverlabel=dict(font=dict(family="monospace", size=11)))
    return fig


def settling_chart(sources: dict[str, dict[int, int]]):
    """Share of tokens per settling depth, one bar group per source ({"this text": {layer: count}, ...})."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, counts in sources.items():
        layers = sorted(int(k) for k in counts)
        total = max(1, sum(counts.values()))
        share = [100.0 * counts[k if k in counts else str(k)] / total for k in layers]
        fig.add_trace(go.Bar(x=[f"L{k}" for k in layers], y=share, name=label,
                             hovertemplate="settles at %{x}: %{y:.1f}% of tokens<extra>" + html.escape(label) + "</extra>"))
    fig.update_layout(template="plotly_white", barmode="group", height=300, yaxis_title="% of tokens", xaxis_title="settling depth",
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=1.12, x=0))
    return fig


def split_exit_rate(split_hist: list[list[int]], threshold: float) -> np.ndarray:
    """% of a split's tokens that exit at `threshold`, per position bucket, from its stored histogram of
    confidences per bucket (0.01-wide bins; see routed.diagnostics)."""
    hist = np.asarray(split_hist, dtype=np.float64)
    level = min(hist.shape[1] - 1, int(np.ceil(threshold * (hist.shape[1] - 1) - 1e-9)))
    return 100.0 * hist[:, level:].sum(1) / np.maximum(1, hist.sum(1))


def text_exit_rate(position: np.ndarray, shallow: np.ndarray, context: int, buckets: int = 16):
    """(% of a text's tokens that exit, tokens) per position bucket; NaN where a bucket is empty."""
    bucket = np.minimum(position * buckets // max(1, context), buckets - 1)
    n = np.bincount(bucket, minlength=buckets)
    rate = np.where(n > 0, 100.0 * np.bincount(bucket, weights=shallow.astype(float), minlength=buckets) / np.maximum(n, 1), np.nan)
    return rate, n
