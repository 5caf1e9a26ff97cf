"""Colours and names shared by every page."""

from pathlib import Path

# The two paths have the same colour on every page (ColorBrewer Dark2); models use the rest of it.
SHALLOW = "#1b9e77"
DEEP = "#d95f02"
MODEL_COLOURS = ["#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#1f78b4", "#6a3d9a"]
BASELINES = {"Standard 1L": "standard_1l", "Standard 3L": "standard_3l"}
NOTES_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
ROOT = Path(__file__).resolve().parent.parent
