"""Lens: what every layer predicts for each token, where predictions settle, and why tokens route as they do."""

import numpy as np
import pandas as pd
import streamlit as st

import appkit
from routed.routing import CONFIDENCE_MEASURES

st.title("Lens: every layer's prediction")
st.markdown(
    "Each layer's state read through the shared output head. A token's **settling depth** is the first layer "
    "from which every deeper layer's top-1 equals the last layer's: the shallowest exit that gives the full "
    "model's answer. Routing sends a token shallow on layer 1's confidence alone; the lens shows whether "
    "that confidence was right."
)
name = appkit.model_picker("lens_model")
if name is None:
    st.stop()
text = appkit.text_area("lens_text", name, height=110, max_chars=50_000)
if not text.strip():
    st.error("Enter some text to look at.")
    st.stop()
try:
    seen, strings = appkit.lens_text(name, appkit.config(name).get("fingerprint", ""), text)
    routed, route_strings = appkit.routed_text(name, appkit.config(name).get("fingerprint", ""), text)
except ValueError as exc:
    st.error(str(exc))
    st.stop()
for note in seen.notes():
    st.caption(note)
rec = seen.records
try:
    diagnostics = appkit.diagnostics(name, compute=False)  # the test split's, when stored; never computed here
except ValueError as exc:
    diagnostics = None
    st.caption(str(exc))


cols = st.columns(2)
with cols[0]:
    measure = st.selectbox("Confidence measure", CONFIDENCE_MEASURES, key="lens_measure")
with cols[1]:
    colour = appkit.COLOUR_BY[st.selectbox("Colour", list(appkit.COLOUR_BY), key="lens_colour")]
confidence = routed.records.confidence[measure]
index = appkit.exit_index(confidence)  # per token: the highest slider position at which it exits
n = len(rec)
start = 0
if n > appkit.LENS_TOKENS:
    start = st.slider("First token shown", 1, n - appkit.LENS_TOKENS + 1, 1, key="lens_start") - 1
    st.caption(f"Showing tokens {start + 1}–{start + appkit.LENS_TOKENS} of {n:,}.")
stop = min(n, start + appkit.LENS_TOKENS)
st.plotly_chart(appkit.lens_heatmap(seen, strings, confidence, index, start, appkit.LENS_TOKENS, colour, measure),
                width="stretch", theme=None, key="lens_heatmap")
st.caption("Pink diamonds: settling depth. Bottom row: the first exit's confidence, which routing compares with the "
           "threshold (hover: the thresholds at which the token exits).")
try:
    exits = appkit.slider_tables(name, appkit.config(name).get("fingerprint", ""), text, measure, 1)
except ValueError as exc:
    st.error(str(exc))
    st.stop()
split_hist = None
if diagnostics is not None:
    split_hist = diagnostics["splits"]["test"]["exit_by_position"].get(measure)
settles_first = rec.settling() == rec.layers[0]
# The slider under this chart moves everything in it in the browser, with no rerun of the page.
st.altair_chart(appkit.lens_slider_chart(
    [repr(t) for t in seen.tokens[start + 1 : stop + 1]], index[start:stop], start,
    appkit.summary_table(index, settles_first, rec.layers[0]),
    appkit.position_table(seen.context_length, rec.window_position, index, split_hist),
    exits, appkit.start_threshold(name)), key="lens_threshold_views")
st.caption("Top strip: the path of the tokens shown in the heatmap, in the same order, at the slider's threshold. "
           "Exit rate: this text's tokens (diamonds) and, where stored, the test split's (line).")

st.markdown("**Settling depth**")
settle_all = rec.settling()
sources = {"this text": {layer: int((settle_all == layer).sum()) for layer in rec.layers}}
if diagnostics is not None:
    sources[f"test split (first {diagnostics.get('max_tokens') or 0:,} tokens)"] = diagnostics["splits"]["test"]["settling"]
st.plotly_chart(appkit.settling_chart(sources), width="stretch", theme=None, key="lens_settling")

st.subheader("One token, layer by layer")
labels = [f"{i + 1}: {seen.tokens[i]!r} → {seen.tokens[i + 1]!r}" for i in range(len(rec))]
pick = st.selectbox("Token", range(len(rec)), format_func=lambda i: labels[i], key="lens_token")
settle = rec.settling()[pick]
rows = []
for r, layer in enumerate(rec.layers):
    tops = ", ".join(f"{strings.get(int(t), '?')!r} {p:.2f}" for t, p in zip(rec.top_ids[r, pick], rec.top_probs[r, pick]))
    rows.append({"layer": layer, "top-1": repr(strings.get(int(rec.top1[r, pick]), "?")),
                 "top-1 p": float(rec.top1_prob[r, pick]), "true token p": float(rec.true_prob[r, pick]),
                 "true token rank": int(rec.true_rank[r, pick]), "NLL": float(rec.true_nll[r, pick]),
                 "agrees with last": bool(rec.agrees_last[r, pick]), "top-5": tops})
st.dataframe(pd.DataFrame(rows).style.format({"top-1 p": "{:.3f}", "true token p": "{:.3f}", "NLL": "{:.2f}"}),
             hide_index=True)
conf = {m: float(v[pick]) for m, v in routed.records.confidence.items()}
st.caption(f"Settles at layer {settle}. Layer-1 confidence: " + ", ".join(f"{m} {v:.3f}" for m, v in conf.items())
           + f"; the true next token is {seen.tokens[pick + 1]!r}" + (" (a corpus marker)." if rec.is_marker[pick] else "."))
if np.any(rec.is_marker):
    st.caption("Corpus markers (e.g. <unk>) in this text are included here; the test-split numbers leave them out.")
