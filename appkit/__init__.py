"""Shared pieces of the Streamlit app: colours, cached loaders, widgets, the token heatmap, charts.

Pages import this package; it lives outside pages/ because Streamlit treats every file there as a page.
"""

from __future__ import annotations

import streamlit as st


def _leave_pages_folder_mode() -> None:
    """Run app.py's st.navigation even when a fresh server's first visitor opens a page's own URL.

    Until some run has called st.navigation, Streamlit treats a pages/ folder as the old automatic
    multipage layout and would run pages/<page>.py alone (no app.py, a different sidebar). Every page
    imports this package, so that first run is redirected: the flag is cleared and the run restarts.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without this internal: nothing to redirect
        return
    if getattr(PagesManager, "uses_pages_directory", False) and st.runtime.exists():
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_pages_folder_mode()

from appkit.calibration_charts import ece_table, guarantee_figure, reliability_figure  # noqa: E402
from appkit.charts import AXES, alpha_chart, alpha_surface, compute_chart, confidence_histogram, history_chart  # noqa: E402
from appkit.defaults import default_model, default_text, default_threshold, regime  # noqa: E402
from appkit.lens_charts import COLOUR_BY, LENS_TOKENS, exit_rate_by_position, lens_heatmap, settling_chart  # noqa: E402
from appkit.loaders import (  # noqa: E402
    alpha_of,
    at_threshold,
    baseline,
    baseline_names,
    baselines,
    checkpoint,
    checkpoint_names,
    config,
    corpus_of,
    curve,
    describe,
    diagnostics,
    job_queue,
    lens_text,
    pareto_front,
    ppl_at,
    refresh_checkpoints,
    reports_dir,
    routed_text,
    row_at,
    shallow_mask,
)
from appkit.style import BASELINES, DEEP, MODEL_COLOURS, NOTES_THRESHOLDS, ROOT, SHALLOW  # noqa: E402
from appkit.tokens import HEATMAP_TOKENS, generated_html, token_html  # noqa: E402
from appkit.uploads import MAX_UPLOAD_MB, corpus_options, save_upload  # noqa: E402
from appkit.widgets import model_picker, regime_caption, text_area, threshold_slider, use_threshold  # noqa: E402

__all__ = [
    "AXES", "BASELINES", "COLOUR_BY", "DEEP", "HEATMAP_TOKENS", "LENS_TOKENS", "MAX_UPLOAD_MB", "MODEL_COLOURS",
    "NOTES_THRESHOLDS", "ROOT", "SHALLOW", "alpha_chart", "alpha_of", "alpha_surface", "at_threshold", "baseline",
    "baseline_names", "baselines", "checkpoint", "checkpoint_names", "compute_chart", "config", "confidence_histogram",
    "corpus_of", "corpus_options", "curve", "default_model", "default_text", "default_threshold", "describe",
    "diagnostics", "ece_table", "exit_rate_by_position", "generated_html", "guarantee_figure", "history_chart",
    "job_queue", "lens_heatmap", "lens_text", "model_picker", "pareto_front", "ppl_at", "refresh_checkpoints",
    "regime", "regime_caption", "reliability_figure", "reports_dir", "routed_text", "row_at", "save_upload", "settling_chart",
    "shallow_mask", "text_area", "threshold_slider", "token_html", "use_threshold",
]
