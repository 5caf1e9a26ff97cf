"""Shared builders for the routed core tests: tiny configs, tiny corpora, tiny trained models."""

from __future__ import annotations

import random
from pathlib import Path

from routed.config import ModelConfig, TrainConfig
from routed.data import Corpus, split_by_position

# Small enough that a 40-step run takes well under a second on one core.
TINY_MODEL = dict(vocab_size=300, n_layers=3, d_model=32, n_heads=2, context_length=16)
TINY_TRAIN = dict(
    steps=40,
    batch_size=8,
    eval_interval=10,
    eval_tokens=4096,
    warmup_steps=5,
    patience=None,
    layer_weights={1: 0.7, 2: 0.0, 3: 0.3},
)

# The CLI flags that give the same tiny model and run.
TINY_CLI_FLAGS = [
    "--vocab-size", "300", "--n-layers", "3", "--d-model", "32", "--n-heads", "2",
    "--context-length", "16", "--batch-size", "8", "--steps", "20", "--eval-interval", "10",
    "--warmup-steps", "5", "--quiet",
]  # fmt: skip


def tiny_model_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY_MODEL, **overrides})


def tiny_train_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY_TRAIN, **overrides})


def repetitive_text(lines: int = 300, seed: int = 0) -> str:
    """A few KB of simple, highly predictable sentences (a tiny model learns them in tens of steps)."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the bird", "my friend", "the teacher"]
    verbs = ["sees", "likes", "finds", "follows", "calls"]
    objects = ["the ball", "a tree", "the house", "some water", "the garden"]
    rows = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(lines)]
    return "\n".join(rows) + "\n"


def tiny_corpus(lines: int = 300, seed: int = 0) -> Corpus:
    return split_by_position(repetitive_text(lines, seed), name="tiny")


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
