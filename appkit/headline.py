"""Home's headline table as a chart whose threshold slider works in the browser.

The routed model's row is tabulated at every slider position (from its shipped sweep); the baselines'
rows do not depend on the threshold. Moving the slider picks a row in the browser, with no rerun.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from appkit.charts import POSITION, on_slider_grid, threshold_param
from appkit.slider_grid import GRID, grid_index
from routed.sweep import DENSE_EXECUTION

COLUMNS = [("Routed PPL (per token)", "routed_ppl", ".2f"), ("bits/byte", "routed_bpb", ".4f"),
           ("Shallow%", "shallow_pct", ".2f"), ("Compute%", "compute_pct", ".2f"),
           (f"FLOPs% ({DENSE_EXECUTION})", "flops_pct", ".2f"), ("vs Standard 3L", "vs_3l", "+.2f")]


def headline_frame(name: str, curve: pd.DataFrame, baselines: dict[str, dict]) -> pd.DataFrame:
    """One row per slider position for `name`, then one per baseline (position -1: shown at every position),
    with the PPL improvement over Standard 3L in % where that baseline exists."""
    grid = on_slider_grid(curve).assign(label=lambda f: [f"{name} (threshold {t:.2f})" for t in f["slider"]],
                                        position=np.arange(len(GRID)), order=0)
    fixed = pd.DataFrame([{**row, "label": label, "position": -1, "order": k + 1}
                          for k, (label, row) in enumerate(baselines.items())])
    frame = pd.concat([grid, fixed], ignore_index=True)
    for _, field, _ in COLUMNS:
        if field not in frame:
            frame[field] = np.nan  # e.g. bits per byte in a sweep written before they were kept
    three = baselines.get("Standard 3L")
    frame["vs_3l"] = 100 * (three["routed_ppl"] - frame["routed_ppl"]) / three["routed_ppl"] if three else np.nan
    return frame[["label", "position", "order", *(field for _, field, _ in COLUMNS)]]


def rows_at(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The rows the chart shows at `threshold` (as the browser picks them), indexed by label."""
    shown = frame[(frame["position"] == grid_index(threshold)) | (frame["position"] == -1)]
    return shown.sort_values("order").set_index("label")


def headline_chart(frame: pd.DataFrame, threshold: float):
    """The table, drawn as text: the routed row follows the slider under it (starting at `threshold`)."""
    import altair as alt

    label_px, column_px, row_px = 280, 108, 24
    long = frame.melt(id_vars=["label", "position", "order"], var_name="field", value_name="value")
    formats = {field: fmt for _, field, fmt in COLUMNS}
    long["text"] = [("–" if pd.isna(v) else format(v, formats[f])) for f, v in zip(long["field"], long["value"])]
    if "vs_3l" in formats:  # the row of Standard 3L against itself says nothing
        long.loc[(long["field"] == "vs_3l") & (long["label"] == "Standard 3L"), "text"] = "–"
    long["x"] = [label_px + column_px * [f for _, f, _ in COLUMNS].index(f) for f in long["field"]]
    header = pd.DataFrame([{"text": title.replace(" (", "\n("), "x": label_px + column_px * k}
                           for k, (title, _, _) in enumerate(COLUMNS)])
    param = threshold_param(threshold)
    x = alt.X("x:Q", scale=None, axis=None)
    rows = alt.Chart(long).transform_filter(f"datum.position == {POSITION} || datum.position == -1")
    labels = rows.transform_filter("datum.field == 'routed_ppl'")
    layers = [
        alt.Chart(header).transform_calculate(y="0")
        .mark_text(align="left", baseline="top", fontSize=12, fontWeight="bold", color="#555555", lineBreak="\n")
        .encode(x, alt.Y("y:Q", scale=None, axis=None), text="text:N"),
        labels.transform_calculate(x="0", y=f"{row_px} + 8 + datum.order * {row_px}")
        .mark_text(align="left", baseline="top", fontSize=13).encode(x, alt.Y("y:Q", scale=None, axis=None), text="label:N"),
        rows.transform_calculate(y=f"{row_px} + 8 + datum.order * {row_px}")
        .mark_text(align="left", baseline="top", fontSize=13).encode(x, alt.Y("y:Q", scale=None, axis=None), text="text:N"),
    ]
    height = row_px * (int(frame["order"].max()) + 2) + 8
    return alt.layer(*layers).add_params(param).properties(width=label_px + column_px * len(COLUMNS), height=height) \
        .configure_view(stroke=None)
