"""Calibration: how well each confidence measure predicts a right answer, and a threshold with a guarantee."""

import math

import numpy as np
import streamlit as st

import appkit
from routed.calibrate import guarantee_report
from routed.routing import CONFIDENCE_MEASURES

st.title("Calibration")
st.markdown(
    "Routing trusts layer 1's confidence. A **reliability diagram** shows, per bin of confidence, how often the "
    "exit's top-1 was the next token: a calibrated measure lies on the diagonal, and its **expected calibration "
    "error** (ECE: the token-weighted gap to the diagonal) is near 0."
)
name = appkit.model_picker("calibration_model")
if name is None:
    st.stop()
try:
    diag = appkit.diagnostics(name)
except ValueError as exc:
    st.error(str(exc))
    st.stop()

st.subheader("How well confidence predicts a right answer")
left, right = st.columns([1, 3])
with left:
    split = st.radio("Split", list(diag["splits"]), horizontal=True, key="calibration_split")
first = str(diag["layers"][0])
available = list(diag["splits"][split]["reliability"][first])
with right:
    measures = st.multiselect("Confidence measures", available, default=available, key="calibration_measures")
st.plotly_chart(appkit.reliability_figure(diag["splits"][split], measures), width="stretch", theme=None,
                key="calibration_reliability")
table = appkit.ece_table(diag)
st.dataframe(table.style.format({c: "{:.4f}" for c in table.columns if c.startswith("ECE")} | {"accuracy": "{:.3f}"}),
             hide_index=True)
probe = diag.get("probe_train_tokens")
st.caption(
    f"{diag['n_bins']} equal-width bins; corpus markers left out; {diag['splits']['validation']['tokens']:,} validation "
    f"and {diag['splits']['test']['tokens']:,} test tokens (at most the first {diag.get('max_tokens') or 0:,} of each split). margin and neg_entropy are scores, not probabilities: their "
    "ECE says how far reading them as probabilities would mislead."
    + (f" probe: logistic regression on layer {first}'s state, fitted on {probe:,} train tokens (layer {first} only)." if probe else "")
)

st.subheader("A threshold with a guarantee")
if len(diag["layers"]) < 2:
    st.info(f"{name} has one layer: there is no deeper layer to agree with, and nothing to route.")
    st.stop()
cols = st.columns(3)
agreement = cols[0].slider("Shallow tokens that must agree with the last layer", 0.50, 0.995, 0.95, 0.005,
                           format="%.3f", key="calibration_agreement")
delta = cols[1].select_slider("Allowed failure probability δ", [0.01, 0.02, 0.05, 0.1, 0.2], 0.1, key="calibration_delta")
measure = cols[2].selectbox("Confidence measure", list(diag["splits"]["validation"]["agreement"]), key="calibration_measure")
grid = np.linspace(0.0, 1.0, diag["grid"])
counts = {s: {**diag["splits"][s]["agreement"][measure], "tokens": diag["splits"][s]["tokens"]} for s in diag["splits"]}
report = guarantee_report(counts["validation"], counts["test"], grid, 1.0 - agreement, delta)
threshold, pick, test = report["threshold"], report["validation"], report["test"]
if threshold is None:
    st.warning(
        f"No threshold certifies {agreement:.1%} agreement with probability ≥ {1 - delta:.0%} on "
        f"{pick['tokens']:,} validation tokens: falling back to deep-only (no token exits)."
    )
else:
    verdict = "held" if test["held"] else "did NOT hold"
    agreed = "no test token exits" if test["agreement"] is None else f"{test['agreement']:.2%} of {test['shallow']:,} shallow tokens agree"
    (st.success if test["held"] else st.error)(
        f"Threshold {threshold:.3f}: on validation {pick['shallow']:,} of {pick['tokens']:,} tokens exit, "
        f"{pick['disagree'] / pick['shallow']:.2%} disagree (upper {1 - delta:.0%} bound {pick['upper_bound']:.2%} ≤ "
        f"{1 - agreement:.2%}). On test, {agreed}: the guarantee {verdict}."
    )
st.plotly_chart(appkit.guarantee_figure(counts["validation"], counts["test"], grid, 1.0 - agreement, delta, threshold),
                width="stretch", theme=None, key="calibration_guarantee")
st.caption(
    "Thresholds are tested from high to low and the scan stops at the first that fails (fixed-sequence testing, "
    "as in Learn then Test and CALM), so no multiplicity correction is needed."
    + (f" On the whole splits: `python -m routed calibrate --checkpoint checkpoints/{name} --agreement {agreement:g} "
       f"--delta {delta:g} --measure {measure}`." if measure in CONFIDENCE_MEASURES else "")
)
if threshold is not None:
    slider_value = math.ceil(threshold * 100 - 1e-9) / 100  # up to the slider's step: never more tokens exit
    if st.button(f"Use threshold {slider_value:.2f} on every page", key="calibration_use"):
        appkit.use_threshold(slider_value)
        st.toast(f"Threshold set to {slider_value:.2f}.")
