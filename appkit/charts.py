"""Charts: validation curves, the confidence histogram, PPL against compute, PPL against alpha."""

from __future__ import annotations

import numpy as np
import pandas as pd

from appkit.loaders import pareto_front, row_at
from appkit.slider_grid import GRID, grid_index
from appkit.style import DEEP, MODEL_COLOURS, SHALLOW


def history_chart(history: list[dict], n_layers: int):
    """Validation PPL per exit against the training step; the first and last exits in the path colours."""
    import altair as alt

    rows = [
        {"step": h["step"], "exit": f"exit {k}", "validation PPL": v} for h in history for k, v in h["val_ppl"].items()
    ]
    exits = [f"exit {k}" for k in range(1, n_layers + 1)]
    colours = [SHALLOW if k == 1 else DEEP if k == n_layers else "#999999" for k in range(1, n_layers + 1)]
    return (
        alt.Chart(pd.DataFrame(rows))
        .mark_line(point=True)
        .encode(
            x="step:Q",
            y=alt.Y("validation PPL:Q", scale=alt.Scale(zero=False, type="log")),
            color=alt.Color("exit:N", scale=alt.Scale(domain=exits, range=colours)),
            tooltip=["step", "exit", alt.Tooltip("validation PPL:Q", format=".2f")],
        )
        .properties(height=220)
    )


# --------------------------------------------------------------------------------------------
# PPL against compute

AXES = {
    "compute_pct": "Compute% (layers per token vs 3 layers)",
    "flops_pct": "FLOPs% (layers and output heads vs a 3-layer model)",
}


def _thin(curve: pd.DataFrame, max_points: int = 200) -> pd.DataFrame:
    step = -(-len(curve) // max_points)
    return curve if step <= 1 else pd.concat([curve.iloc[::step], curve.iloc[[-1]]]).drop_duplicates()


THRESHOLD_PARAM = "threshold"
POSITION = f"round({THRESHOLD_PARAM} * 100)"  # the slider's position, as appkit.slider_grid.grid_index
SLIDER_LABEL = "Threshold (confidence ≥ threshold → shallow) "


def threshold_param(threshold: float):
    """The chart parameter `threshold`, bound to a slider of the grid's positions, starting nearest `threshold`."""
    import altair as alt

    return alt.param(name=THRESHOLD_PARAM, value=float(GRID[grid_index(threshold)]),
                     bind=alt.binding_range(min=0, max=1, step=0.01, name=SLIDER_LABEL))


def on_slider_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """The sweep rows nearest to the thresholds 0, 0.01, ..., 1 (what the chart's own slider can reach)."""
    rows = [row_at(frame, float(t)) for t in GRID]
    return pd.DataFrame(rows).assign(slider=GRID)


def compute_chart(curves: dict[str, pd.DataFrame], x: str, threshold: float, points: dict[str, dict]):
    """Routed PPL against Compute%/FLOPs% per checkpoint: curve, point at the threshold, oracle bound,
    baseline points, and the Pareto front over everything drawn.

    The threshold is a chart parameter bound to a slider drawn under the chart (starting at `threshold`):
    moving it moves the points in the browser, with no rerun of the page.
    """
    import altair as alt

    models = list(curves)
    colour = alt.Color("model:N", scale=alt.Scale(domain=models, range=MODEL_COLOURS), title="checkpoint")
    lines = pd.concat([f.assign(model=m) for m, f in curves.items()], ignore_index=True)
    front = pareto_front(lines[[x, "routed_ppl"]], x, "routed_ppl")  # from every threshold, before thinning
    # Draw at most ~200 points per curve: enough for the eye, and under Altair's 5,000-row limit for many models.
    lines = pd.concat([_thin(f).assign(model=m) for m, f in curves.items()], ignore_index=True)
    marks = pd.concat([on_slider_grid(f).assign(model=m) for m, f in curves.items()], ignore_index=True)
    param = threshold_param(threshold)
    oracle = pd.DataFrame(
        [
            {"model": m, x: f[x].agg(e), "routed_ppl": f["oracle_ppl"].iloc[0]}
            for m, f in curves.items()
            for e in ("min", "max")
        ]
    )
    base = pd.DataFrame([{**p, "model": label} for label, p in points.items()], columns=[x, "routed_ppl", "model"])
    front = pareto_front(pd.concat([front, base[[x, "routed_ppl"]]]), x, "routed_ppl")
    values = pd.concat([lines["routed_ppl"], base["routed_ppl"], oracle["routed_ppl"]])
    pad = 0.03 * (values.max() - values.min() or values.max())
    domain = [float(values.min() - pad), float(values.max() + pad)]  # fit the data: differences are small
    y = alt.Y("routed_ppl:Q", title="routed PPL (test)", scale=alt.Scale(zero=False, nice=False, domain=domain))
    xe = alt.X(f"{x}:Q", title=AXES[x], scale=alt.Scale(zero=False))
    tip = [
        "model",
        alt.Tooltip("threshold:Q", format=".3f"),
        alt.Tooltip("routed_ppl:Q", format=".2f"),
        alt.Tooltip("shallow_pct:Q", format=".1f"),
        alt.Tooltip(f"{x}:Q", format=".1f"),
    ]
    layers = [
        alt.Chart(front).mark_line(color="#bbbbbb", strokeWidth=7, interpolate="step-after", opacity=0.7).encode(xe, y),
        alt.Chart(lines).mark_line().encode(xe, y, colour, order="threshold:Q", tooltip=tip),
        alt.Chart(oracle)
        .mark_line(strokeDash=[5, 4])
        .encode(xe, y, colour, tooltip=["model", alt.Tooltip("routed_ppl:Q", title="oracle PPL", format=".2f")]),
        alt.Chart(marks)
        .mark_point(filled=True, size=90, stroke="black")
        .encode(xe, y, colour, tooltip=tip)
        .transform_filter(f"abs(datum.slider - {THRESHOLD_PARAM}) < 0.005")
        .add_params(param),
    ]
    if len(base):
        layers += [
            alt.Chart(base)
            .mark_point(shape="diamond", size=120, filled=True, color="black")
            .encode(xe, y, tooltip=["model", "routed_ppl"]),
            alt.Chart(base).mark_text(dx=8, align="left", fontSize=11).encode(xe, y, text="model"),
        ]
    return alt.layer(*layers).properties(height=420)


def alpha_chart(rows: pd.DataFrame, x_title: str):
    """Routed PPL at one compute level against alpha, one point per checkpoint."""
    import altair as alt

    base = alt.Chart(rows).encode(
        alt.X("alpha:Q", scale=alt.Scale(domain=[0, 1])),
        alt.Y(
            "routed_ppl:Q", title=f"routed PPL at {x_title}", scale=alt.Scale(zero=False), axis=alt.Axis(format=".1f")
        ),
    )
    return (
        base.mark_point(color="#7570b3", filled=True, size=80)
        + base.mark_text(dx=7, align="left", fontSize=10).encode(text="model")
    ).properties(height=280)


def alpha_surface(curves: dict[str, pd.DataFrame], alphas: dict[str, float], x: str):
    """Routed PPL over checkpoints (rows, by alpha) and thresholds or matched Compute%/FLOPs% (columns)."""
    import plotly.graph_objects as go

    from routed.sweep import ppl_at

    names = sorted((n for n in curves if alphas.get(n) is not None), key=lambda n: (alphas[n], n))
    labels = [f"α={alphas[n]:.2f} · {n}" for n in names]
    if x == "threshold":
        columns = GRID
        z = [[row_at(curves[n], t)["routed_ppl"] for t in columns] for n in names]
        other = [[row_at(curves[n], t)["compute_pct"] for t in columns] for n in names]
        hover = "threshold %{x:.2f}<br>%{y}<br>routed PPL %{z:.3f}<br>Compute% %{customdata:.1f}<extra></extra>"
        title = "threshold"
    else:
        low = min(float(curves[n][x].min()) for n in names)
        high = max(float(curves[n][x].max()) for n in names)
        columns = np.arange(np.ceil(low), np.floor(high) + 1, 1.0)
        z = [[ppl_at(curves[n], level, x) for level in columns] for n in names]
        other = [[ppl_at(curves[n], level, x, "threshold") for level in columns] for n in names]
        hover = AXES[x].split(" (")[0] + " %{x:.0f}<br>%{y}<br>routed PPL %{z:.3f}<br>at threshold %{customdata:.3f}<extra></extra>"
        title = AXES[x]
    fig = go.Figure(go.Heatmap(z=z, x=columns, y=labels, customdata=other, hovertemplate=hover, colorscale="Viridis",
                               reversescale=True, colorbar=dict(title=dict(text="routed PPL", side="right"))))
    fig.update_layout(template="plotly_white", height=120 + 34 * len(names), xaxis_title=title, margin=dict(l=10, r=10, t=30, b=10))
    return fig
