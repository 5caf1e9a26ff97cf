"""A text routed token by token: its tokens, their records, and which path each takes at a threshold."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from routed.records import TokenRecords, evaluate_with_tokenizer
from routed.routing import CONFIDENCE_MEASURES, check_threshold, exits_early


@dataclass
class RoutedText:
    """A text routed token by token: the predicted tokens' records and their strings."""

    tokens: list[str]  # every token of the text (joined: the text); token 0 has no prediction
    records: TokenRecords  # rows for tokens 1..n-1
    windows: int  # context windows the text was cut into
    threshold: float | None
    measure: str

    @property
    def shallow(self) -> np.ndarray:
        return exits_early(torch.from_numpy(self.records.confidence[self.measure]), self.threshold).numpy()


def text_ids(tokenizer, text: str, verb: str) -> torch.Tensor:
    """The token ids of a user's text, refused with one line when there is nothing to `verb` in it.

    Lone surrogates (from undecodable bytes, e.g. in a command line) become U+FFFD: the tokenizer takes
    valid Unicode only.
    """
    from routed.tokenizer import encode

    if not isinstance(text, str):
        raise ValueError(f"text: must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"text: nothing to {verb}; enter some text")
    ids = encode(tokenizer, re.sub("[\ud800-\udfff]", "\ufffd", text))
    if len(ids) < 2:
        raise ValueError("text: at least two tokens are needed (the first token is only context)")
    return ids


def route_text(model, tokenizer, text: str, threshold: float | None, measure: str = "max_softmax", top_k: int = 5) -> RoutedText:
    """Route every token of `text`; long texts are cut into context windows (see routed.records.windows).

    Lone surrogates (from undecodable bytes, e.g. in a command line) are routed as U+FFFD.
    """
    from routed.tokenizer import token_texts

    check_threshold(threshold)
    if measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"measure: unknown confidence measure {measure!r}; choose one of {CONFIDENCE_MEASURES}")
    ids = text_ids(tokenizer, text, "route")
    records = evaluate_with_tokenizer(model, tokenizer, ids, top_k=top_k)
    n_windows = math.ceil((len(ids) - 1) / model.config.context_length)
    return RoutedText(token_texts(tokenizer, ids), records, n_windows, threshold, measure)
