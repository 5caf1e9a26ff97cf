"""Shared pieces of the Streamlit app: colours, cached loaders, widgets, the token heatmap, charts.

Pages import this package; it lives outside pages/ because Streamlit treats every file there as a page.
"""

from __future__ import annotations

import streamlit as st

from appkit.calibration_charts import ece_table, guarantee_figure, reliability_figure
from appkit.charts import AXES, alpha_chart, alpha_surface, compute_chart, history_chart
from appkit.defaults import comparable_models, default_model, default_text, default_threshold, regime
from appkit.generation import MODES as GENERATE_MODES
from appkit.generation import exits_of, generate_modes, speculative_html, speed_table
from appkit.headline import headline_chart, headline_frame, rows_at
from appkit.lens_charts import COLOUR_BY, LENS_TOKENS, lens_heatmap, settling_chart
from appkit.lens_slider import lens_slider_chart, position_table, summary_table
from appkit.loaders import (
    alpha_of,
    baseline,
    baseline_names,
    baselines,
    checkpoint,
    checkpoint_names,
    checkpoint_problems,
    config,
    corpus_of,
    curve,
    describe,
    job_queue,
    pareto_front,
    ppl_at,
    refresh_checkpoints,
    reports_dir,
    reproduction_folders,
    row_at,
)
from appkit.routing_chart import routing_chart
from appkit.slider_grid import exit_index
from appkit.style import BASELINES, DEEP, MODEL_COLOURS, NOTES_THRESHOLDS, ROOT, SHALLOW
from appkit.tokens import generated_html
from appkit.uploads import MAX_UPLOAD_MB, corpus_options, save_upload
from appkit.views import diagnostics, lens_text, routed_text, slider_tables
from appkit.widgets import (
    chosen_model,
    model_picker,
    regime_caption,
    show_problems,
    start_threshold,
    text_area,
    threshold_slider,
    use_threshold,
)

__all__ = [
    "AXES", "BASELINES", "COLOUR_BY", "DEEP", "GENERATE_MODES", "LENS_TOKENS", "MAX_UPLOAD_MB",
    "MODEL_COLOURS", "NOTES_THRESHOLDS", "ROOT", "SHALLOW", "alpha_chart", "alpha_of", "alpha_surface",
    "baseline", "baseline_names", "baselines", "checkpoint", "checkpoint_names",
    "checkpoint_problems", "chosen_model", "compute_chart", "config", "corpus_of", "corpus_options", "curve",
    "comparable_models", "default_model", "default_text", "default_threshold", "describe", "diagnostics", "ece_table",
    "exit_index", "exits_of", "generate_modes", "generated_html", "guarantee_figure", "headline_chart", "headline_frame", "history_chart",
    "job_queue", "lens_heatmap", "lens_slider_chart", "lens_text", "model_picker", "pareto_front", "position_table", "ppl_at", "refresh_checkpoints",
    "regime", "regime_caption", "reliability_figure", "reports_dir", "reproduction_folders", "routed_text", "routing_chart", "row_at", "rows_at", "save_upload",
    "settling_chart", "show_problems", "slider_tables", "speculative_html", "speed_table", "start_threshold", "summary_table", "text_area",
    "threshold_slider", "use_threshold",
]


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


# Last, once every name above is bound: a run that restarts here leaves a complete module behind, so
# a concurrent first visitor whose page imported this package meanwhile never sees it half-built.
_leave_pages_folder_mode()
