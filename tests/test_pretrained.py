"""Pretrained causal LMs (tiny random Llama and GPT-2 built locally, and a GGUF file) as routed models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from routed.tokenizer import encode


def _hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _ids(world, n=40):
    return encode(world.tokenizer, world.corpus.read_text()[:2000])[:n].unsqueeze(0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_exit_is_the_logit_lens_of_transformers_own_forward(hf_world, family):
    from routed.pretrained import load_pretrained

    folder = getattr(hf_world, family)
    ckpt = load_pretrained(f"hf:{folder}")
    reference = _hf(folder)
    ids = _ids(hf_world)
    with torch.no_grad():
        ours = ckpt.model(ids, exits=[1, 2, 3])
        out = reference(ids, output_hidden_states=True)
        norm, head = ckpt.model.norm, reference.get_output_embeddings()
        torch.testing.assert_close(ours[3], out.logits, rtol=0, atol=1e-5)
        for k in (1, 2):  # transformers' hidden_states[k] is the raw residual after layer k
            torch.testing.assert_close(ours[k], head(norm(out.hidden_states[k])), rtol=0, atol=1e-5)
    cfg = ckpt.model_config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.vocab_size, cfg.context_length) == (3, 32, 4, 300, 64)
    assert (cfg.n_kv_heads, cfg.d_ff, cfg.gated_mlp) == ((2, 48, True) if family == "llama" else (None, None, False))


def test_the_trunk_stops_at_the_deepest_exit_asked_for(hf_world):
    from routed.pretrained import load_pretrained

    model = load_pretrained(f"hf:{hf_world.llama}").model
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(model.layers, 1)]
    try:
        features = model.exit_features(_ids(hf_world), exits=[1])
        assert ran == [1] and list(features) == [1]
        ran.clear()
        model.exit_features(_ids(hf_world), exits=[2, 1])
        assert ran == [1, 2]
    finally:
        for h in handles:
            h.remove()
    with pytest.raises(ValueError, match="exits must be within 1..3"):
        model.exit_features(_ids(hf_world), exits=[4])
    assert not any(p.requires_grad for p in model.hf_model.parameters())  # the base model stays frozen


def test_a_gguf_file_loads_with_the_same_weights_tokens_and_logits(hf_world):
    from routed.pretrained import load_pretrained

    folder, gguf = load_pretrained(f"hf:{hf_world.llama}"), load_pretrained(f"hf:{hf_world.gguf}")
    # Without markers: a GGUF keeps only special tokens spelled in the byte alphabet (no " <|endoftext|>").
    text = hf_world.corpus.read_text()[:1500].replace(" <|endoftext|>", "")
    assert encode(gguf.tokenizer, text).tolist() == encode(folder.tokenizer, text).tolist()
    assert gguf.meta["base"]["fingerprint"] == folder.meta["base"]["fingerprint"]  # the same weights
    ids = _ids(hf_world)
    with torch.no_grad():
        torch.testing.assert_close(gguf.model(ids, exits=[1, 3])[3], folder.model(ids, exits=[3])[3], rtol=0, atol=1e-5)


def test_records_read_only_the_exits_asked_for_in_bounded_chunks(hf_world, monkeypatch):
    import routed.records
    from routed.pretrained import load_pretrained
    from routed.records import evaluate

    model = load_pretrained(f"hf:{hf_world.gpt2}").model
    tokens = encode(hf_world.tokenizer, hf_world.corpus.read_text())[:700]
    whole = evaluate(model, tokens, exits=[2])
    assert sorted(whole.nll) == [2, 3] and whole.early_exit == 2 and len(whole) == 699
    rows = []
    handle = model.lm_head.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    monkeypatch.setattr(routed.records, "HEAD_ROWS", 50)
    monkeypatch.setattr(routed.records, "MAX_BATCH_TOKENS", 128)  # two windows of 64 per batch
    chunked = evaluate(model, tokens, exits=[2])
    handle.remove()
    assert max(rows) <= 50
    for layer in (2, 3):
        np.testing.assert_allclose(chunked.nll[layer], whole.nll[layer], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(chunked.early_correct, whole.early_correct)
    # The records' NLL is transformers' own cross-entropy over the same windows.
    reference = _hf(hf_world.gpt2)
    with torch.no_grad():
        x, y = tokens[:64].unsqueeze(0), tokens[1:65]
        ce = torch.nn.functional.cross_entropy(reference(x).logits[0], y, reduction="none")
    np.testing.assert_allclose(whole.nll[3][:64], ce.numpy(), rtol=0, atol=1e-4)


def test_sweep_summary_calibration_and_text_routing_work_on_a_pretrained_model(hf_world):
    from routed.breakdown import what_exits
    from routed.calibrate import threshold_for
    from routed.pretrained import load_pretrained
    from routed.records import records_for_checkpoint
    from routed.sweep import summary, sweep, sweep_exits
    from routed.text import route_text

    ckpt = load_pretrained(f"hf:{hf_world.llama}")
    with pytest.raises(ValueError, match="no corpus of its own"):
        records_for_checkpoint(ckpt, "test")
    records = records_for_checkpoint(ckpt, "test", corpus=str(hf_world.corpus))
    assert sorted(records.nll) == [1, 2, 3]  # a 3-layer model: every layer by default
    rows = sweep(records, [0.0, 0.5, 1.0])
    assert rows["shallow_pct"][0] == 100.0 and rows["shallow_pct"][-1] <= rows["shallow_pct"][1]
    multi = sweep_exits(records, [0.0, 1.0], [1, 2])
    assert multi["exit_1_pct"][0] == 100.0 and multi["compute_pct"][0] == pytest.approx(100 / 3)
    plain = summary(records, None)
    assert plain["routed_ppl"] == pytest.approx(plain["ppl_by_exit"][3]) and plain["flops_pct"] == pytest.approx(100)
    assert 0.0 <= threshold_for(records, target_compute=70) <= 1.0
    routed = route_text(ckpt.model, ckpt.tokenizer, "the cat sees the ball. " * 3, 0.0)
    assert routed.shallow.all() and "".join(routed.tokens) == "the cat sees the ball. " * 3
    ids = sorted(set(records.token_id.tolist()))
    assert what_exits(records, dict.fromkeys(ids, "x"), 0.0)["shallow_pct"] == 100.0


def test_deep_models_read_a_spread_of_exits_by_default(hf_world):
    from routed.hf import lens_exits
    from routed.records import model_exits

    assert lens_exits(3) == [1, 2, 3] and lens_exits(30) == [5, 10, 15, 20, 25, 30] and lens_exits(13)[-1] == 13

    class Stub:
        config = type("C", (), {"n_layers": 30})()
        default_exits = [6, 12]

    assert model_exits(Stub()) == [6, 12, 30] and model_exits(Stub(), [3]) == [3, 30]


def test_cli_eval_route_and_multi_exit_sweep_on_hf_models(hf_world, capsys):
    from routed.cli import main

    spec = f"hf:{hf_world.llama}"
    assert main(["eval", "--checkpoint", spec, "--corpus", str(hf_world.corpus), "--json", "--exits", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["ppl_by_exit"]) == ["2", "3"] and result["checkpoint"] == spec
    assert main(["sweep", "--checkpoint", f"hf:{hf_world.gguf}", "--corpus", str(hf_world.corpus),
                 "--exits", "1,2", "--thresholds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "exit 1% | exit 2% | exit 3%" in out and "| 0.00 |" in out
    assert main(["route", "--checkpoint", spec, "--text", "the cat sees the ball.", "--threshold", "0"]) == 0
    assert "shallow" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", spec, "--corpus", str(hf_world.corpus), "--mode", "sparse"]) == 2
    assert "pretrained model is evaluated dense" in capsys.readouterr().err


def test_llama_shapes_in_the_ledger_config_and_records(tmp_path):
    from routed.config import ModelConfig
    from routed.ledger import TokenCost, execution_cost
    from routed.model import RoutedTransformer
    from routed.records import TokenRecords

    plain = ModelConfig(vocab_size=1000, n_layers=30, d_model=64, n_heads=8, context_length=32)
    assert "n_kv_heads" not in plain.to_dict() and "gated_mlp" not in plain.to_dict()  # today's JSON, unchanged
    llama = ModelConfig(vocab_size=1000, n_layers=30, d_model=64, n_heads=8, context_length=32, n_kv_heads=2,
                        d_ff=96, gated_mlp=True)
    assert ModelConfig.from_dict(json.loads(json.dumps(llama.to_dict()))) == llama
    d, kv = 64, 2 * 8  # two key/value heads of 8
    cost = TokenCost.of(llama)
    assert cost.layer == 2 * (2 * d * d + 2 * d * kv + 3 * d * 96) + 2 * d * 33 and cost.kv == 4 * d * kv
    assert TokenCost.of(plain).layer == 24 * d * d + 2 * d * 33  # routed's block as before
    # Compute% and FLOPs% of exits 6, 12 and 30 of a 30-layer model: against itself
    compute, flops = execution_cost(llama, {6: 0.5, 12: 0.25, 30: 0.25}, "recompute", exits=[6, 12, 30])
    assert compute == pytest.approx(100 * (3 + 3 + 7.5) / 30)
    assert execution_cost(llama, {30: 1.0}, "plain") == (pytest.approx(100.0), pytest.approx(100.0))
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="routed's own block"):
        RoutedTransformer(ModelConfig(gated_mlp=True))
    records = TokenRecords(position=np.arange(2), token_id=np.zeros(2, np.int32), nll={30: np.ones(2, np.float32)},
                           confidence={"max_softmax": np.ones(2, np.float32)}, early_correct=np.ones(2, bool),
                           early_exit=30, model_config=llama)
    records.save(tmp_path / "r.npz")
    assert TokenRecords.load(tmp_path / "r.npz").model_config == llama


def test_routed_generation_on_a_pretrained_model_stops_at_the_first_confident_exit(hf_world):
    from routed.hf_generate import generate_pretrained
    from routed.pretrained import load_pretrained

    model = load_pretrained(f"hf:{hf_world.llama}").model
    prompt = encode(hf_world.tokenizer, "the cat sees").tolist()
    deep = generate_pretrained(model, prompt, 6, None)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):  # greedy decoding of transformers' own logits
            ids.append(int(_hf(hf_world.llama)(torch.tensor([ids])).logits[0, -1].argmax()))
    assert [t.token_id for t in deep.tokens] == ids[len(prompt):] and {t.exit_layer for t in deep.tokens} == {3}
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(model.layers, 1)]
    try:
        shallow = generate_pretrained(model, prompt, 4, 0.0, exits=[1, 2])
    finally:
        for h in handles:
            h.remove()
    assert {t.exit_layer for t in shallow.tokens} == {1} and set(ran) == {1}  # layers 2 and 3 never ran
    with pytest.raises(ValueError, match="pretrained model is evaluated dense"):
        model.blocks  # noqa: B018  (routed.sparse reads this)


def test_cli_generate_on_a_pretrained_model_plain_and_routed_but_not_speculative(hf_world, capsys):
    from routed.cli import main

    spec = f"hf:{hf_world.llama}"
    assert main(["generate", "--checkpoint", spec, "--prompt", "the cat sees", "--max-new-tokens", "5", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert len(plain["token_ids"]) == 5 and plain["tokens_per_s"] > 0
    assert main(["generate", "--checkpoint", spec, "--prompt", "the cat sees", "--max-new-tokens", "5", "--json",
                 "--mode", "routed", "--threshold", "0"]) == 0
    routed = json.loads(capsys.readouterr().out)
    assert routed["early_exit_pct"] == 100.0  # threshold 0: every token leaves at the first exit
    assert main(["generate", "--checkpoint", spec, "--prompt", "the cat sees", "--mode", "speculative"]) == 2
    err = capsys.readouterr().err
    assert "speculative decoding needs routed's own transformer" in err and "Traceback" not in err
