"""The Token routing view as one chart whose threshold slider works in the browser.

The numbers, the coloured text, what exits and the confidence histogram all read the chart parameter
`threshold` (bound to a slider under the chart): moving it changes the page without a rerun, as the
tables behind it (appkit.slider_grid) hold every slider position.
"""

from __future__ import annotations

import pandas as pd

from appkit.charts import POSITION, threshold_param
from appkit.slider_grid import BIN, SliderTables
from appkit.style import DEEP, SHALLOW

CHAR_PX, LINE_PX, FONT = 7.9, 22, "ui-monospace, Menlo, Consolas, monospace"


def layout(tokens: pd.DataFrame, line_chars: int) -> pd.DataFrame:
    """Place each token's drawn text on lines of `line_chars` characters: one row per piece (a token
    holding a line break is two pieces), with its column, line and width in characters."""
    pieces, line, col = [], 0, 0
    for row in tokens.itertuples(index=False):
        parts = row.shown.split("\n")
        for j, part in enumerate(parts):
            if j > 0:
                line, col = line + 1, 0
            if not part and len(parts) > 1:
                continue  # the empty rest of a piece ending in a line break (a token of no text stays, width 0)
            width = min(len(part), line_chars)
            if col > 0 and col + width > line_chars:
                line, col = line + 1, 0
            text = part if len(part) <= line_chars else part[: line_chars - 1] + "…"
            pieces.append({**row._asdict(), "piece": text, "col": col, "line": line, "width": width})
            col += width
    return pd.DataFrame(pieces)


def _path(index_field: str = "exit_index") -> str:
    return f"datum.{index_field} == -2 ? 'context' : (datum.{index_field} >= {POSITION} ? 'shallow' : 'deep')"


def text_chart(tables: SliderTables, line_chars: int):
    """The text, each token coloured by its path at the slider's threshold (shade: confidence)."""
    import altair as alt

    placed = layout(tables.tokens, line_chars)
    placed = placed.assign(x=placed["col"] * CHAR_PX, x2=(placed["col"] + placed["width"]) * CHAR_PX,
                           y=placed["line"] * LINE_PX, y2=placed["line"] * LINE_PX + LINE_PX - 3,
                           shade=0.15 + 0.85 * placed["confidence"].fillna(0.0))
    first, last = tables.early_exit, tables.final_exit
    tip = [alt.Tooltip("token:N", title="token"), alt.Tooltip("path:N", title="path"),
           alt.Tooltip("confidence:Q", format=".3f"), alt.Tooltip("exits_up_to:N", title="routing"),
           alt.Tooltip("nll_first:Q", title=f"exit {first} (shallow) NLL", format=".2f"),
           alt.Tooltip("top_first:N", title=f"exit {first} top-5"),
           alt.Tooltip("nll_last:Q", title=f"exit {last} (deep) NLL", format=".2f"),
           alt.Tooltip("top_last:N", title=f"exit {last} top-5")]
    colour = alt.Color("path:N", scale=alt.Scale(domain=["shallow", "deep", "context"], range=[SHALLOW, DEEP, "#cccccc"]),
                       legend=alt.Legend(orient="top", title=None))
    base = alt.Chart(placed).transform_calculate(path=_path())
    lines = int(placed["line"].max()) + 1 if len(placed) else 1
    boxes = base.mark_rect(cornerRadius=3).encode(
        x=alt.X("x:Q", scale=None, axis=None), x2="x2:Q", y=alt.Y("y:Q", scale=None, axis=None), y2="y2:Q",
        color=colour, opacity=alt.Opacity("shade:Q", scale=None, legend=None), tooltip=tip)
    words = base.mark_text(align="left", baseline="middle", font=FONT, fontSize=13, color="#111111").encode(
        x=alt.X("x:Q", scale=None, axis=None), y=alt.Y("mid:Q", scale=None, axis=None), text="piece:N", tooltip=tip,
    ).transform_calculate(mid=f"datum.y + {(LINE_PX - 3) / 2}")
    return (boxes + words).properties(width=line_chars * CHAR_PX, height=lines * LINE_PX)


def numbers_chart(tables: SliderTables, width: float):
    """Shallow%, Compute%, FLOPs% and the PPLs of this text at the slider's threshold."""
    import altair as alt

    items = [("Shallow%", "shallow_pct", "{:.1f}%"), ("Compute%", "compute_pct", "{:.1f}%"),
             ("FLOPs%", "flops_pct", "{:.1f}%"), ("Routed PPL", "routed_ppl", "{:.2f}"),
             ("Shallow-only PPL", "shallow_ppl", "{:.2f}"), ("Deep-only PPL", "deep_ppl", "{:.2f}")]
    rows = [{"position": int(p), "label": label, "value": fmt.format(v), "x": (k % 3) * width / 3, "y": (k // 3) * 48}
            for p, r in tables.numbers.iterrows() for k, (label, field, fmt) in enumerate(items) for v in [r[field]]]
    base = alt.Chart(pd.DataFrame(rows)).transform_filter(f"datum.position == {POSITION}")
    x, y = alt.X("x:Q", scale=None, axis=None), alt.Y("y:Q", scale=None, axis=None)
    labels = base.mark_text(align="left", baseline="top", fontSize=12, color="#555555").encode(x, y, text="label:N")
    values = base.mark_text(align="left", baseline="top", fontSize=22, dy=15).encode(x, y, text="value:N")
    return (labels + values).properties(width=width, height=92)


EXIT_COLUMNS = [("token", 0, "token:N", None), ("count", 150, "count:Q", "d"), ("exit rate %", 210, "exit_rate:Q", ".0f"),
                ("NLL@{first}", 290, "nll_first:Q", ".2f"), ("NLL@{last}", 360, "nll_last:Q", ".2f")]


def exits_chart(tables: SliderTables):
    """What exits: the text's most frequent shallow tokens at the slider's threshold."""
    import altair as alt

    row_px = 20
    header = pd.DataFrame([{"label": label.format(first=tables.early_exit, last=tables.final_exit), "x": x}
                           for label, x, _, _ in EXIT_COLUMNS])
    totals = tables.exit_totals.assign(
        title=lambda f: [f"What exits — {s:,} of {n:,} tokens, {d:,} distinct" + ("" if s else ": none at this threshold")
                         for s, n, d in zip(f["shallow_tokens"], f["tokens"], f["distinct"])])
    y = alt.Y("y:Q", scale=None, axis=None)
    layers = [
        alt.Chart(totals).transform_filter(f"datum.position == {POSITION}").transform_calculate(x="0", y="0")
        .mark_text(align="left", baseline="top", fontSize=13, fontWeight="bold")
        .encode(alt.X("x:Q", scale=None, axis=None), y, text="title:N"),
        alt.Chart(header).transform_calculate(y=f"{row_px + 6}")
        .mark_text(align="left", baseline="top", fontSize=12, color="#555555")
        .encode(alt.X("x:Q", scale=None, axis=None), y, text="label:N"),
    ]
    rows = alt.Chart(tables.exits).transform_filter(f"datum.position == {POSITION}").transform_calculate(
        y=f"{2 * row_px + 8} + datum.rank * {row_px}")
    for _, x, field, fmt in EXIT_COLUMNS:
        text = alt.Text(field, format=fmt) if fmt else alt.Text(field)
        font = {"font": FONT} if field == "token:N" else {}
        layers.append(rows.transform_calculate(x=f"{x}").mark_text(align="left", baseline="top", fontSize=12, **font)
                      .encode(alt.X("x:Q", scale=None, axis=None), y, text=text))
    height = (int(tables.exits["rank"].max()) + 1 if len(tables.exits) else 1) * row_px + 3 * row_px
    return alt.layer(*layers).properties(width=420, height=height)


def histogram_chart(tables: SliderTables, measure: str, width: float):
    """Confidences of this text's tokens at the first exit, split by path at the slider's threshold."""
    import altair as alt

    colour = alt.Color("path:N", scale=alt.Scale(domain=["shallow", "deep"], range=[SHALLOW, DEEP]), legend=None)
    bars = (
        alt.Chart(tables.histogram).transform_calculate(path=_path())
        .mark_bar().encode(
            x=alt.X("bin_start:Q", bin="binned", scale=alt.Scale(domain=[0, 1]), title=f"confidence ({measure})"),
            x2="bin_end:Q", y=alt.Y("sum(count):Q", title="tokens"), color=colour,
            tooltip=[alt.Tooltip("path:N"), alt.Tooltip("sum(count):Q", title="tokens")])
    )
    rule = (alt.Chart(pd.DataFrame({"one": [1]})).transform_calculate(threshold=f"{POSITION} / 100")
            .mark_rule(color="black", strokeDash=[4, 3]).encode(x="threshold:Q"))
    return (bars + rule).properties(width=width, height=200, title=f"First-exit confidence of these tokens (bins of {BIN:g})")


def routing_chart(panels: dict[str, SliderTables], threshold: float, measure: str, line_chars: int = 100):
    """One panel per model (side by side), all moved by one slider that starts at `threshold`."""
    import altair as alt

    param = threshold_param(threshold)
    per_line = line_chars if len(panels) == 1 else max(30, line_chars // len(panels) - 4)
    columns = []
    for name, tables in panels.items():
        width = per_line * CHAR_PX
        lower = ([exits_chart(tables), histogram_chart(tables, measure, max(200.0, width - 480))] if len(panels) == 1
                 else [histogram_chart(tables, measure, width), exits_chart(tables)])
        parts = [numbers_chart(tables, width), text_chart(tables, per_line),
                 alt.hconcat(*lower, spacing=40) if len(panels) == 1 else alt.vconcat(*lower)]
        title = alt.TitleParams(name, anchor="start") if len(panels) > 1 else alt.TitleParams("")
        columns.append(alt.vconcat(*parts, spacing=18, title=title))
    chart = columns[0] if len(columns) == 1 else alt.hconcat(*columns, spacing=40)
    return chart.add_params(param).resolve_scale(color="independent").configure_view(stroke=None)
