"""Home: the method in one diagram, the model picker, and the headline numbers at a threshold."""

import pandas as pd
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


@st.fragment
def headline(name: str) -> None:
    """The threshold and the table: a threshold move reruns only this part of the page (the picker stays out,
    as every element redrawn adds to the move's latency)."""
    threshold = appkit.threshold_slider("home_threshold", name=name)
    try:
        row = appkit.row_at(appkit.curve(name), threshold)
        corpus = appkit.corpus_of(name)
        reference = appkit.baseline_names(corpus)
        rows = {f"{name} (threshold {threshold:.2f})": row, **appkit.baselines(corpus)}
    except ValueError as exc:
        st.error(str(exc))
        return
    others = [label for label, n in reference.items() if appkit.corpus_of(n) != corpus]
    if others:
        st.warning(f"{' and '.join(others)} used another corpus or vocabulary than {name}: their PPLs are not comparable.")
    frame = pd.DataFrame(rows).T
    if "routed_bpb" not in frame:
        frame["routed_bpb"] = float("nan")  # a sweep written before bits per byte were kept
    table = frame[["routed_ppl", "routed_bpb", "shallow_pct", "compute_pct", "flops_pct"]].astype(float)
    table.columns = ["Routed PPL (per token)", "bits/byte", "Shallow%", "Compute%", f"FLOPs% ({DENSE_EXECUTION})"]
    if "Standard 3L" in rows:
        table["vs Standard 3L"] = (
            100 * (rows["Standard 3L"]["routed_ppl"] - table["Routed PPL (per token)"]) / rows["Standard 3L"]["routed_ppl"]
        )
    st.table(table.style.format("{:.2f}", na_rep="–").format("{:.4f}", subset=["bits/byte"], na_rep="–"))  # static HTML: a threshold move redraws it at once
    st.caption(
        f"{name}: shallow-only PPL {row['shallow_ppl']:.2f}, deep-only PPL {row['deep_ppl']:.2f}, "
        f"oracle (best path per token) {row['oracle_ppl']:.2f}. 'vs Standard 3L' is the PPL improvement in %. "
        f"FLOPs% prices the {DENSE_EXECUTION} execution, the cheapest that gives exactly this routing; corpus "
        "markers (e.g. <unk>) are left out of every number; bits/byte compares across tokenizers."
        + ("" if len(rows) == 3 else " Standard 1L/3L rows appear once checkpoints standard_1l and standard_3l exist.")
    )


if name is not None:
    st.subheader("Headline numbers (test split)")
    headline(name)
