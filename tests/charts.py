"""Reading the Vega-Lite charts a page drew under AppTest: their spec, their starting threshold, their data."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa


def vega_charts(at) -> list:
    return list(at.get("vega_lite_chart"))


def spec(chart) -> dict:
    return json.loads(chart.proto.spec)


def start_threshold(chart) -> float:
    """The value the chart's bound threshold slider starts at."""
    return next(p["value"] for p in spec(chart).get("params", []) if p["name"] == "threshold")


def frames(chart) -> list[pd.DataFrame]:
    """Every dataset the chart was sent with (Arrow IPC streams)."""
    return [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets]


def frame_with(chart, column: str) -> pd.DataFrame:
    return next(f for f in frames(chart) if column in f.columns)


def routing_tokens(at) -> pd.DataFrame:
    """The tokens the Token routing chart draws, one row each (a token drawn on two lines is two pieces)."""
    chart = next(c for c in vega_charts(at) if any("piece" in f.columns for f in frames(c)))
    return frame_with(chart, "piece").drop_duplicates("i")


def routing_paths(at) -> tuple[str, set[str]]:
    """The Token routing chart's text (its drawn tokens, joined) and the paths its tokens take at the
    slider's starting position, as the chart's rule computes them (exit_index >= position)."""
    chart = next(c for c in vega_charts(at) if any("piece" in f.columns for f in frames(c)))
    tokens = routing_tokens(at)
    position = round(start_threshold(chart) * 100)
    predicted = tokens[tokens["exit_index"] != -2]
    paths = {"shallow" if k >= position else "deep" for k in predicted["exit_index"]}
    return "".join(tokens["shown"]), paths


def headline_table(at, threshold: float | None = None) -> pd.DataFrame:
    """Home's headline table as the browser shows it with its slider at `threshold` (default: where the
    slider starts), columns named as on the page."""
    from appkit.headline import COLUMNS, rows_at

    chart = next(c for c in vega_charts(at) if any("field" in f.columns and "label" in f.columns for f in frames(c)))
    long = frame_with(chart, "field")
    wide = long.pivot(index=["label", "position", "order"], columns="field", values="value")
    wide = wide.reset_index()
    shown = rows_at(wide, start_threshold(chart) if threshold is None else threshold)
    return shown.rename(columns={field: title for title, field, _ in COLUMNS})
