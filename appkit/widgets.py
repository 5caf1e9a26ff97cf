"""Widgets shared by pages: the model picker and the threshold slider, kept across pages."""

from __future__ import annotations

import streamlit as st

from appkit.loaders import checkpoint_names, checkpoint_problems, describe, pretrained_names
from routed.checkpoint import checkpoints_dir


def model_picker(key: str, label: str = "Model", state: str = "model", optional: bool = False) -> str | None:
    """A checkpoint selectbox whose choice is kept across pages in st.session_state[state].

    It lists the usable checkpoint folders (exit adapters on a pretrained model included) and every fetched
    pretrained model as hf:NAME; the first picker of a page lists the unusable folders with their problem.
    """
    if not optional:
        show_problems()
    names = checkpoint_names() + pretrained_names()
    if not names:
        st.info(f"No checkpoints in {checkpoints_dir()}: train one on the Train page.")
        return None
    options = [None, *names] if optional else names
    current = st.session_state.get(state)
    index = options.index(current) if current in options else 0
    choice = st.selectbox(label, options, index=index, key=key, format_func=lambda n: "—" if n is None else n)
    st.session_state[state] = choice
    if choice is not None:
        try:
            st.caption(describe(choice))
        except (ValueError, OSError) as exc:
            st.error(str(exc))
            return None
    return choice


def show_problems() -> None:
    """One error listing the checkpoint folders that cannot be used, and why (nothing when all are fine)."""
    problems = checkpoint_problems()
    if problems:
        lines = "\n".join(f"- {problem}" for problem in problems.values())
        st.error(f"Skipped {len(problems)} checkpoint folder(s) that cannot be used:\n\n{lines}")


def threshold_slider(key: str, label: str = "Threshold (confidence ≥ threshold → shallow)") -> float:
    """The routing threshold, kept across pages in st.session_state['threshold']."""
    value = st.slider(label, 0.0, 1.0, st.session_state.get("threshold", 0.95), 0.01, key=key)
    st.session_state["threshold"] = value
    return value


