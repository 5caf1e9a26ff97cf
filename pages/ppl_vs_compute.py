"""PPL vs compute: every threshold of every checkpoint, the baselines, the oracle bound and the Pareto front."""

import pandas as pd
import streamlit as st

import appkit
from routed.sweep import DENSE_EXECUTION

st.title("PPL vs compute")
appkit.show_problems()
names = appkit.checkpoint_names()
if not names:
    st.info("No checkpoints yet: train one on the Train page.")
    st.stop()
corpora, errors = {}, []
for name in names:
    try:
        corpora[name] = appkit.corpus_of(name)
    except ValueError as exc:  # a damaged checkpoint is reported below; the others are still drawn
        errors.append(str(exc))
if not corpora:
    st.error("\n\n".join(errors))
    st.stop()
# PPLs on different corpora or tokenizers do not share an axis: one corpus at a time.
corpus = st.selectbox(
    "Corpus",
    sorted(set(corpora.values())),
    key="curve_corpus",
    on_change=lambda: st.session_state.pop("curve_models", None),  # the new corpus starts from its defaults
)
names = [n for n in names if corpora.get(n) == corpus]  # damaged ones were reported above
baseline_names = appkit.baseline_names(corpus)
routed = [n for n in names if n not in baseline_names.values()] or names
# Drawn at first: the routed models of Standard 3L's size, the comparison the page is for; others can be added.
routed = appkit.comparable_models(routed, baseline_names.get("Standard 3L")) or routed
selected = st.multiselect("Checkpoints", names, default=routed[: len(appkit.MODEL_COLOURS)], key="curve_models")
chosen = st.session_state.get("model")
shown = chosen if chosen in names else next((n for n in selected if n in names), None)
if shown is not None:
    st.caption(f"{shown}: {appkit.regime(shown)}")
x = "flops_pct" if st.toggle("FLOPs% instead of Compute%", key="curve_flops") else "compute_pct"
x_name = "FLOPs%" if x == "flops_pct" else "Compute%"
# The chart's own slider moves the dots in the browser (no rerun); it starts at the shared threshold.
threshold = st.session_state.get("threshold", appkit.default_threshold(shown))

curves = {}
for name in selected:
    try:
        curves[name] = appkit.curve(name)
    except ValueError as exc:
        errors.append(str(exc))
try:
    points = appkit.baselines(corpus)
except ValueError as exc:
    points = {}
    errors.append(str(exc))
if errors:
    st.error("\n\n".join(errors))
if not curves:
    st.stop()

chart = appkit.compute_chart(curves, x, threshold, points)
st.altair_chart(chart, width="stretch")
st.caption(
    "Lines: routed PPL over all thresholds; filled dots: the threshold set with the slider under the chart; dashed: oracle (each token "
    "takes its better path) — no threshold can go below it; wide grey band: Pareto front; diamonds: Standard 1L/3L."
)
st.download_button(
    "Download chart (HTML)", chart.to_html(), f"ppl_vs_{x}.html", "text/html", key="curve_chart_download"
)

st.subheader("Quality against alpha")
level = st.slider(f"{x_name} level", 30.0, 100.0, 65.0, 0.5, key="curve_level")
rows = []
for name, frame in curves.items():
    alpha = appkit.alpha_of(appkit.config(name))
    ppl = appkit.ppl_at(frame, x, level)
    if alpha is not None and ppl == ppl:  # NaN: the curve does not reach this level
        rows.append({"model": name, "alpha": alpha, "routed_ppl": ppl})
if rows:
    st.altair_chart(appkit.alpha_chart(pd.DataFrame(rows).sort_values("alpha"), f"{x_name} {level:g}"), width="stretch")
    st.caption(
        "alpha = L1 weight / (L1 + last-layer weight) of each checkpoint's loss; PPL interpolated along its curve."
    )
else:
    st.info(f"No selected checkpoint with an L1 and a last-layer loss reaches {x_name} {level:g}.")

st.subheader("PPL over threshold and alpha")
surface_x = st.radio("Columns", ["matched compute", "threshold"], horizontal=True, key="curve_surface_x")
alphas = {name: appkit.alpha_of(appkit.config(name)) for name in curves}
if sum(a is not None for a in alphas.values()):
    st.plotly_chart(appkit.alpha_surface(curves, alphas, x if surface_x == "matched compute" else "threshold"),
                    width="stretch", theme=None, key="curve_surface")
    st.caption(
        f"One row per selected checkpoint, by alpha; colour: routed PPL (test), darker is better. 'matched compute': "
        f"PPL where each curve reaches that {x_name} (hover for the threshold it takes); blank where it does not reach it."
    )
else:
    st.info("No selected checkpoint has both an L1 and a last-layer loss (alpha).")

st.subheader("Threshold analysis")
models = list(curves)
chosen = st.session_state.get("model")
model = st.selectbox("Model", models, index=models.index(chosen) if chosen in models else 0, key="curve_table_model")
table = pd.DataFrame([appkit.row_at(curves[model], t) for t in appkit.NOTES_THRESHOLDS])
if "routed_bpb" not in table:
    table["routed_bpb"] = float("nan")  # a sweep written before bits per byte were kept
table = table[["threshold", "routed_ppl", "routed_bpb", "shallow_pct", "compute_pct", "flops_pct"]]
table.columns = ["Threshold", "PPL (per token)", "bits/byte", "Shallow%", "Compute%", f"FLOPs% ({DENSE_EXECUTION})"]
st.dataframe(
    table.style.format({"Threshold": "{:.2f}", "PPL (per token)": "{:.2f}"} | {"bits/byte": "{:.4f}"}
                       | {c: "{:.1f}%" for c in table.columns[3:]}, na_rep="–"),
    hide_index=True,
)
st.caption(f"Corpus markers (e.g. <unk>) are left out; FLOPs% prices the {DENSE_EXECUTION} execution, the cheapest "
           "that gives exactly this routing.")
st.download_button(
    "Download table (CSV)", table.to_csv(index=False), f"{model}_thresholds.csv", "text/csv", key="curve_table_download"
)
