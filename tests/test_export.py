"""Export to Hugging Face: transformers' own GPT-2 gives our logits, at the last exit and at early exits."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import repetitive_text

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def routed_checkpoint(tmp_path_factory):
    """A routed checkpoint with random weights large enough that logits differ clearly between tokens."""
    from routed.checkpoint import load_checkpoint, save_checkpoint
    from routed.config import ModelConfig, TrainConfig
    from routed.model import RoutedTransformer
    from routed.tokenizer import train_tokenizer

    torch.manual_seed(0)
    tokenizer = train_tokenizer(repetitive_text(300), 300, markers=("<unk>",))
    model = RoutedTransformer(ModelConfig(vocab_size=300, n_layers=3, d_model=32, n_heads=2, context_length=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    path = tmp_path_factory.mktemp("export") / "asym"
    save_checkpoint(path, model, tokenizer, TrainConfig(layer_weights={1: 0.7, 3: 0.3}, routing_threshold=0.9),
                    "tiny", "fp", dtype=torch.float32)
    return load_checkpoint(path)


def test_transformers_gpt2_gives_our_logits_at_every_exit(routed_checkpoint, tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from routed.export import export_hf
    from routed.tokenizer import encode

    out = export_hf(routed_checkpoint, tmp_path / "hf")
    theirs = GPT2LMHeadModel.from_pretrained(out).eval()
    assert theirs.config.activation_function == "gelu" and theirs.lm_head.weight is theirs.transformer.wte.weight
    text = "the cat sees the ball. <unk> a dog finds the tree.\n" * 2
    ids = encode(routed_checkpoint.tokenizer, text)[:32]
    assert AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False).input_ids[:32] == ids.tolist()
    with torch.no_grad():
        ours = routed_checkpoint.model(ids.unsqueeze(0))
        result = theirs(ids.unsqueeze(0), output_hidden_states=True)
        assert ours[3].abs().max() > 1.0  # logits far from zero: the comparison has something to compare
        torch.testing.assert_close(result.logits, ours[3], rtol=0, atol=1e-5)
        for k in (1, 2):  # early exits: hidden state k through ln_f and the tied head
            early = theirs.lm_head(theirs.transformer.ln_f(result.hidden_states[k]))
            torch.testing.assert_close(early, ours[k], rtol=0, atol=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["routed_export"]["routing_threshold"] == 0.9


def test_export_cli_replaces_only_its_own_folders(routed_checkpoint, tmp_path, capsys):
    from routed.cli import main

    out = tmp_path / "hf"
    argv = ["export", "--checkpoint", str(routed_checkpoint.path), "--format", "hf", "--out", str(out)]
    assert main(argv) == 0 and (out / "model.safetensors").is_file()
    assert main(argv) == 0  # ours: replaced whole
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "gpt2"}')
    assert main([*argv[:-1], str(foreign)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json"]
    file = tmp_path / "file.txt"
    file.write_text("x")
    assert main([*argv[:-1], str(file)]) == 2 and file.read_text() == "x"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # nothing written half-way
