"""The lens on a text: its tokens, their lens records, and what to say about the text before trusting them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from routed.lens import TOP_K, LensRecords, lens, n_windows


@dataclass
class LensText:
    """A text seen through the lens: token strings (token 0 is only context) and the records of tokens 1..n-1."""

    tokens: list[str]
    records: LensRecords
    windows: int  # context windows the text was cut into
    context_length: int
    unseen: list[str]  # characters the tokenizer has no piece for (read byte by byte)

    def notes(self) -> list[str]:
        """One line per thing the reader should know: windows, characters outside the training text."""
        lines = []
        if self.windows > 1:
            lines.append(
                f"{len(self.tokens):,} tokens, more than the context of {self.context_length}: the text was cut into "
                f"{self.windows:,} windows; each token sees only the tokens of its own window."
            )
        if self.unseen:
            shown = " ".join(repr(c) for c in self.unseen[:8]) + (" …" if len(self.unseen) > 8 else "")
            lines.append(
                f"{len(self.unseen)} distinct character(s) have no token of their own ({shown}): they are read byte "
                "by byte and were rare or absent in the training text, so predictions around them mean little."
            )
        return lines


def _known_characters(tokenizer) -> set[str]:
    """Non-ASCII characters that some vocabulary entry spells whole (so the training text held them often)."""
    known = set()
    for i in range(tokenizer.get_vocab_size()):
        known.update(c for c in tokenizer.decode([i]) if ord(c) > 127 and c != "\ufffd")
    return known


def unseen_characters(tokenizer, text: str) -> list[str]:
    """Characters of `text` outside the tokenizer's learned pieces: control characters, and non-ASCII
    characters no vocabulary entry holds whole (a byte-level BPE merges the frequent ones; a bytes-only
    vocabulary knows none)."""
    try:
        known = _known_characters(tokenizer)
    except (AttributeError, TypeError):  # a tokenizer without a vocabulary to read: nothing to say
        return []
    odd = [c for c in dict.fromkeys(text) if (ord(c) > 127 and c not in known) or (ord(c) < 32 and c not in "\n\t\r")]
    return odd


def lens_text(model, tokenizer, text: str, layers=None, top_k: int = TOP_K) -> LensText:
    """Look at every token of `text` through the lens; long texts are cut into context windows."""
    from routed.text import text_ids
    from routed.tokenizer import marker_ids, token_texts

    ids = text_ids(tokenizer, text, "look at")
    text = re.sub("[\ud800-\udfff]", "\ufffd", text)  # as text_ids read it, for naming unseen characters
    records = lens(model, ids, layers, top_k=top_k, marker_ids=marker_ids(tokenizer))
    context = model.config.context_length
    return LensText(token_texts(tokenizer, ids), records, n_windows(len(ids), context), context,
                    unseen_characters(tokenizer, text))
