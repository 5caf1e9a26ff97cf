"""Cached views of one checkpoint on a text or its splits: routed text, the lens, diagnostics, shallow masks.

Each is threshold-free (or cheap in the threshold), so moving a slider reuses the cached work.
"""

from __future__ import annotations

import streamlit as st

from appkit.loaders import _stamp, checkpoint
from routed.checkpoint import checkpoint_path


@st.cache_data(max_entries=16, show_spinner="Routing the text…")
def routed_text(name: str, fingerprint: str, text: str):
    """(RoutedText, {token id: string}) of `text`; threshold-free, so moving a threshold reuses it."""
    from routed.text import route_text
    from routed.tokenizer import token_strings

    ckpt = checkpoint(name)
    result = route_text(ckpt.model, ckpt.tokenizer, text, None)
    ids = {int(i) for top in (result.records.top_ids or {}).values() for i in top.ravel()}
    ids = sorted(ids | {int(i) for i in result.records.token_id})  # predictions and the tokens themselves
    return result, dict(zip(ids, token_strings(ckpt.tokenizer, ids)))


@st.cache_data(max_entries=16, show_spinner="Reading every layer…")
def lens_text(name: str, fingerprint: str, text: str):
    """(LensText, {token id: string}) of `text`: every exit's predictions; threshold-free."""
    from routed.lens_text import lens_text as look
    from routed.tokenizer import token_strings

    ckpt = checkpoint(name)
    seen = look(ckpt.model, ckpt.tokenizer, text)
    ids = sorted({int(i) for i in seen.records.top_ids.ravel()} | {int(i) for i in seen.records.token_id})
    return seen, dict(zip(ids, token_strings(ckpt.tokenizer, ids)))


@st.cache_data(max_entries=16, show_spinner="Measuring calibration on the validation and test splits…")
def _diagnostics(name: str, stamp: int, compute: bool) -> dict | str | None:
    from routed.diagnostics import diagnostics_for_checkpoint

    try:
        return diagnostics_for_checkpoint(checkpoint(name), compute=compute)
    except (ValueError, OSError) as exc:  # CorpusError and CheckpointError included; remembered, not retried
        return (f"{name}: no diagnostics.json beside it, and its validation and test splits cannot be read: {exc}. "
                f"With the corpus at hand, `python -m routed reliability --checkpoint {checkpoint_path(name)} --write` "
                "computes and stores them.")


def diagnostics(name: str, compute: bool = True) -> dict | None:
    """The checkpoint's calibration, agreement counts, settling depth and exits by position (see
    routed.diagnostics); with compute=False only stored ones (else None), never a pass over the splits."""
    stamp = _stamp(checkpoint_path(name) / "config.json") + _stamp(checkpoint_path(name) / "diagnostics.json")
    result = _diagnostics(name, stamp, compute)
    if isinstance(result, str):
        raise ValueError(result)
    return result


@st.cache_data(max_entries=16, show_spinner="Tabulating every threshold…")
def slider_tables(name: str, fingerprint: str, text: str, measure: str, max_tokens: int):
    """appkit.slider_grid.SliderTables of the routed text: what the Token routing chart needs at every
    slider position, computed once per text and measure."""
    from appkit.slider_grid import slider_tables as tabulate

    result, strings = routed_text(name, fingerprint, text)
    return tabulate(result, strings, measure, max_tokens)
