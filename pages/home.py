"""Home: the method in one diagram, the model picker, and the headline numbers at a threshold."""

import streamlit as st

import appkit
from routed.sweep import DENSE_EXECUTION

st.title("Confidence-routed transformers")
st.markdown(
    "Every token runs through layer 1. If the output head is confident enough there, the token **exits** "
    "(shallow path); otherwise it continues through layers 2 and 3 (deep path). "
    "**Shallow%** is the share of tokens that exit early; **Compute%** counts layers run per token against a "
    "3-layer model; **FLOPs%** also counts the output head, which the deep path runs twice."
)
st.graphviz_chart(
    f"""digraph {{
  rankdir=LR; bgcolor="transparent";
  node [shape=box, style="rounded,filled", fillcolor="#f0f2f6", fontname="Helvetica", fontsize=11];
  edge [fontname="Helvetica", fontsize=10];
  token [label="token"]; l1 [label="layer 1"]; h1 [label="output head"];
  check [shape=diamond, label="confidence\\n≥ threshold?"];
  shallow [label="exit: shallow\\n(1 layer)", fillcolor="{appkit.SHALLOW}", fontcolor=white];
  l23 [label="layers 2, 3"]; h3 [label="output head"];
  deep [label="exit: deep\\n(3 layers)", fillcolor="{appkit.DEEP}", fontcolor=white];
  token -> l1 -> h1 -> check;
  check -> shallow [label="yes", color="{appkit.SHALLOW}", fontcolor="{appkit.SHALLOW}", penwidth=2];
  check -> l23 [label="no", color="{appkit.DEEP}", fontcolor="{appkit.DEEP}", penwidth=2];
  l23 -> h3 -> deep [color="{appkit.DEEP}", penwidth=2];
}}""",
    width="stretch",
)


name = appkit.model_picker("home_model")


def headline(name: str) -> None:
    """The table at a threshold: the slider under it picks the routed row in the browser (no rerun)."""
    try:
        curve = appkit.curve(name)  # first: a model without a corpus (pretrained) says so here
        corpus = appkit.corpus_of(name)
        frame = appkit.headline_frame(name, curve, appkit.baselines(corpus))
        row = appkit.row_at(curve, 0.0)  # the references below do not depend on the threshold
    except ValueError as exc:
        st.error(str(exc))
        return
    others = [label for label, n in appkit.baseline_names(corpus).items() if appkit.corpus_of(n) != corpus]
    if others:
        st.warning(f"{' and '.join(others)} used another corpus or vocabulary than {name}: their PPLs are not comparable.")
    st.altair_chart(appkit.headline_chart(frame, appkit.start_threshold(name)), key="home_headline")
    st.caption(
        f"{name}: shallow-only PPL {row['shallow_ppl']:.2f}, deep-only PPL {row['deep_ppl']:.2f}, "
        f"oracle (best path per token) {row['oracle_ppl']:.2f}. 'vs Standard 3L' is the PPL improvement in %. "
        f"FLOPs% prices the {DENSE_EXECUTION} execution, the cheapest that gives exactly this routing; corpus "
        "markers (e.g. <unk>) are left out of every number; bits/byte compares across tokenizers."
        + ("" if len(frame) == 101 + 2 else " Standard 1L/3L rows appear once checkpoints standard_1l and standard_3l exist.")
    )


if name is not None:
    st.subheader("Headline numbers (test split)")
    headline(name)
