"""Token routing: which path each token of a text takes, what exits, and what that costs and gains."""

import pandas as pd
import streamlit as st

import appkit
from routed.breakdown import what_exits
from routed.routing import CONFIDENCE_MEASURES

st.title("Token routing")
left, right = st.columns(2)
with left:
    name = appkit.model_picker("routing_model")
with right:
    other = appkit.model_picker("routing_compare", "Compare with (optional)", state="compare_model", optional=True)
# Long texts are cut into context windows (said below the numbers); the limit keeps a page responsive.
text = appkit.text_area("routing_text", name, height=130, max_chars=200_000)


def exits_table(result, strings: dict, threshold: float, measure: str) -> None:
    """What exits: the text's most frequent shallow tokens, their exit rate and NLL at both exits."""
    summary = what_exits(result.records, strings, threshold, measure, top=12)
    st.markdown(f"**What exits** — {summary['shallow_tokens']:,} of {summary['tokens']:,} tokens, "
                f"{summary['distinct_shallow_tokens']:,} distinct")
    if not summary["rows"]:
        st.caption("No token of this text exits at this threshold.")
        return
    first, last = result.records.early_exit, result.records.final_exit
    table = pd.DataFrame([{"token": repr(r["token"]), "count": r["count"], "exit rate %": r["exit_rate_pct"],
                           f"NLL@{first}": r["nll_by_exit"][first], f"NLL@{last}": r["nll_by_exit"][last]}
                          for r in summary["rows"]])
    # st.table, not st.dataframe: static HTML redraws at once when the threshold moves
    st.table(table.style.format({"exit rate %": "{:.0f}", f"NLL@{first}": "{:.2f}", f"NLL@{last}": "{:.2f}"}), hide_index=True)
    st.caption("exit rate: share of this token's occurrences that exit; `python -m routed exits` gives it for a whole split.")


def panel(name: str, threshold: float, measure: str, beside: bool) -> None:
    """The routed text of one model: numbers, the coloured tokens beside what exits, the confidence histogram."""
    try:
        result, strings = appkit.routed_text(name, appkit.checkpoint(name).fingerprint, text)
        row = appkit.at_threshold(result.records, threshold, measure)
    except ValueError as exc:  # CheckpointError included
        st.error(str(exc))
        return
    shallow = appkit.shallow_mask(result.records, threshold, measure)
    cols = st.columns(3)
    cols[0].metric("Shallow%", f"{row['shallow_pct']:.1f}%")
    cols[1].metric("Compute%", f"{row['compute_pct']:.1f}%")
    cols[2].metric("FLOPs%", f"{row['flops_pct']:.1f}%")
    cols = st.columns(3)
    cols[0].metric("Routed PPL", f"{row['routed_ppl']:.2f}")
    cols[1].metric("Shallow-only PPL", f"{row['shallow_ppl']:.2f}")
    cols[2].metric("Deep-only PPL", f"{row['deep_ppl']:.2f}")
    context = result.records.model_config.context_length
    if result.windows > 1:
        st.caption(
            f"{len(result.tokens):,} tokens, more than the context of {context}: the text was cut into "
            f"{result.windows:,} windows; each token sees only the tokens of its own window."
        )
    if len(result.tokens) > appkit.HEATMAP_TOKENS:
        st.caption(
            f"The heatmap shows the first {appkit.HEATMAP_TOKENS:,} of {len(result.tokens):,} tokens; "
            "the numbers and the histogram cover them all."
        )
    heatmap = appkit.token_html(result, strings, shallow, threshold, measure)
    if beside:
        left, right = st.columns([3, 2])
        with left:
            st.html(heatmap)
        with right:
            exits_table(result, strings, threshold, measure)
    else:
        st.html(heatmap)
        exits_table(result, strings, threshold, measure)
    st.altair_chart(
        appkit.confidence_histogram(result.records.confidence[measure], shallow, threshold, measure), width="stretch"
    )


@st.fragment
def routing() -> None:
    """The threshold and everything it changes: a threshold move reruns only this part of the page."""
    left, right = st.columns([2, 1])
    with left:
        threshold = appkit.threshold_slider("routing_threshold", name=name)
    with right:
        measure = st.selectbox("Confidence measure", CONFIDENCE_MEASURES, key="routing_measure")
    if other is None:
        panel(name, threshold, measure, beside=True)
    else:
        for column, model in zip(st.columns(2), (name, other)):
            with column:
                st.subheader(model)
                panel(model, threshold, measure, beside=False)


if name is None:
    st.stop()
if not text.strip():
    st.error("Enter some text to route.")
    st.stop()
st.page_link("pages/lens.py", label="Why these paths? Open the lens: every layer's prediction for each token",
             icon=":material/layers:")
routing()
