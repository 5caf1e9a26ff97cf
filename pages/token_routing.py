"""Token routing: which path each token of a text takes, what exits, and what that costs and gains."""

import streamlit as st

import appkit
from routed.routing import CONFIDENCE_MEASURES

st.title("Token routing")
left, right = st.columns(2)
with left:
    name = appkit.model_picker("routing_model")
with right:
    other = appkit.model_picker("routing_compare", "Compare with (optional)", state="compare_model", optional=True)
# Long texts are cut into context windows (said below the numbers); the limit keeps a page responsive.
text = appkit.text_area("routing_text", name, height=130, max_chars=200_000)


CHART_TOKENS = 2_000  # tokens drawn in the chart: each is a box and a text in the browser


def panel_tables(model: str, measure: str):
    """The model's routed text tabulated at every slider position, or None after saying why not."""
    try:
        result, _ = appkit.routed_text(model, appkit.checkpoint(model).fingerprint, text)
        tables = appkit.slider_tables(model, appkit.checkpoint(model).fingerprint, text, measure, CHART_TOKENS)
    except ValueError as exc:  # CheckpointError included
        st.error(f"{model}: {exc}" if other is not None else str(exc))
        return None
    context = result.records.model_config.context_length
    notes = []
    if result.windows > 1:
        notes.append(f"{len(result.tokens):,} tokens, more than the context of {context}: the text was cut into "
                     f"{result.windows:,} windows; each token sees only the tokens of its own window.")
    if len(result.tokens) > CHART_TOKENS:
        notes.append(f"The text shows the first {CHART_TOKENS:,} of {len(result.tokens):,} tokens; the numbers, "
                     "what exits and the histogram cover them all.")
    if notes:
        st.caption((f"{model}: " if other is not None else "") + " ".join(notes))
    return tables


measure = st.selectbox("Confidence measure", CONFIDENCE_MEASURES, key="routing_measure")
if name is None:
    st.stop()
if not text.strip():
    st.error("Enter some text to route.")
    st.stop()
panels = {model: tables for model in ([name] if other is None else [name, other])
          if (tables := panel_tables(model, measure)) is not None}
if panels:
    # The slider under the chart moves everything in it in the browser, with no rerun of the page.
    st.altair_chart(appkit.routing_chart(panels, appkit.start_threshold(name), measure), key="routing_chart")
    first = next(iter(panels.values()))
    st.caption(
        f"Colour: the path at the slider's threshold (exit after layer {first.early_exit}, or all "
        f"{first.final_exit} layers); shade: confidence; hover a token for its numbers and each exit's top-5. "
        "FLOPs% prices the dense execution; the numbers cover this text's predicted tokens (the first token is "
        "context only). `python -m routed exits` gives what exits for a whole split."
    )
st.page_link("pages/lens.py", label="Why these paths? Open the lens: every layer's prediction for each token",
             icon=":material/layers:")
