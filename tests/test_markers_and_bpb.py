"""Corpus markers are one token each and can be left out; bits per byte equals a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import tiny_model_config

from routed.breakdown import what_exits
from routed.model import RoutedTransformer
from routed.records import evaluate_with_tokenizer
from routed.sweep import summary, sweep
from routed.tokenizer import decode, encode, marker_ids, token_byte_lengths, token_texts, train_tokenizer

WIKI = " The <unk> of the <unk> river is 5 @,@ 000 km long .\n = <unk> = \n<unk> began in 1920 .\n" * 40
STORIES = "Once upon a time there was a cat.\n<|endoftext|>\nTom ran home. He was happy.\n<|endoftext|>\n" * 40


@pytest.fixture(scope="module")
def wiki_tokenizer():
    return train_tokenizer(WIKI, 320, markers=("<unk>",))


@pytest.mark.parametrize("text,marker", [(WIKI, "<unk>"), (STORIES, "<|endoftext|>")])
def test_markers_encode_to_one_token_and_round_trip(text, marker):
    tok = train_tokenizer(text, 300, markers=(marker,))
    for sample in (marker, f"a {marker} b", f"{marker}{marker}\n{marker}", f"x\n{marker}\n y"):
        ids = encode(tok, sample)
        assert decode(tok, ids) == sample
        assert "".join(token_texts(tok, ids)) == sample
    ids = encode(tok, f"word {marker} word").tolist()
    specials = set(marker_ids(tok))
    assert sum(i in specials for i in ids) == 1  # the marker, with its space, is a single token
    assert len(specials) == 2  # "<m>" and " <m>"
    assert decode(tok, encode(tok, text)) == text
    assert not any(marker[1:-1] == tok.id_to_token(i) for i in range(tok.get_vocab_size()))  # no merges spent on it


def test_byte_level_vocabulary_with_markers_is_bytes_only():
    tok = train_tokenizer(STORIES, 258, markers=("<|endoftext|>",))
    assert tok.get_vocab_size() == 258
    lengths = token_byte_lengths(tok)
    plain = [i for i in range(258) if i not in marker_ids(tok)]
    assert (lengths[plain] == 1).all()  # PPL per token on marker-free tokens is PPL per byte
    with pytest.raises(ValueError, match="^vocab_size"):
        train_tokenizer(STORIES, 257, markers=("<|endoftext|>",))


def test_token_byte_lengths_add_up_to_the_text(wiki_tokenizer):
    text = WIKI + "naïve café 日本 🙂\n"
    ids = encode(wiki_tokenizer, text).numpy()
    assert token_byte_lengths(wiki_tokenizer)[ids].sum() == len(text.encode("utf-8"))


def test_bits_per_byte_equals_a_hand_computation(wiki_tokenizer):
    torch.manual_seed(0)
    model = RoutedTransformer(tiny_model_config(vocab_size=wiki_tokenizer.get_vocab_size(), context_length=64)).eval()
    text = "The <unk> of the river is long .\n" * 3
    ids = encode(wiki_tokenizer, text)
    records = evaluate_with_tokenizer(model, wiki_tokenizer, ids)
    with torch.no_grad():  # by hand: one window, every target after the first token
        logits = model(ids[:-1].unsqueeze(0), exits=[3])[3][0]
    nll = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none").double()
    sizes = torch.tensor([len(wiki_tokenizer.decode([int(i)], skip_special_tokens=False).encode()) for i in ids[1:]],
                         dtype=torch.float64)
    expected = float(nll.sum()) / math.log(2) / float(sizes.sum())
    assert summary(records, None)["routed_bpb"] == pytest.approx(expected, rel=1e-5)
    # without markers: both sums leave the marker tokens out
    keep = ~torch.isin(ids[1:], torch.tensor(marker_ids(wiki_tokenizer)))
    expected_clean = float(nll[keep].sum()) / math.log(2) / float(sizes[keep].sum())
    clean = records.without_markers()
    assert len(clean) == int(keep.sum()) < len(records)
    assert summary(clean, None)["routed_bpb"] == pytest.approx(expected_clean, rel=1e-5)
    assert sweep(clean, [1.0])["deep_bpb"][0] == pytest.approx(expected_clean, rel=1e-5)


def test_what_exits_counts_the_shallow_tokens_and_names_markers(wiki_tokenizer):
    torch.manual_seed(0)
    model = RoutedTransformer(tiny_model_config(vocab_size=wiki_tokenizer.get_vocab_size())).eval()
    ids = encode(wiki_tokenizer, WIKI[:600])
    records = evaluate_with_tokenizer(model, wiki_tokenizer, ids)
    strings = {i: wiki_tokenizer.decode([i]) for i in range(wiki_tokenizer.get_vocab_size())}
    t = float(np.median(records.confidence["max_softmax"]))
    result = what_exits(records, strings, t, top=1000)
    shallow = records.confidence["max_softmax"] >= t
    assert result["shallow_tokens"] == int(shallow.sum()) == sum(r["count"] for r in result["rows"])
    assert result["rows"][-1]["cumulative_pct"] == pytest.approx(100.0)
    markers = set(marker_ids(wiki_tokenizer))
    for row in result["rows"]:
        assert row["marker"] == (row["token_id"] in markers)
        mask = shallow & (records.token_id == row["token_id"])
        assert row["nll_by_exit"][1] == pytest.approx(float(records.nll[1][mask].mean()), rel=1e-5)
    everything = what_exits(records, strings, 0.0, top=5)
    assert everything["shallow_pct"] == 100.0 and len(everything["rows"]) == 5
    with pytest.raises(ValueError, match="^top"):
        what_exits(records, strings, 0.5, top=0)
