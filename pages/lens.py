"""Lens: what every layer predicts for each token, where predictions settle, and why tokens route as they do."""

import numpy as np
import pandas as pd
import streamlit as st

import appkit
from routed.breakdown import what_exits
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


@st.fragment
def lens_view() -> None:
    """The threshold and what it changes (the routing row, exit rates): reruns alone on a threshold move."""
    cols = st.columns([2, 1, 1])
    with cols[0]:
        threshold = appkit.threshold_slider("lens_threshold", name=name)
    with cols[1]:
        measure = st.selectbox("Confidence measure", CONFIDENCE_MEASURES, key="lens_measure")
    with cols[2]:
        colour = appkit.COLOUR_BY[st.selectbox("Colour", list(appkit.COLOUR_BY), key="lens_colour")]
    shallow = appkit.shallow_mask(routed.records, threshold, measure)
    n = len(rec)
    start = 0
    if n > appkit.LENS_TOKENS:
        start = st.slider("First token shown", 1, n - appkit.LENS_TOKENS + 1, 1, key="lens_start") - 1
        st.caption(f"Showing tokens {start + 1}–{start + appkit.LENS_TOKENS} of {n:,}.")
    st.plotly_chart(appkit.lens_heatmap(seen, strings, shallow, start, appkit.LENS_TOKENS, colour, threshold),
                    width="stretch", theme=None, key="lens_heatmap")
    settle = rec.settling()
    early_ok = settle == rec.layers[0]
    st.caption(
        f"Pink diamonds: settling depth. Bottom row: the path at threshold {threshold:.2f}. "
        f"{early_ok.mean():.0%} of this text's tokens settle at layer {rec.layers[0]}; "
        f"{shallow.mean():.0%} take the shallow path, and {(shallow & ~early_ok).mean():.0%} exit before settling "
        "(their shallow answer differs from the full model's)."
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Exit rate by position in the context window**")
        hist = None
        if diagnostics is not None:
            hist = diagnostics["splits"]["test"]["exit_by_position"].get(measure)
        st.plotly_chart(appkit.exit_rate_by_position(seen.context_length, threshold, (rec.window_position, shallow), hist),
                        width="stretch", theme=None, key="lens_position")
    with right:
        exits_table(threshold, measure)


def exits_table(threshold: float, measure: str) -> None:
    """What exits: the text's most frequent shallow tokens at this threshold."""
    summary = what_exits(routed.records, route_strings, threshold, measure, top=8)
    st.markdown(f"**What exits** — {summary['shallow_tokens']:,} of {summary['tokens']:,} tokens")
    if summary["rows"]:
        st.table(pd.DataFrame([{"token": repr(r["token"]), "count": r["count"], "exit rate %": round(r["exit_rate_pct"])}
                               for r in summary["rows"]]), hide_index=True)


lens_view()

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
