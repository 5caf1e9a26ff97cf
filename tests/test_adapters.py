"""Exit adapters on a frozen pretrained model: training lowers the loss, saving keeps them, another base is refused."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import save_model

from routed.tokenizer import encode


def _tokens(world, split: str):
    from routed.data import load_corpus

    return encode(world.tokenizer, load_corpus(str(world.corpus)).split(split))


def _config(**overrides):
    from routed.adapter_train import AdapterTrainConfig

    return AdapterTrainConfig(**{"exits": [1, 2], "steps": 40, "batch_tokens": 128, "pool_tokens": 2048,
                                 "eval_tokens": 512, "window": 32, "learning_rate": 3e-3, "eval_interval": 20,
                                 **overrides})


@pytest.mark.parametrize("init", ["identity", "regression"])
def test_training_lowers_every_adapted_exits_loss(hf_world, init):
    from routed.adapter_train import train_adapters
    from routed.pretrained import load_pretrained

    model = load_pretrained(f"hf:{hf_world.llama}").model
    before = [p.clone() for p in model.hf_model.parameters()]
    adapters, history = train_adapters(model, _tokens(hf_world, "train"), _tokens(hf_world, "validation"),
                                       _config(init=init))
    lens, last = history[0], history[-1]
    assert lens["stage"] == "identity" and history[-2]["step"] == 40 and adapters.exits == [1, 2]
    assert last["stage"] == "kept" and all(sum(last["val_ce"].values()) <= sum(r["val_ce"].values())
                                           for r in history[1:-1])
    for layer in (1, 2):  # the plain logit lens of a random model is near uniform; adapters learn the corpus
        assert last["val_ce"][layer] < lens["val_ce"][layer] - 0.5
    if init == "regression":
        assert history[1]["stage"] == "regression"
    assert all(torch.equal(a, b) for a, b in zip(before, model.hf_model.parameters()))  # the base never moves


def test_training_that_worsens_validation_keeps_the_initialised_maps(hf_world, monkeypatch):
    import routed.adapter_train as adapter_train
    from routed.pretrained import load_pretrained

    real_loss = adapter_train.weighted_feature_loss

    def ascent(*args, **kwargs):  # gradient ascent: every step makes the exits worse
        loss, parts = real_loss(*args, **kwargs)
        return -loss, parts

    monkeypatch.setattr(adapter_train, "weighted_feature_loss", ascent)
    model = load_pretrained(f"hf:{hf_world.llama}").model
    adapters, history = adapter_train.train_adapters(model, _tokens(hf_world, "train"), _tokens(hf_world, "validation"),
                                                     _config(init="identity", steps=20, eval_interval=10))
    start, trained, kept = history[0], history[-2], history[-1]
    assert sum(trained["val_ce"].values()) > sum(start["val_ce"].values()) + 0.1  # training made it worse
    assert kept["step"] == 0 and kept["val_ce"] == start["val_ce"]
    states, targets = adapter_train.collect_states(model, _tokens(hf_world, "validation"), [1, 2], 512, 32)
    assert adapter_train.exit_losses(model, adapters, states, targets) == pytest.approx(start["val_ce"])


def test_the_last_layer_gets_no_adapter_and_bad_configs_are_named(hf_world):
    from routed.adapter_train import AdapterTrainConfig, train_adapters
    from routed.pretrained import load_pretrained

    model = load_pretrained(f"hf:{hf_world.llama}").model
    tokens = _tokens(hf_world, "train")
    with pytest.raises(ValueError, match="last layer"):
        train_adapters(model, tokens, tokens, _config(exits=[3]))
    with pytest.raises(ValueError, match="has 3 layers"):
        train_adapters(model, tokens, tokens, _config(exits=[2, 7]))
    for bad, match in ((dict(exits=[]), "exits"), (dict(exits=[1], steps=0), "steps"), (dict(exits=[1], init="x"), "init"),
                       (dict(exits=[1], layer_weights={2: 1.0}), "layer_weights")):
        with pytest.raises(ValueError, match=match):
            AdapterTrainConfig(**bad)


def test_cli_trains_saves_and_routes_on_adapters_and_refuses_another_base(hf_world, tmp_path, capsys):
    from routed.adapters import load_adapted
    from routed.checkpoint import CheckpointError, read_sweep
    from routed.cli import main
    from routed.pretrained import load_pretrained, read_any_config

    out = tmp_path / "adapters"
    args = ["train-adapters", "--base", f"hf:{hf_world.llama}", "--exits", "1,2", "--corpus", str(hf_world.corpus),
            "--steps", "20", "--batch-tokens", "64", "--pool-tokens", "1024", "--eval-tokens", "256", "--window", "32",
            "--lr", "3e-3"]
    assert main([*args, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapters.safetensors", "config.json", "history.json", "sweep.csv"]
    config = read_any_config(out)
    assert config["kind"] == "exit-adapters" and config["exits"] == [1, 2] and config["corpus"]["name"] == str(
        hf_world.corpus)
    assert read_sweep(out)["shallow_pct"][0] == 100.0  # threshold 0: every token leaves at the first exit
    assert (out / "adapters.safetensors").stat().st_size < 20_000  # two 32 x 32 maps in fp16
    ckpt = load_adapted(out)
    assert ckpt.model.default_exits == [1, 2, 3] and ckpt.corpus == str(hf_world.corpus)
    base = load_pretrained(f"hf:{hf_world.llama}")
    ids = encode(hf_world.tokenizer, "the cat sees the ball.").unsqueeze(0)
    with torch.no_grad():
        adapted, plain = ckpt.model(ids, exits=[1, 3]), base.model(ids, exits=[1, 3])
    torch.testing.assert_close(adapted[3], plain[3])  # the last exit is the model's own
    assert not torch.allclose(adapted[1], plain[1])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--json"]) == 0  # the adapters' corpus is the default
    assert sorted(json.loads(capsys.readouterr().out)["ppl_by_exit"]) == ["1", "2", "3"]

    other = save_model(tmp_path / "other", "llama", hf_world.tokenizer, seed=1)
    with pytest.raises(CheckpointError, match="trained on .* adapters only fit the model they were trained on"):
        load_adapted(out, base=load_pretrained(f"hf:{other}"))
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    assert main([*args, "--out", str(foreign)]) == 2  # refused before any training
    assert "refusing to overwrite" in capsys.readouterr().err and (foreign / "todo.txt").read_text() == "mine"
