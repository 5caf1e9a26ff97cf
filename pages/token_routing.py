"""Token routing: which path each token of a text takes, and what that costs and gains."""

import streamlit as st

import appkit
from routed.routing import CONFIDENCE_MEASURES

# In the style of WikiText-2 (the shipped models' corpus): spaced punctuation, @-@ for hyphens.
DEFAULT_TEXT = (
    "The town is located on the east bank of the river , about 40 miles ( 64 km ) north of the capital . "
    "It was founded in the 12th century and became an important centre of trade during the following years . "
    "In 1920 , the population of the town was 5 @,@ 000 , and it was connected to the railway network in the "
    "same year . The church of St. Mary , built in the Gothic style , is one of the oldest buildings in the region ."
)

st.title("Token routing")
left, right = st.columns(2)
with left:
    name = appkit.model_picker("routing_model")
with right:
    other = appkit.model_picker("routing_compare", "Compare with (optional)", state="compare_model", optional=True)
# Long texts are cut into context windows (said below the numbers); the limit keeps a page responsive.
text = st.text_area("Text", DEFAULT_TEXT, height=130, max_chars=200_000, key="routing_text")
left, right = st.columns([2, 1])
with left:
    threshold = appkit.threshold_slider("routing_threshold")
with right:
    measure = st.selectbox("Confidence measure", CONFIDENCE_MEASURES, key="routing_measure")


def panel(name: str) -> None:
    """The routed text of one model: numbers, the coloured tokens, the confidence histogram."""
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
    st.html(appkit.token_html(result, strings, shallow, threshold, measure))
    st.altair_chart(
        appkit.confidence_histogram(result.records.confidence[measure], shallow, threshold, measure), width="stretch"
    )


if name is None:
    st.stop()
if not text.strip():
    st.error("Enter some text to route.")
    st.stop()
if other is None:
    panel(name)
else:
    for column, model in zip(st.columns(2), (name, other)):
        with column:
            st.subheader(model)
            panel(model)

