"""The per-layer lens: settling depth on hand-built logits, lens records against a direct computation, bad text."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from routed.lens import lens, settling_depth
from routed.lens_text import lens_text, unseen_characters

# Top-1 token per (layer, token) of five tokens, and the settling depth each must get.
TOP1 = np.array([
    [2, 4, 1, 5, 0],  # layer 1
    [3, 4, 5, 2, 0],  # layer 2
    [3, 4, 1, 6, 0],  # layer 3 (the last)
])
SETTLES = [2, 1, 3, 3, 1]  # token 2: layer 1 agrees with layer 3 but layer 2 does not, so it settles only at 3


class TableModel(torch.nn.Module):
    """A model whose every exit's logits are hand-built: a table per layer indexed by the input token."""

    def __init__(self, tables: dict[int, torch.Tensor], context_length: int):
        super().__init__()
        vocab = next(iter(tables.values())).shape[-1]
        self.tables = tables
        self.config = SimpleNamespace(n_layers=len(tables), vocab_size=vocab, context_length=context_length, d_model=vocab)
        self.lm_head = torch.nn.Identity()  # the "hidden state" is the logits themselves

    def exit_features(self, idx, exits=None):
        return {layer: self.tables[layer][idx] for layer in exits}


def hand_built_model(context_length: int = 8) -> tuple[TableModel, torch.Tensor]:
    """Token i of the sequence 0..5 predicts through TOP1[:, i] (logit 4 on it, 0 elsewhere, plus a small tilt)."""
    vocab = 7
    tables = {}
    for r in range(3):
        table = torch.linspace(0, 0.1, vocab).repeat(vocab, 1)  # a tilt so no two tokens tie
        for i, top in enumerate(TOP1[r]):
            table[i, top] = 4.0
        tables[r + 1] = table
    return TableModel(tables, context_length), torch.arange(6)


def test_settling_depth_of_hand_built_top1():
    assert settling_depth(TOP1, [1, 2, 3]).tolist() == SETTLES
    assert settling_depth(TOP1[[0, 2]], [1, 3]).tolist() == [3, 1, 1, 3, 1]  # without layer 2, token 2 settles at 1
    assert settling_depth(TOP1[2:], [3]).tolist() == [3] * 5  # one layer: everything settles there
    with pytest.raises(ValueError, match="settling_depth"):
        settling_depth(TOP1, [1, 2])


def test_lens_reads_hand_built_logits():
    model, tokens = hand_built_model()
    rec = lens(model, tokens, top_k=3)
    assert rec.layers == (1, 2, 3)
    assert rec.top1.tolist() == TOP1.tolist()
    assert rec.settling().tolist() == SETTLES
    assert rec.agrees_last.tolist() == (TOP1 == TOP1[-1]).tolist()
    targets = tokens[1:].numpy()
    assert rec.token_id.tolist() == targets.tolist()
    logp = torch.log_softmax(torch.stack([model.tables[k][tokens[:-1]] for k in (1, 2, 3)]), -1).numpy()
    true_logp = np.take_along_axis(logp, np.broadcast_to(targets, (3, 5))[..., None], -1)[..., 0]
    np.testing.assert_allclose(rec.true_nll, -true_logp, rtol=1e-5)
    np.testing.assert_allclose(rec.true_prob, np.exp(true_logp), rtol=1e-5)
    np.testing.assert_allclose(rec.top1_prob, np.exp(logp.max(-1)), rtol=1e-5)
    expected_rank = (logp > true_logp[..., None]).sum(-1) + 1
    assert rec.true_rank.tolist() == expected_rank.tolist()
    assert (rec.true_rank[rec.correct] == 1).all()
    assert rec.top_ids[..., 0].tolist() == TOP1.tolist()
    assert (np.diff(rec.top_probs, axis=-1) <= 0).all()  # top-k in falling order


def test_lens_is_the_same_in_small_chunks_and_windows():
    """A memory budget that forces one position per head call, and a context of 2 that forces three windows."""
    model, tokens = hand_built_model(context_length=2)
    whole = lens(hand_built_model()[0], tokens, top_k=2)
    cut = lens(model, tokens, top_k=2, memory_budget=1)
    assert cut.top1.tolist() == whole.top1.tolist()
    assert cut.window_position.tolist() == [0, 1, 0, 1, 0]
    assert whole.window_position.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(cut.true_nll, whole.true_nll)


def test_lens_reads_only_the_layers_asked_for_and_the_last(tiny_run):
    rec = lens(tiny_run.model, torch.arange(20) % 50, layers=[1], top_k=0)
    assert rec.layers == (1, 3) and rec.top1.shape == (2, 19) and rec.top_ids is None
    with pytest.raises(ValueError, match="layers"):
        lens(tiny_run.model, torch.arange(20), layers=[4])


def test_lens_on_a_trained_model_matches_its_records(tiny_run):
    from routed.records import evaluate

    tokens = torch.arange(60) % 40
    rec = lens(tiny_run.model, tokens)
    records = evaluate(tiny_run.model, tokens)
    for r, layer in enumerate(rec.layers):
        np.testing.assert_allclose(rec.true_nll[r], records.nll[layer], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rec.confidence["margin"][0], records.confidence["margin"], rtol=1e-5, atol=1e-6)
    assert (rec.correct[0] == records.early_correct).all()


@pytest.mark.parametrize("text, message", [("", "nothing to look at"), ("  \n ", "nothing to look at"), ("a", "at least two tokens")])
def test_lens_text_rejects_empty_and_one_token_text(tiny_run, text, message):
    with pytest.raises(ValueError, match=message):
        lens_text(tiny_run.model, tiny_run.tokenizer, text)


def test_lens_text_cuts_long_text_into_windows_and_says_so(tiny_run):
    text = "the cat sees the ball. " * 40
    seen = lens_text(tiny_run.model, tiny_run.tokenizer, text)
    assert "".join(seen.tokens) == text
    assert seen.windows > 1 and len(seen.records) == len(seen.tokens) - 1
    assert any("windows" in line for line in seen.notes())


def test_lens_text_names_characters_outside_the_training_text(tiny_run):
    seen = lens_text(tiny_run.model, tiny_run.tokenizer, "the cat sees 猫 and Ω\x07 here")
    assert set(seen.unseen) == {"猫", "Ω", "\x07"}
    assert any("byte by byte" in line for line in seen.notes())
    assert unseen_characters(tiny_run.tokenizer, "the cat sees the ball.") == []
