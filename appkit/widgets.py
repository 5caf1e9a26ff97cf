"""Widgets shared by pages: the model picker, the threshold slider and the text, kept across pages.

A shared value lives in st.session_state under a plain name ("model", "threshold", "text"); each
page's widget has its own key, is set from the shared value before it is drawn, and writes back in
its on_change callback (so a value set on one page is what the next page shows). Until the user
moves the threshold or edits the text, both follow the chosen model: its calibrated default
threshold and a text in its corpus' style.
"""

from __future__ import annotations

import streamlit as st

from appkit.defaults import TEXTS, default_model, default_text, default_threshold, regime
from appkit.loaders import checkpoint_names, checkpoint_problems, describe, pretrained_names
from routed.checkpoint import checkpoints_dir

THRESHOLD_LABEL = "Threshold (confidence ≥ threshold → shallow)"


def _remember(key: str, state: str) -> None:
    st.session_state[state] = st.session_state[key]
    if state == "threshold":
        st.session_state["threshold_auto"] = False  # the user chose it: stop following the model


def model_picker(key: str, label: str = "Model", state: str = "model", optional: bool = False) -> str | None:
    """A checkpoint selectbox whose choice is kept across pages in st.session_state[state].

    It lists the usable checkpoint folders (exit adapters on a pretrained model included) and every fetched
    pretrained model as hf:NAME; the first picker of a page lists the unusable folders with their problem.
    The first visit gets appkit.defaults.default_model; the main picker also says the model's regime.
    """
    if not optional:
        show_problems()
    names = checkpoint_names() + pretrained_names()
    if not names:
        st.info(f"No checkpoints in {checkpoints_dir()}: train one on the Train page.")
        return None
    options = [None, *names] if optional else names
    current = st.session_state.get(state)
    if current not in options and not optional:
        current = default_model(names)
    index = options.index(current) if current in options else 0
    choice = st.selectbox(label, options, index=index, key=key, format_func=lambda n: "—" if n is None else n)
    st.session_state[state] = choice
    if choice is not None:
        try:
            st.caption(describe(choice))
        except (ValueError, OSError) as exc:
            st.error(str(exc))
            return None
        if state == "model":
            st.caption(regime(choice))
    return choice


def show_problems() -> None:
    """One error listing the checkpoint folders that cannot be used, and why (nothing when all are fine)."""
    problems = checkpoint_problems()
    if problems:
        lines = "\n".join(f"- {problem}" for problem in problems.values())
        st.error(f"Skipped {len(problems)} checkpoint folder(s) that cannot be used:\n\n{lines}")


def threshold_slider(key: str, label: str = THRESHOLD_LABEL, name: str | None = None) -> float:
    """The routing threshold, shared across pages; until moved it is the model's default (about half shallow)."""
    st.session_state[key] = start_threshold(name)
    help_text = "Until you move it, the threshold follows the model: the highest that sends about half its test tokens shallow."
    return st.slider(label, 0.0, 1.0, step=0.01, key=key, on_change=_remember, args=(key, "threshold"), help=help_text)


def start_threshold(name: str | None) -> float:
    """The shared threshold a page's own chart slider starts from: the model's default until a slider of
    the app (or the calibration page) set it."""
    if st.session_state.get("threshold_auto", True) or "threshold" not in st.session_state:
        st.session_state["threshold"] = default_threshold(name if name is not None else st.session_state.get("model"))
    return float(st.session_state["threshold"])


def use_threshold(value: float) -> None:
    """Make `value` the shared threshold (as if the user had moved a slider to it)."""
    st.session_state["threshold"] = float(value)
    st.session_state["threshold_auto"] = False


def text_area(key: str, name: str | None, label: str = "Text", **options) -> str:
    """The text to route, shared across pages; until edited it is a text in the style of the model's corpus."""
    current = st.session_state.get("text")
    if current is None or current in TEXTS.values():
        current = default_text(name)
    st.session_state[key] = current
    return st.text_area(label, key=key, on_change=_remember, args=(key, "text"), **options)


def chosen_model() -> str | None:
    """The model chosen on the other pages (or the default one), for pages without a picker."""
    names = checkpoint_names()
    name = st.session_state.get("model")
    return name if name in names else default_model(names)


def regime_caption() -> None:
    """The regime line of the chosen model."""
    name = chosen_model()
    if name is not None:
        st.caption(f"Chosen model {name}. {regime(name)}")
