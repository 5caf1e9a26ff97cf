"""What a first visit shows: a model and a threshold where tokens take both paths, a text in the model's
style, and one line on each page saying which regime the chosen model is in.

Everything is computed from the checkpoints' own sweeps, so retrained checkpoints keep working.
"""

from __future__ import annotations

from pathlib import Path

from appkit.loaders import config, curve, row_at

PREFERRED_PRESET = "asymmetric_best"  # the notes' best configuration
CONFIDENT = 0.5  # a regime is read off the share of test tokens whose max softmax reaches this
BUSY_SHARE = 30.0  # percent of such tokens above which routing has real work to do
SHALLOW_TARGET = 50.0  # the default threshold sends about this share of test tokens to the shallow path

TEXTS = {
    "tinystories": (
        "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog, Max. "
        "One day, Lily saw a big red ball under a tree. She ran to the ball and picked it up. \"Look, Max!\" she "
        "said. \"We can play with it!\" Max wagged his tail and barked. They played all day until the sun went "
        "down. Then Lily and Max went home, happy and tired."
    ),
    # WikiText-2 style: spaced punctuation, @-@ for hyphens.
    "wikitext-2": (
        "The town is located on the east bank of the river , about 40 miles ( 64 km ) north of the capital . "
        "It was founded in the 12th century and became an important centre of trade during the following years . "
        "In 1920 , the population of the town was 5 @,@ 000 , and it was connected to the railway network in the "
        "same year . The church of St. Mary , built in the Gothic style , is one of the oldest buildings in the region ."
    ),
    "": "Return the number of items in a list. If the list is empty, raise a ValueError with a clear message.",
}


def corpus_key(name: str) -> str:
    """The corpus a checkpoint was trained on, as a key of TEXTS ("" for any other)."""
    corpus = Path(str(config(name)["corpus"]["name"])).name
    return corpus if corpus in TEXTS else ""


def default_text(name: str | None) -> str:
    """A text in the style of the checkpoint's corpus (so its model routes it as it routes its test split)."""
    if name is None:
        return TEXTS[""]
    try:
        return TEXTS[corpus_key(name)]
    except (ValueError, OSError, KeyError, TypeError):  # a pretrained model has no training corpus
        return TEXTS[""]


def share_confident(name: str) -> float | None:
    """Percent of the checkpoint's test tokens whose early-exit max softmax reaches CONFIDENT; None without a sweep."""
    try:
        return float(row_at(curve(name), CONFIDENT)["shallow_pct"])
    except (ValueError, OSError, KeyError):
        return None


def default_model(names: list[str]) -> str | None:
    """The preferred preset in the most confident regime (most tokens above CONFIDENT), else the first name."""
    candidates = [n for n in names if n == PREFERRED_PRESET or n.endswith("-" + PREFERRED_PRESET)]
    scored = [(share, n) for n in candidates if (share := share_confident(n)) is not None]
    if scored:
        return max(scored)[1]
    return candidates[0] if candidates else (names[0] if names else None)


def _shape(name: str) -> tuple | None:
    try:
        model = config(name)["model"]
        return model["n_layers"], model["d_model"], model["n_heads"], model["context_length"]
    except (ValueError, OSError, KeyError, TypeError):
        return None


def comparable_models(names: list[str], reference: str | None) -> list[str]:
    """The names of the reference's size (layers, width, heads, context): the models a comparison starts from,
    so that a model of another size (e.g. a speed demonstration) is there to add but not drawn by default."""
    shape = _shape(reference) if reference else None
    if shape is None:
        return list(names)
    return [n for n in names if _shape(n) == shape]


def default_threshold(name: str | None) -> float:
    """The highest 0.01-step threshold that still sends at least SHALLOW_TARGET% of test tokens shallow."""
    try:
        frame = curve(name)
    except (ValueError, OSError, TypeError):
        return 0.95
    busy = frame[frame["shallow_pct"] >= SHALLOW_TARGET]["threshold"]
    if busy.empty:
        return 0.0
    return float(int(busy.max() * 100 + 1e-9)) / 100  # down to the slider's step: never fewer shallow tokens


def regime(name: str | None) -> str:
    """One line: the checkpoint's corpus and vocabulary, and whether routing has work to do on it."""
    if name is None:
        return ""
    if name.startswith("hf:"):
        return "Regime — a pretrained model: every layer read through its own norm and head (the logit lens)."
    try:
        cfg = config(name)
        vocab, layers = cfg["model"]["vocab_size"], cfg["model"]["n_layers"]
    except (ValueError, OSError, KeyError, TypeError):
        return ""
    corpus = Path(str(cfg["corpus"]["name"])).name
    kind = f"bytes ({vocab} tokens)" if vocab <= 260 else f"BPE, {vocab:,} tokens"
    if layers < 2:
        return f"Regime — {corpus}, {kind}: a 1-layer model, nothing to route."
    share = share_confident(name)
    if share is None:
        return f"Regime — {corpus}, {kind}: no test sweep yet."
    verdict = ("routing has work to do" if share >= BUSY_SHARE
               else "few tokens confident: routing has little to route")
    return f"Regime — {corpus}, {kind}: {share:.0f}% of test tokens have max softmax ≥ {CONFIDENT:g} — {verdict}."
