"""The byte-level BPE tokenizer: training (with corpus markers as special tokens), encoding, token texts."""

from __future__ import annotations

import re
from pathlib import Path

import torch

# Cut points for parallel encoding: between "X\n" and "Y" (X, Y not spaces), where the byte-level
# pre-tokenizer splits anyway (a newline after a space may join a whitespace run), so chunked
# encoding equals encoding the whole text.
_CHUNK_BOUNDARY = re.compile(r"(?<=\S\n)(?=\S)")
# Runs of non-space characters are cut into pieces of at most this many before byte-level BPE, in
# training and encoding alike (it is part of the tokenizer): BPE training time grows with the square of
# a word's length, so 400k characters without a space would take many minutes. Prose never has such runs.
MAX_RUN = 256


class TokenizerCancelled(Exception):
    """Tokenizer training stopped because `should_stop` said so."""


def marker_tokens(markers) -> list[str]:
    """The special tokens of a corpus' markers: each marker, and the marker with the space before it.

    Text tokenised at the word level (WikiText) writes " <unk>": folding the space into the marker keeps
    the whole piece of markup in one token, and the longest match wins where both fit.
    """
    tokens = []
    for marker in markers:
        if not isinstance(marker, str) or not marker.strip() or marker != marker.strip():
            raise ValueError(f"markers: each marker must be non-empty text without surrounding spaces, got {marker!r}")
        tokens += [" " + marker, marker]
    return tokens


def train_tokenizer(text: str, vocab_size: int = 4096, markers=(), should_stop=None):
    """A byte-level BPE tokenizer trained on `text` (deterministic; every byte is in the alphabet).

    Each of `markers` (e.g. "<unk>") becomes one special token that is never split; the vocabulary
    counts the 256 bytes, those tokens and the merges, so 256 + 2 x markers gives bytes only.
    `should_stop` (a callable) is polled before training and between chunks of the text; when it
    returns True, TokenizerCancelled is raised.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = marker_tokens(markers)
    if vocab_size < 256 + max(1, len(specials)):
        raise ValueError(
            f"vocab_size: must be at least {256 + max(1, len(specials))} (256 bytes"
            f"{f' + {len(specials)} marker tokens' if specials else ' + merges'}), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(rf"\S{{{MAX_RUN}}}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
        show_progress=False,
    )
    for marker in markers:  # no merges are spent on markup that is one token anyway
        text = text.replace(marker, "")
    if should_stop is not None and should_stop():
        raise TokenizerCancelled("tokenizer training was cancelled before it started")
    tokenizer.train_from_iterator(_polling(_CHUNK_BOUNDARY.split(text), should_stop), trainer)
    if should_stop is not None and should_stop():
        raise TokenizerCancelled("tokenizer training was cancelled")
    return tokenizer


def _polling(chunks, should_stop, every: int = 256):
    """Yield `chunks`, asking `should_stop` every `every` of them (the trainer reads them one by one)."""
    for i, chunk in enumerate(chunks):
        if should_stop is not None and i % every == 0 and should_stop():
            raise TokenizerCancelled("tokenizer training was cancelled")
        yield chunk


def marker_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's special (marker) tokens, ascending."""
    return sorted(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)


def token_byte_lengths(tokenizer):
    """UTF-8 bytes of every token id, (V,) int64: a byte-level token's characters are one byte each."""
    import numpy as np

    lengths = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    added = tokenizer.get_added_tokens_decoder()
    for piece, i in tokenizer.get_vocab().items():
        if i in added:
            lengths[i] = len(added[i].content.encode("utf-8"))
        elif all(c in _BYTE_VALUES for c in piece):
            lengths[i] = len(piece)
        else:
            lengths[i] = len(tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
    return lengths


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of `text` as a 1-D int64 tensor."""
    chunks = [c for c in _CHUNK_BOUNDARY.split(text) if c]
    ids = [i for enc in tokenizer.encode_batch(chunks, add_special_tokens=False) for i in enc.ids]
    return torch.tensor(ids, dtype=torch.long)


def decode(tokenizer, ids) -> str:
    """Text of token ids."""
    return tokenizer.decode(list(map(int, ids)), skip_special_tokens=False)


def token_strings(tokenizer, ids) -> list[str]:
    """The text of each token on its own (a token may hold part of a multi-byte character)."""
    return [tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]


def _byte_values() -> dict[str, int]:
    """The byte-level alphabet (GPT-2's bytes_to_unicode, as the ByteLevel pre-tokenizer uses): char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


_BYTE_VALUES = _byte_values()


def token_texts(tokenizer, ids) -> list[str]:
    """The text of each token of a sequence, so that "".join(token_texts(...)) == decode(ids).

    A character split over several tokens (emoji, CJK, ...) goes whole to the token that completes
    it; the tokens before get "". (token_strings would give each part as U+FFFD.)
    """
    import codecs

    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    added = tokenizer.get_added_tokens_decoder()
    texts = []
    for i in ids:
        piece = tokenizer.id_to_token(int(i))
        try:
            if int(i) in added:  # a marker: its text as written, not byte-level characters
                raise KeyError(piece)
            data = bytes(_BYTE_VALUES[c] for c in piece)
        except (KeyError, TypeError):  # not a byte-level token: its own text
            data = tokenizer.decode([int(i)], skip_special_tokens=False).encode("utf-8")
        texts.append(utf8.decode(data))
    if texts:
        texts[-1] += utf8.decode(b"", final=True)
    return texts


def load_tokenizer(path: Path | str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))
