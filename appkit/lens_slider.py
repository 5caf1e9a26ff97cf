"""The Lens page's threshold views as one chart whose slider works in the browser: the path of each shown
token, how many exit before settling, the exit rate by position in the context window, what exits.

Every number is tabulated at each slider position here (appkit.slider_grid's grid); the browser only
picks the rows of the slider's position.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from appkit.charts import POSITION, threshold_param
from appkit.lens_charts import split_exit_rate, text_exit_rate
from appkit.routing_chart import exits_chart
from appkit.slider_grid import GRID, SliderTables
from appkit.style import DEEP, SHALLOW

BUCKETS = 16


def position_table(context: int, window_position: np.ndarray, index: np.ndarray,
                   split_hist: list[list[int]] | None) -> pd.DataFrame:
    """Exit rate per position bucket at every slider position: of this text, and of the test split if stored."""
    width = max(1, context) / BUCKETS
    centres = (np.arange(BUCKETS) + 0.5) * width
    rows = []
    for position, t in enumerate(GRID):
        rate, n = text_exit_rate(window_position, index >= position, context, BUCKETS)
        rows += [{"position": position, "source": "this text", "centre": c, "rate": r, "tokens": int(k)}
                 for c, r, k in zip(centres, rate, n) if k > 0]
        if split_hist is not None:
            rows += [{"position": position, "source": "test split", "centre": c, "rate": r, "tokens": None}
                     for c, r in zip(centres, split_exit_rate(split_hist, float(t)))]
    return pd.DataFrame(rows)


def summary_table(index: np.ndarray, settles_first: np.ndarray, first_layer: int) -> pd.DataFrame:
    """Per slider position: the share of tokens that take the shallow path and of those exiting before
    they settle (their shallow answer differs from the full model's)."""
    rows = []
    for position in range(len(GRID)):
        shallow = index >= position
        rows.append({"position": position, "text": (
            f"{settles_first.mean():.0%} of this text's tokens settle at layer {first_layer}; at threshold "
            f"{GRID[position]:.2f}, {shallow.mean():.0%} take the shallow path and {(shallow & ~settles_first).mean():.0%} "
            "exit before settling (their shallow answer differs from the full model's).")})
    return pd.DataFrame(rows)


def lens_slider_chart(tokens: list[str], index: np.ndarray, start: int, summary: pd.DataFrame,
                      positions: pd.DataFrame, exits: SliderTables, threshold: float, width: int = 860):
    """The shown tokens' path strip, the summary line, exit rate by position and what exits, all at the
    slider's threshold (the slider under the chart starts at `threshold`)."""
    import altair as alt

    param = threshold_param(threshold)
    strip = pd.DataFrame({"token": [str(start + k + 1) for k in range(len(tokens))], "label": tokens,
                          "exit_index": index, "order": range(len(tokens))})
    line = (alt.Chart(summary).transform_filter(f"datum.position == {POSITION}")
            .mark_text(align="left", baseline="top", fontSize=13).encode(x=alt.value(0), y=alt.value(4), text="text:N")
            .properties(width=width, height=22))
    route = (
        alt.Chart(strip).transform_calculate(path=f"datum.exit_index >= {POSITION} ? 'shallow' : 'deep'")
        .mark_rect(stroke="white").encode(
            x=alt.X("token:O", sort=alt.SortField("order"), title=None,
                    axis=alt.Axis(labelExpr="datum.label", labels=False, ticks=False)),
            color=alt.Color("path:N", scale=alt.Scale(domain=["shallow", "deep"], range=[SHALLOW, DEEP]),
                            legend=alt.Legend(orient="top", title="path at the slider's threshold")),
            tooltip=[alt.Tooltip("token:N", title="token"), alt.Tooltip("label:N", title="text"), "path:N"])
        .properties(width=width, height=26)
    )
    colour = alt.Color("source:N", scale=alt.Scale(domain=["test split", "this text"], range=["#1f77b4", "#e7298a"]),
                       legend=alt.Legend(orient="top", title=None))
    base = alt.Chart(positions).transform_filter(f"datum.position == {POSITION}").encode(
        x=alt.X("centre:Q", title="position in the context window (tokens seen)"),
        y=alt.Y("rate:Q", title="exit rate (%)", scale=alt.Scale(domain=[0, 100])), color=colour,
        tooltip=["source:N", alt.Tooltip("centre:Q", title="position", format=".0f"),
                 alt.Tooltip("rate:Q", title="exit rate %", format=".1f"), alt.Tooltip("tokens:Q")])
    by_position = (base.transform_filter("datum.source == 'test split'").mark_line(point=True)
                   + base.transform_filter("datum.source == 'this text'").mark_point(shape="diamond", size=80, filled=True)
                   ).properties(width=width - 480, height=240, title="Exit rate by position in the context window")
    lower = alt.hconcat(by_position, exits_chart(exits), spacing=40)
    return (alt.vconcat(route, line, lower, spacing=14).add_params(param)
            .resolve_scale(color="independent").configure_view(stroke=None))
