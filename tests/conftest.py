"""Shared fixtures: a tiny corpus, a folder of tiny trained checkpoints, and a reproduction report folder."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hf_models import hf_world  # noqa: F401  (tiny transformers models and a GGUF file: tests/hf_models.py)

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = dict(vocab_size=300, d_model=32, n_heads=2, context_length=32)
TINY_TRAIN = dict(steps=5, batch_size=4, eval_interval=5, warmup_steps=1)
# name: (layers, layer weights, stored threshold)
TINY_CHECKPOINTS = {
    "standard_1l": (1, {1: 1.0}, None),
    "standard_3l": (3, {3: 1.0}, None),
    "asymmetric_best": (3, {1: 0.7, 3: 0.3}, 0.95),
}


def tiny_text(n_sentences: int = 1500, seed: int = 0) -> str:
    """Deterministic English-like text with repeats, so a tiny model learns something."""
    rng = random.Random(seed)
    subjects = ["The tower", "A river", "The old city", "Our model", "The small cat", "Every token", "The station"]
    verbs = ["is", "was", "becomes", "stays", "looks", "seems"]
    rest = ["very tall", "near the sea", "full of people", "quiet at night", "older than the bridge", "easy to predict"]
    lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(rest)}." for _ in range(n_sentences)]
    return "\n".join(" ".join(lines[i : i + 4]) for i in range(0, len(lines), 4)) + "\n"


REPORT_TABLES = {
    "final_ranking.csv": "model,notes_ppl,notes_compute_pct,notes_vs_3l,ppl_mean,ppl_std,compute_pct_mean,shallow_pct_mean,"
    "flops_pct_mean,shallow_ppl_mean,deep_ppl_mean,vs_3l_pct,n_seeds\n"
    "asymmetric_best,22.95,65.0,34.2,101.5,1.2,66.0,51.0,80.1,120.0,98.0,3.1,3\n"
    "standard_3l,34.86,100.0,0.0,104.7,0.9,100.0,0.0,100.0,,104.7,0.0,3\n",
    "verdicts.csv": 'claim,verdict,evidence\n"Routing beats Standard 3L",not reproduced,"routed PPL 101.5 vs 104.7"\n',
}


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> SimpleNamespace:
    """Train the tiny checkpoints once per session (a few seconds) and write a sweep.csv for one of them."""
    from routed.checkpoint import load_checkpoint, save_checkpoint, write_sweep
    from routed.config import ModelConfig, TrainConfig
    from routed.data import load_corpus
    from routed.records import records_for_checkpoint
    from routed.sweep import sweep
    from routed.tokenizer import train_tokenizer
    from routed.train import train

    root = tmp_path_factory.mktemp("routed")
    corpus_path = root / "tiny.txt"
    corpus_path.write_text(tiny_text(), encoding="utf-8")
    corpus = load_corpus(str(corpus_path))
    tokenizer = train_tokenizer(corpus.train, TINY_MODEL["vocab_size"])
    checkpoints = root / "checkpoints"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROUTED_CACHE_DIR", str(root / "cache"))
        for name, (layers, weights, threshold) in TINY_CHECKPOINTS.items():
            result = train(
                ModelConfig(n_layers=layers, **TINY_MODEL),
                TrainConfig(layer_weights=weights, routing_threshold=threshold, **TINY_TRAIN),
                corpus, tokenizer=tokenizer,
            )
            save_checkpoint(checkpoints / name, result.model, tokenizer, result.train_config,
                            result.corpus_name, result.corpus_fingerprint, result.history)
        records = records_for_checkpoint(load_checkpoint(checkpoints / "asymmetric_best"), "test")
        write_sweep(checkpoints / "asymmetric_best", sweep(records, np.linspace(0, 1, 1001)))
    reports = root / "reports"
    reports.mkdir()
    for file, text in REPORT_TABLES.items():
        (reports / file).write_text(text, encoding="utf-8")
    (root / "reports.md").write_text("# Reproduction\n\nTiny report for tests.\n", encoding="utf-8")
    return SimpleNamespace(root=root, checkpoints=checkpoints, corpus=corpus_path, reports=reports)


@pytest.fixture
def app_env(tiny_world, tmp_path, monkeypatch) -> SimpleNamespace:
    """A private copy of the tiny checkpoints, env vars pointing at it, and empty Streamlit caches."""
    import streamlit as st

    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(tiny_world.checkpoints, checkpoints)
    monkeypatch.setenv("ROUTED_CHECKPOINTS_DIR", str(checkpoints))
    monkeypatch.setenv("ROUTED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ROUTED_REPORTS_DIR", str(tiny_world.reports))
    monkeypatch.delenv("ROUTED_DATA_DIR", raising=False)
    monkeypatch.chdir(ROOT)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield SimpleNamespace(checkpoints=checkpoints, reports=tiny_world.reports, corpus=tiny_world.corpus, tmp=tmp_path)
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def shipped_env(monkeypatch, tmp_path):
    """The app as a fresh clone shows it: the shipped checkpoints and the committed reproduction report."""
    import streamlit as st

    monkeypatch.setenv("ROUTED_CHECKPOINTS_DIR", str(ROOT / "checkpoints"))
    monkeypatch.setenv("ROUTED_REPORTS_DIR", str(ROOT / "reports" / "reproduction"))
    monkeypatch.setenv("ROUTED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


# =============================================================================================
# routed core: fixtures for tests/test_{config,model,data,train,checkpoint,evaluate,cli}.py
# (builders they share live in tests/helpers.py)
# =============================================================================================


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache folders and never reads local data copies or the network."""
    import sys

    import torch

    import routed.train

    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ROUTED_CACHE_DIR", str(cache / "routed"))
    monkeypatch.delenv("ROUTED_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HOME", str(cache / "huggingface"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "huggingface" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # `datasets` reads its cache location once, at import: point an already imported copy here too.
    if "datasets" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", cache / "huggingface" / "datasets")
    # The test machine is small and shared: one intra-op thread is faster and steadier for tiny models.
    monkeypatch.setattr(routed.train, "default_threads", lambda: 1)
    torch.set_num_threads(1)
    return cache


@pytest.fixture(scope="session")
def tiny_run_corpus():
    """The tiny repetitive corpus of `tiny_run` (tests/helpers.py)."""
    from helpers import tiny_corpus

    return tiny_corpus()


@pytest.fixture(scope="session")
def tiny_run(tiny_run_corpus):
    """A TrainResult: the tiny model trained 40 steps on `tiny_run_corpus` (shared: treat as read-only)."""
    import torch
    from helpers import tiny_model_config, tiny_train_config

    import routed.train

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(routed.train, "default_threads", lambda: 1)
        return routed.train.train(tiny_model_config(), tiny_train_config(), tiny_run_corpus)
