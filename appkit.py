"""Shared pieces of the Streamlit app: colours, cached loaders, the model picker, the token heatmap.

Pages import this module; it lives outside pages/ because Streamlit treats every file there as a page.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from routed.checkpoint import (
    checkpoint_path,
    checkpoints_dir,
    list_checkpoints,
    load_checkpoint,
    read_config,
    read_sweep,
)
from routed.config import ModelConfig
from routed.routing import compute_pct, exits_early, flops_pct

# The two paths have the same colour on every page (ColorBrewer Dark2); models use the rest of it.
SHALLOW = "#1b9e77"
DEEP = "#d95f02"
MODEL_COLOURS = ["#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#1f78b4", "#6a3d9a"]
BASELINES = {"Standard 1L": "standard_1l", "Standard 3L": "standard_3l"}
NOTES_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
ROOT = Path(__file__).resolve().parent


def _leave_pages_folder_mode() -> None:
    """Run app.py's st.navigation even when a fresh server's first visitor opens a page's own URL.

    Until some run has called st.navigation, Streamlit treats a pages/ folder as the old automatic
    multipage layout and would run pages/<page>.py alone (no app.py, a different sidebar). Every page
    imports this module, so that first run is redirected: the flag is cleared and the run restarts.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without this internal: nothing to redirect
        return
    if getattr(PagesManager, "uses_pages_directory", False) and st.runtime.exists():
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_pages_folder_mode()


def reports_dir() -> Path:
    """Where `python -m routed reproduce` wrote its tables (ROUTED_REPORTS_DIR overrides)."""
    return Path(os.environ.get("ROUTED_REPORTS_DIR") or ROOT / "reports" / "reproduction")


# --------------------------------------------------------------------------------------------
# Checkpoints


def _stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_data(max_entries=8, show_spinner=False)
def _names(root: str, stamp: int) -> list[str]:
    return list_checkpoints(root)


def checkpoint_names() -> list[str]:
    """Complete checkpoint folders; the listing is re-read whenever the folder changes."""
    root = checkpoints_dir()
    return _names(str(root), _stamp(root))


@st.cache_data(max_entries=64, show_spinner=False)
def _config(name: str, stamp: int) -> dict:
    return read_config(checkpoint_path(name))


def config(name: str) -> dict:
    """The config.json of a checkpoint (no weights are read)."""
    return _config(name, _stamp(checkpoint_path(name) / "config.json"))


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _checkpoint(name: str, stamp: int):
    return load_checkpoint(checkpoint_path(name))


def checkpoint(name: str):
    """A loaded checkpoint (model, tokenizer, configs), kept in memory for a few models."""
    return _checkpoint(name, _stamp(checkpoint_path(name) / "config.json"))


def alpha_of(cfg: dict) -> float | None:
    """alpha = w1 / (w1 + w_last) of a checkpoint's layer weights; None when neither exit is trained."""
    weights = {int(k): v for k, v in cfg["train"]["layer_weights"].items()}
    w1, w_last = weights.get(1, 0.0), weights.get(cfg["model"]["n_layers"], 0.0)
    return w1 / (w1 + w_last) if w1 + w_last > 0 and cfg["model"]["n_layers"] > 1 else None


def describe(name: str) -> str:
    """One line about a checkpoint: layers, layer weights, stored threshold, corpus."""
    cfg = config(name)
    weights = ", ".join(f"L{k}: {v:.2g}" for k, v in cfg["train"]["layer_weights"].items() if v > 0)
    t = cfg["train"].get("routing_threshold")
    return (
        f"{cfg['model']['n_layers']} layer(s), d_model {cfg['model']['d_model']}; loss weights {{{weights}}}; "
        f"threshold {'none' if t is None else t}; corpus {Path(cfg['corpus']['name']).name}"
    )


def model_picker(key: str, label: str = "Model", state: str = "model", optional: bool = False) -> str | None:
    """A checkpoint selectbox whose choice is kept across pages in st.session_state[state]."""
    names = checkpoint_names()
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


def threshold_slider(key: str, label: str = "Threshold (confidence ≥ threshold → shallow)") -> float:
    """The routing threshold, kept across pages in st.session_state['threshold']."""
    value = st.slider(label, 0.0, 1.0, st.session_state.get("threshold", 0.95), 0.01, key=key)
    st.session_state["threshold"] = value
    return value


# --------------------------------------------------------------------------------------------
# Threshold sweeps: sweep.csv when shipped, else computed from the test split's records


@st.cache_data(max_entries=32, show_spinner="Evaluating the test split…")
def _curve(name: str, stamp: int) -> pd.DataFrame | str:
    from routed.evaluate import records_for_checkpoint, sweep

    try:
        config(name)  # a checkpoint this version cannot read shows no curve either
        rows = read_sweep(checkpoint_path(name))
    except (ValueError, OSError) as exc:
        return f"{name}: {exc}"
    if rows is None:
        try:
            rows = sweep(records_for_checkpoint(checkpoint(name), "test"), np.linspace(0.0, 1.0, 1001))
        except (ValueError, OSError) as exc:  # remembered, so an offline corpus is not retried every rerun
            return f"{name}: no sweep.csv, and its test split cannot be evaluated: {exc}"
    return pd.DataFrame(rows).sort_values("threshold", ignore_index=True)


def at_threshold(records, threshold: float, measure: str) -> dict:
    """The sweep numbers of records at one threshold, as floats."""
    from routed.evaluate import sweep

    return {k: float(v[0]) for k, v in sweep(records, [threshold], measure).items()}


def curve(name: str) -> pd.DataFrame:
    """Routed PPL, Shallow%, Compute%, FLOPs% (and shallow/deep/oracle PPL) over all thresholds."""
    result = _curve(name, _stamp(checkpoint_path(name) / "config.json"))
    if isinstance(result, str):
        raise ValueError(result)
    return result


def row_at(frame: pd.DataFrame, threshold: float) -> dict:
    """The sweep row nearest to `threshold`."""
    return frame.iloc[int((frame["threshold"] - threshold).abs().argmin())].to_dict()


def baseline(name: str) -> dict:
    """A checkpoint without routing: every token takes the last exit (Compute% against 3 layers)."""
    cfg = ModelConfig.from_dict(config(name)["model"])
    ppl = float(curve(name)["deep_ppl"].iloc[0])
    return {
        "routed_ppl": ppl,
        "shallow_pct": 0.0,
        "compute_pct": compute_pct(0.0, cfg.n_layers, reference_layers=3),
        "flops_pct": flops_pct(0.0, cfg, routed=False),
        "deep_ppl": ppl,
    }


def corpus_of(name: str) -> str:
    """The corpus a checkpoint was trained and evaluated on (PPLs compare only within one corpus and tokenizer)."""
    cfg = config(name)
    return f"{cfg['corpus']['name']}, vocabulary {cfg['model']['vocab_size']}"


def _corpus_or_none(name: str) -> str | None:
    try:
        return corpus_of(name)
    except ValueError:  # unreadable config: not a usable baseline
        return None


def baseline_names(corpus: str | None = None) -> dict[str, str]:
    """{label: checkpoint} of Standard 1L/3L: named standard_1l or <prefix>-standard_1l (likewise 3L).

    With `corpus`, those trained on it come first; otherwise the one named exactly, if any.
    """
    names = checkpoint_names()
    found = {}
    for label, base in BASELINES.items():
        candidates = [n for n in names if n == base or n.endswith("-" + base)]
        same = [n for n in candidates if corpus is not None and _corpus_or_none(n) == corpus]
        choice = same[:1] or [n for n in candidates if n == base]
        if choice:
            found[label] = choice[0]
    return found


def baselines(corpus: str | None = None) -> dict[str, dict]:
    """The Standard 1L and 3L points (see baseline_names), for those whose checkpoints exist."""
    return {label: baseline(name) for label, name in baseline_names(corpus).items()}


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The points no other point beats on both x and y, by ascending x."""
    from routed.evaluate import pareto_front as front

    return points[front(points[x], points[y])].sort_values(x, ignore_index=True)


def ppl_at(frame: pd.DataFrame, x: str, level: float) -> float:
    """Routed PPL where the curve's x (Compute% or FLOPs%) equals `level`; NaN outside the curve."""
    from routed.evaluate import ppl_at as interpolate

    return interpolate(frame, level, x)


# --------------------------------------------------------------------------------------------
# Token routing: model output cached independently of the threshold


@st.cache_data(max_entries=16, show_spinner="Routing the text…")
def routed_text(name: str, fingerprint: str, text: str):
    """(RoutedText, {token id: string}) of `text`; threshold-free, so moving a threshold reuses it."""
    from routed.data import token_strings
    from routed.evaluate import route_text

    ckpt = checkpoint(name)
    result = route_text(ckpt.model, ckpt.tokenizer, text, None)
    ids = sorted({int(i) for top in (result.records.top_ids or {}).values() for i in top.ravel()})
    return result, dict(zip(ids, token_strings(ckpt.tokenizer, ids)))


def shallow_mask(records, threshold: float, measure: str) -> np.ndarray:
    import torch

    return exits_early(torch.from_numpy(records.confidence[measure]), threshold).numpy()


TOKEN_CSS = """<style>
.routed-text{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9rem;line-height:2;word-break:break-word}
.routed-text .tok{position:relative;border-radius:3px;cursor:default}
.routed-text .tok .tip{visibility:hidden;position:absolute;left:0;top:1.7em;z-index:1000;white-space:pre;
 background:#262730;color:#fafafa;font-size:.75rem;line-height:1.35;padding:6px 8px;border-radius:4px;box-shadow:0 2px 6px #0005}
.routed-text .tok:hover .tip{visibility:visible}
.routed-legend span{padding:1px 6px;border-radius:3px;margin-right:6px}
</style>"""


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:.2f})"


def _show(token: str) -> str:
    return repr(token)  # quoted, so spaces and newlines are visible


# Control characters (but tab, newline, CR) are invisible or dropped in HTML, and bidi overrides
# would reorder the text after them: the heatmap shows them as escapes, e.g. \x00 or \u202e.
_HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _text(token: str) -> str:
    """A token as HTML text: escaped, its hidden characters made visible."""
    return html.escape(_HIDDEN.sub(lambda m: repr(m.group())[1:-1], token))


HEATMAP_TOKENS = 5_000  # tokens drawn in a heatmap; more make a page of tens of MB


def token_html(
    result, strings: dict, shallow: np.ndarray, threshold: float, measure: str, max_tokens: int = HEATMAP_TOKENS
) -> str:
    """The text as escaped HTML spans: colour = path, shade = confidence, tooltip = the numbers.

    Only the first `max_tokens` tokens are drawn (say so beside it when len(result.tokens) is larger).
    """
    rec = result.records
    conf = rec.confidence[measure]
    exits = [(rec.early_exit, "shallow"), (rec.final_exit, "deep")]
    spans = [
        f'<span class="tok ctx">{_text(result.tokens[0])}<span class="tip">first token: context only</span></span>'
    ]
    for i, token in enumerate(result.tokens[1:max_tokens]):
        path = "shallow" if shallow[i] else "deep"
        lines = [f"{_show(token)!s}: {path} path, {measure} {conf[i]:.3f} {'≥' if shallow[i] else '<'} {threshold:.2f}"]
        for layer, label in exits:
            lines.append(f"exit {layer} ({label}): NLL {rec.nll[layer][i]:.2f}")
            if rec.top_ids is not None:
                tops = zip(rec.top_ids[layer][i], rec.top_probs[layer][i])
                lines.append("   " + "  ".join(f"{_show(strings.get(int(t), '?'))} {p:.2f}" for t, p in tops))
        colour = _rgba(SHALLOW if shallow[i] else DEEP, 0.15 + 0.85 * float(conf[i]))
        tip = html.escape("\n".join(lines))
        spans.append(
            f'<span class="tok {path}" style="background:{colour}">{_text(token)}<span class="tip">{tip}</span></span>'
        )
    legend = (
        f'<div class="routed-legend"><span style="background:{_rgba(SHALLOW, 0.8)}">shallow (exit after layer 1)</span>'
        f'<span style="background:{_rgba(DEEP, 0.8)}">deep (all layers)</span> darker = more confident; hover a token</div>'
    )
    return TOKEN_CSS + legend + '<div class="routed-text">' + "".join(spans) + "</div>"


def generated_html(tokens, first_exit: int) -> str:
    """Generated tokens as escaped HTML spans in the path colours (shade = first-exit confidence)."""
    spans = []
    for t in tokens:
        colour = _rgba(SHALLOW if t.exit_layer == first_exit else DEEP, 0.15 + 0.85 * t.confidence)
        tip = html.escape(f"{_show(t.text)}: exit at layer {t.exit_layer}, confidence {t.confidence:.3f}")
        spans.append(f'<span class="tok" style="background:{colour}">{_text(t.text)}<span class="tip">{tip}</span></span>')
    return TOKEN_CSS + '<div class="routed-text">' + "".join(spans) + "</div>"


# --------------------------------------------------------------------------------------------
# Training jobs and corpora


@st.cache_resource(max_entries=1)
def job_queue():
    """The process-wide training queue (one worker thread)."""
    from routed.jobs import JobQueue

    return JobQueue()


MAX_UPLOAD_MB = 20  # as server.maxUploadSize in .streamlit/config.toml


def save_upload(filename: str, data: bytes) -> str:
    """Check an uploaded corpus (size, UTF-8) and store it in the cache; its path names the corpus."""
    import hashlib

    from routed.data import cache_dir

    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise ValueError(f"upload: {filename} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"upload: {filename} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if "\x00" in text:  # valid UTF-8, but no text file holds NUL bytes
        raise ValueError(f"upload: {filename} looks like a binary file (it holds NUL bytes), not text")
    if not text.strip():
        raise ValueError(f"upload: {filename} holds no text")
    stem = re.sub(r"[^\w.-]+", "_", Path(filename).stem).strip("._") or "upload"
    path = cache_dir() / "uploads" / hashlib.sha256(data).hexdigest()[:16] / f"{stem}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Users uploading the same file share this path: write a private copy and rename it into place, so a
    # run already reading the file never sees it truncated.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    return str(path)


def corpus_options() -> dict[str, str]:
    """{label: corpus name} of the built-in corpora; those that need the network say so."""
    from routed.data import corpus_available

    local = {name: corpus_available(name) for name in ("wikitext-2", "tinyshakespeare")}
    options = {"python-docs (built in)": "python-docs"}
    for name, ok in local.items():
        options[name if ok else f"{name} (needs network or ROUTED_DATA_DIR)"] = name
    options["upload a .txt file"] = "upload"
    return options


def refresh_checkpoints() -> None:
    """Forget the cached checkpoint listing (after a run saved a new folder)."""
    _names.clear()


def history_chart(history: list[dict], n_layers: int):
    """Validation PPL per exit against the training step; the first and last exits in the path colours."""
    import altair as alt

    rows = [
        {"step": h["step"], "exit": f"exit {k}", "validation PPL": v} for h in history for k, v in h["val_ppl"].items()
    ]
    exits = [f"exit {k}" for k in range(1, n_layers + 1)]
    colours = [SHALLOW if k == 1 else DEEP if k == n_layers else "#999999" for k in range(1, n_layers + 1)]
    return (
        alt.Chart(pd.DataFrame(rows))
        .mark_line(point=True)
        .encode(
            x="step:Q",
            y=alt.Y("validation PPL:Q", scale=alt.Scale(zero=False, type="log")),
            color=alt.Color("exit:N", scale=alt.Scale(domain=exits, range=colours)),
            tooltip=["step", "exit", alt.Tooltip("validation PPL:Q", format=".2f")],
        )
        .properties(height=220)
    )


def confidence_histogram(confidence: np.ndarray, shallow: np.ndarray, threshold: float, measure: str):
    """Histogram of the early exit's confidences, stacked by path, with the threshold drawn in."""
    import altair as alt

    frame = pd.DataFrame({measure: confidence, "path": np.where(shallow, "shallow", "deep")})
    bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(f"{measure}:Q", bin=alt.Bin(extent=[0, 1], step=0.025), title=f"confidence ({measure})"),
            y=alt.Y("count():Q", title="tokens"),
            color=alt.Color("path:N", scale=alt.Scale(domain=["shallow", "deep"], range=[SHALLOW, DEEP])),
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"threshold": [threshold]}))
        .mark_rule(color="black", strokeDash=[4, 3])
        .encode(x="threshold:Q")
    )
    return (bars + rule).properties(height=200)


# --------------------------------------------------------------------------------------------
# PPL against compute

AXES = {
    "compute_pct": "Compute% (layers per token vs 3 layers)",
    "flops_pct": "FLOPs% (layers and output heads vs a 3-layer model)",
}


def _thin(curve: pd.DataFrame, max_points: int = 200) -> pd.DataFrame:
    step = -(-len(curve) // max_points)
    return curve if step <= 1 else pd.concat([curve.iloc[::step], curve.iloc[[-1]]]).drop_duplicates()


def compute_chart(curves: dict[str, pd.DataFrame], x: str, threshold: float, points: dict[str, dict]):
    """Routed PPL against Compute%/FLOPs% per checkpoint: curve, point at `threshold`, oracle bound,
    baseline points, and the Pareto front over everything drawn."""
    import altair as alt

    models = list(curves)
    colour = alt.Color("model:N", scale=alt.Scale(domain=models, range=MODEL_COLOURS), title="checkpoint")
    lines = pd.concat([f.assign(model=m) for m, f in curves.items()], ignore_index=True)
    front = pareto_front(lines[[x, "routed_ppl"]], x, "routed_ppl")  # from every threshold, before thinning
    # Draw at most ~200 points per curve: enough for the eye, and under Altair's 5,000-row limit for many models.
    lines = pd.concat([_thin(f).assign(model=m) for m, f in curves.items()], ignore_index=True)
    marks = pd.DataFrame([{**row_at(f, threshold), "model": m} for m, f in curves.items()])
    oracle = pd.DataFrame(
        [
            {"model": m, x: f[x].agg(e), "routed_ppl": f["oracle_ppl"].iloc[0]}
            for m, f in curves.items()
            for e in ("min", "max")
        ]
    )
    base = pd.DataFrame([{**p, "model": label} for label, p in points.items()], columns=[x, "routed_ppl", "model"])
    front = pareto_front(pd.concat([front, base[[x, "routed_ppl"]]]), x, "routed_ppl")
    values = pd.concat([lines["routed_ppl"], base["routed_ppl"], oracle["routed_ppl"]])
    pad = 0.03 * (values.max() - values.min() or values.max())
    domain = [float(values.min() - pad), float(values.max() + pad)]  # fit the data: differences are small
    y = alt.Y("routed_ppl:Q", title="routed PPL (test)", scale=alt.Scale(zero=False, nice=False, domain=domain))
    xe = alt.X(f"{x}:Q", title=AXES[x], scale=alt.Scale(zero=False))
    tip = [
        "model",
        alt.Tooltip("threshold:Q", format=".3f"),
        alt.Tooltip("routed_ppl:Q", format=".2f"),
        alt.Tooltip("shallow_pct:Q", format=".1f"),
        alt.Tooltip(f"{x}:Q", format=".1f"),
    ]
    layers = [
        alt.Chart(front).mark_line(color="#bbbbbb", strokeWidth=7, interpolate="step-after", opacity=0.7).encode(xe, y),
        alt.Chart(lines).mark_line().encode(xe, y, colour, order="threshold:Q", tooltip=tip),
        alt.Chart(oracle)
        .mark_line(strokeDash=[5, 4])
        .encode(xe, y, colour, tooltip=["model", alt.Tooltip("routed_ppl:Q", title="oracle PPL", format=".2f")]),
        alt.Chart(marks).mark_point(filled=True, size=90, stroke="black").encode(xe, y, colour, tooltip=tip),
    ]
    if len(base):
        layers += [
            alt.Chart(base)
            .mark_point(shape="diamond", size=120, filled=True, color="black")
            .encode(xe, y, tooltip=["model", "routed_ppl"]),
            alt.Chart(base).mark_text(dx=8, align="left", fontSize=11).encode(xe, y, text="model"),
        ]
    return alt.layer(*layers).properties(height=420)


def alpha_chart(rows: pd.DataFrame, x_title: str):
    """Routed PPL at one compute level against alpha, one point per checkpoint."""
    import altair as alt

    base = alt.Chart(rows).encode(
        alt.X("alpha:Q", scale=alt.Scale(domain=[0, 1])),
        alt.Y(
            "routed_ppl:Q", title=f"routed PPL at {x_title}", scale=alt.Scale(zero=False), axis=alt.Axis(format=".1f")
        ),
    )
    return (
        base.mark_point(color="#7570b3", filled=True, size=80)
        + base.mark_text(dx=7, align="left", fontSize=10).encode(text="model")
    ).properties(height=280)
