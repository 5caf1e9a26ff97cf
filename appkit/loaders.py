"""Cached loaders: checkpoints, their configs and sweeps, the baselines, the training queue.

Streamlit reruns a page on every widget change; these keep the work behind it to once per input.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from appkit.style import BASELINES, ROOT
from routed.checkpoint import (
    checkpoint_path,
    checkpoints_dir,
    inspect_checkpoint,
    list_checkpoints,
    read_sweep,
)
from routed.config import ModelConfig
from routed.ledger import execution_cost


def reports_dir() -> Path:
    """Where `python -m routed reproduce` wrote its tables (ROUTED_REPORTS_DIR overrides)."""
    return Path(os.environ.get("ROUTED_REPORTS_DIR") or ROOT / "reports" / "reproduction")


def reproduction_folders() -> list[Path]:
    """The reproductions beside the main one: reports/reproduction and reports/reproduction-*."""
    main = reports_dir()
    return [main, *sorted(p for p in main.parent.glob(main.name + "-*") if p.is_dir())]


@st.cache_data(max_entries=64, show_spinner=False)
def _training_status(name: str, folders: tuple[str, ...], stamps: tuple) -> str | None:
    from routed.provenance import training_status

    return training_status(config(name), [Path(f) for f in folders])


def _stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _files_stamp(name: str) -> tuple:
    """Changes whenever any file a checkpoint is loaded from is replaced (not only its config.json)."""
    if _is_pretrained(name):
        return ()  # a fetched model's files are not replaced in place
    folder = checkpoint_path(name)
    files = ("config.json", "model.safetensors", "adapters.safetensors", "tokenizer.json", "sweep.csv")
    return tuple(_stamp(folder / f) for f in files)


@st.cache_data(max_entries=8, show_spinner=False)
def _names(root: str, stamp: int) -> list[str]:
    return list_checkpoints(root)


@st.cache_data(max_entries=256, show_spinner=False)
def _problem(name: str, stamp: tuple) -> str | None:
    from routed.adapters import is_adapter_folder, read_adapter_config

    try:
        if is_adapter_folder(checkpoint_path(name)):
            read_adapter_config(checkpoint_path(name))
            return None
        inspect_checkpoint(checkpoint_path(name))  # the config and the weights' header: no tensor is read
    except (ValueError, OSError) as exc:
        return str(exc)
    return None


def checkpoint_problems() -> dict[str, str]:
    """{name: what is wrong} of the checkpoint folders that cannot be used (each is skipped elsewhere)."""
    names = _names(str(checkpoints_dir()), _stamp(checkpoints_dir()))
    return {n: p for n in names if (p := _problem(n, _files_stamp(n))) is not None}


def checkpoint_names() -> list[str]:
    """Usable checkpoint folders; the listing is re-read whenever the folder or a checkpoint's files change."""
    names = _names(str(checkpoints_dir()), _stamp(checkpoints_dir()))
    return [n for n in names if _problem(n, _files_stamp(n)) is None]


def _is_pretrained(name: str) -> bool:
    return name.startswith("hf:")  # a fetched pretrained model (routed.fetch), not a folder of checkpoints/


def pretrained_names() -> list[str]:
    """hf:NAME of every fetched pretrained model (python -m routed fetch-model), for the model picker."""
    from routed.fetch import registered_models

    return [f"hf:{name}" for name in registered_models()]


@st.cache_data(max_entries=64, show_spinner=False)
def _config(name: str, stamp: int) -> dict:
    from routed.pretrained import read_any_config

    if _is_pretrained(name):
        return checkpoint(name).meta | {"train": checkpoint(name).train_config.to_dict()}
    return read_any_config(checkpoint_path(name))


def _config_stamp(name: str) -> int:
    return 0 if _is_pretrained(name) else _stamp(checkpoint_path(name) / "config.json")


def config(name: str) -> dict:
    """The config.json of a checkpoint or exit-adapters folder (no weights are read; hf:NAME loads the model)."""
    return _config(name, _config_stamp(name))


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _checkpoint(name: str, stamp: tuple):
    from routed.pretrained import load_any

    return load_any(name if _is_pretrained(name) else checkpoint_path(name))


def checkpoint(name: str):
    """A loaded checkpoint (model, tokenizer, configs), kept in memory for a few models.

    An exit-adapters folder whose base model is not fetched raises a ValueError saying how to fetch it.
    """
    return _checkpoint(name, _files_stamp(name))


def alpha_of(cfg: dict) -> float | None:
    """alpha = w1 / (w1 + w_last) of a checkpoint's layer weights; None when neither exit is trained."""
    weights = {int(k): v for k, v in cfg["train"]["layer_weights"].items()}
    w1, w_last = weights.get(1, 0.0), weights.get(cfg["model"]["n_layers"], 0.0)
    return w1 / (w1 + w_last) if w1 + w_last > 0 and cfg["model"]["n_layers"] > 1 else None


def describe(name: str) -> str:
    """One line about a checkpoint: layers, layer weights, stored threshold, corpus (or the pretrained base)."""
    if _is_pretrained(name) or config(name).get("kind") == "exit-adapters":
        return _describe_pretrained(name)
    cfg = config(name)
    weights = ", ".join(f"L{k}: {v:.2g}" for k, v in cfg["train"]["layer_weights"].items() if v > 0)
    t = cfg["train"].get("routing_threshold")
    line = (
        f"{cfg['model']['n_layers']} layer(s), d_model {cfg['model']['d_model']}; loss weights {{{weights}}}; "
        f"threshold {'none' if t is None else t}; corpus {Path(cfg['corpus']['name']).name}"
    )
    # the reports' verdicts change as runs land: key the cache on their convergence tables
    folders = reproduction_folders()
    stamps = (_config_stamp(name), *(_stamp(f / "convergence.csv") for f in folders))
    status = _training_status(name, tuple(map(str, folders)), stamps)
    return f"{line}. {status}" if status else line


def _describe_pretrained(name: str) -> str:
    """A pretrained model or adapters on one, without loading it; says how to fetch a base that is missing."""
    from routed.fetch import KNOWN_MODELS, fetch_command, registered_path

    if _is_pretrained(name):
        known = KNOWN_MODELS.get(name[3:])
        return f"{known.description if known else 'a pretrained causal LM'}; every layer read by the logit lens"
    cfg = config(name)
    base = cfg["base"]["spec"]
    line = (f"exit adapters at layers {', '.join(map(str, cfg['exits']))} of {base} ({cfg['model']['n_layers']} "
            f"layers, d_model {cfg['model']['d_model']}); corpus {Path(cfg['corpus']['name']).name}")
    short = base[3:]
    if short in KNOWN_MODELS and registered_path(short) is None:
        line += f". The base model is not fetched yet: run `{fetch_command(short)}`"
    return line


@st.cache_data(max_entries=32, show_spinner="Evaluating the test split…")
def _curve(name: str, stamp: tuple) -> pd.DataFrame | str:
    from routed.records import records_for_checkpoint
    from routed.sweep import sweep

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


def curve(name: str) -> pd.DataFrame:
    """Routed PPL, Shallow%, Compute%, FLOPs% (and shallow/deep/oracle PPL) over all thresholds."""
    if _is_pretrained(name):
        raise ValueError(f"{name}: a pretrained model without adapters has no corpus to sweep; train exit adapters "
                         f"(python -m routed train-adapters --base {name} ...) or route a text on the Token routing page")
    result = _curve(name, _files_stamp(name))
    if isinstance(result, str):
        raise ValueError(result)
    return result


def row_at(frame: pd.DataFrame, threshold: float) -> dict:
    """The sweep row nearest to `threshold`."""
    return frame.iloc[int((frame["threshold"] - threshold).abs().argmin())].to_dict()


def baseline(name: str) -> dict:
    """A checkpoint without routing: every token takes the last exit (Compute% against 3 layers)."""
    cfg = ModelConfig.from_dict(config(name)["model"])
    first = curve(name).iloc[0]
    ppl = float(first["deep_ppl"])
    return {
        "routed_ppl": ppl,
        "routed_bpb": float(first.get("deep_bpb", float("nan"))),  # NaN: a sweep written before bpb was kept
        "shallow_pct": 0.0,
        **dict(zip(("compute_pct", "flops_pct"), execution_cost(cfg, {cfg.n_layers: 1.0}, "plain"))),
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
    from routed.sweep import pareto_front as front

    return points[front(points[x], points[y])].sort_values(x, ignore_index=True)


def ppl_at(frame: pd.DataFrame, x: str, level: float) -> float:
    """Routed PPL where the curve's x (Compute% or FLOPs%) equals `level`; NaN outside the curve."""
    from routed.sweep import ppl_at as interpolate

    return interpolate(frame, level, x)


@st.cache_resource(max_entries=1)
def job_queue():
    """The process-wide training queue (one worker thread)."""
    from routed.jobs import JobQueue

    return JobQueue()


def refresh_checkpoints() -> None:
    """Forget the cached checkpoint listing (after a run saved a new folder)."""
    _names.clear()
    _problem.clear()


