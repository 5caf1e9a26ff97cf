"""Bad input that costs memory or time, or gives wrong numbers silently: each is refused before the cost.

Checkpoints whose config disagrees with their weights' header are refused before a model is built; a
model too large for the memory available is refused before anything is allocated (peak RSS measured);
hostile JSON, non-finite or integer weights, replaced weights, diverged runs, and text that makes BPE
training quadratic each get a clear answer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_CLI_FLAGS, repetitive_text, write_text
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import run_main

import routed.checkpoint
import routed.train
from routed.checkpoint import CheckpointError, load_checkpoint, save_trained
from routed.config import ModelConfig, TrainConfig
from routed.limits import MemoryLimitError, available_memory, parameter_count, parse_size
from routed.model import RoutedTransformer

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20


@pytest.fixture
def folder(tiny_world, tmp_path) -> Path:
    """A private copy of a tiny checkpoint (3 layers, vocab 300, d_model 32, context 32)."""
    return Path(shutil.copytree(tiny_world.checkpoints / "asymmetric_best", tmp_path / "ckpt"))


@pytest.fixture
def never_built(monkeypatch):
    """Fail the test if load_checkpoint builds a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(routed.checkpoint, "RoutedTransformer", refuse)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def split_weights(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_weights(path: Path, header: dict, data: bytes, length: int | None = None) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)


def retype(folder: Path, name: str, make) -> None:
    """Replace tensor `name` of the checkpoint's weights by make(tensor) (same shape), through safetensors."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    tensors[name] = make(tensors[name])
    save_file(tensors, folder / "model.safetensors")


def _overlap(folder):
    header, data = split_weights(folder / "model.safetensors")
    header["blocks.0.ln1.bias"]["data_offsets"] = header["blocks.0.ln1.weight"]["data_offsets"]
    write_weights(folder / "model.safetensors", header, data)


def _trailing(folder):
    with open(folder / "model.safetensors", "ab") as f:
        f.write(b"\0" * 1000)


def _header_claims_too_much(folder):
    header, data = split_weights(folder / "model.safetensors")
    write_weights(folder / "model.safetensors", header, data, length=2**40)


def _extra_tensor(folder):
    header, data = split_weights(folder / "model.safetensors")
    end = len(data)
    header["adapter.weight"] = {"dtype": "F16", "shape": [4], "data_offsets": [end, end + 8]}
    write_weights(folder / "model.safetensors", header, data + b"\0" * 8)


# (damage, words of the error): each is refused from config.json and the header alone
DISAGREEMENTS = {
    "config-wider": (lambda f: edit_json(f / "config.json", lambda c: c["model"].update(d_model=64)),
                     "tok_emb.weight has shape (300, 32), the config needs (300, 64)"),
    "config-deeper": (lambda f: edit_json(f / "config.json", lambda c: c["model"].update(n_layers=4)),
                      "missing blocks.3"),
    "config-longer-context": (lambda f: edit_json(f / "config.json", lambda c: c["model"].update(context_length=64)),
                              "pos_emb.weight"),
    "config-more-tokens": (lambda f: edit_json(f / "config.json", lambda c: c["model"].update(vocab_size=301)),
                           "the config needs (301, 32)"),
    "config-huge": (lambda f: edit_json(f / "config.json", lambda c: c["model"].update(vocab_size=2**20, d_model=2**15)),
                    "weights do not match config.json"),
    "integer-tensor": (lambda f: retype(f, "blocks.0.mlp.0.weight", lambda t: t.to(torch.int64)),
                       "dtype 'I64': a checkpoint holds floating-point weights only"),
    "boolean-tensor": (lambda f: retype(f, "ln_f.weight", lambda t: t > 0), "dtype 'BOOL'"),
    "overlapping-tensors": (_overlap, "not a valid safetensors file"),
    "trailing-bytes": (_trailing, "its header describes"),
    "header-length-huge": (_header_claims_too_much, "its header claims"),
    "unexpected-tensor": (_extra_tensor, "unexpected adapter.weight"),
}


@pytest.mark.parametrize("case", list(DISAGREEMENTS))
def test_disagreement_with_the_weights_header_is_refused_before_a_model_is_built(folder, never_built, case):
    damage, words = DISAGREEMENTS[case]
    damage(folder)
    with pytest.raises(CheckpointError, match="^checkpoint 'ckpt'") as info:
        load_checkpoint(folder)
    assert words in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused(folder, value):
    retype(folder, "blocks.1.attn.qkv.weight", lambda t: t.index_fill(0, torch.tensor([3]), value))
    with pytest.raises(CheckpointError, match=r"NaN or infinite values \(blocks\.1\.attn\.qkv\.weight\)"):
        load_checkpoint(folder)


# =============================================================================================
# Memory: refused before allocation, with the process's peak RSS as the proof

PEAK = textwrap.dedent("""
    import json, sys
    # imported first: their memory is the baseline
    import safetensors.torch, tokenizers, torch, routed.checkpoint, routed.cli, routed.records, routed.sweep
    from routed.cli import main

    def peak():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    base = peak()
    code = main(sys.argv[1:])
    print(json.dumps({"code": code, "growth": peak() - base}))
""")


def peak_run(tmp_path: Path, *args, env=None) -> tuple[dict, str]:
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    script = write_text(tmp_path / "peak.py", PEAK)
    run = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "ROUTED_NUM_THREADS": "1",
                                           **(env or {})})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_training_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path):
    config = ModelConfig(vocab_size=2**20, d_model=2**15, n_heads=4)  # about 1 TB to train: no machine here has it
    args = ["train", "--corpus", "python-docs", "--vocab-size", config.vocab_size, "--d-model", config.d_model,
            "--out", tmp_path / "big", "--quiet"]
    result, stderr = peak_run(tmp_path, *args)
    assert result["code"] == 2
    assert stderr.startswith("error: memory: training this model (vocab_size=1048576") and " GB" in stderr, stderr
    assert "most of it for weights and optimiser state" in stderr
    assert result["growth"] < 128 * MB, result  # the weights alone would be 4 bytes x 35 G parameters
    assert not (tmp_path / "big").exists()


def test_loading_a_checkpoint_too_large_for_memory_is_refused_before_reading_it(folder, tmp_path):
    """A config and header that agree on 4.3 G parameters (a sparse 8.6 GB file): refused from the header."""
    from routed.weights import expected_shapes

    edit_json(folder / "config.json", lambda c: c["model"].update(vocab_size=2**20, d_model=4096, n_heads=4))
    config = ModelConfig.from_dict(json.loads((folder / "config.json").read_text())["model"])
    header, offset = {}, 0
    for name, shape in expected_shapes(config).items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    write_weights(folder / "model.safetensors", header, b"")
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) + offset)  # sparse: no disk and no memory behind it
    result, stderr = peak_run(tmp_path, "eval", "--checkpoint", folder, env={"ROUTED_MAX_MEMORY": "4G"})
    assert result["code"] == 2
    assert stderr.startswith("error: checkpoint 'ckpt': memory: evaluating this model") and "4.0 GB is available" in stderr
    assert result["growth"] < 128 * MB, result  # the file is 8.6 GB, the model would take 17 GB


def test_train_refuses_a_model_too_large_before_reading_the_corpus():
    with pytest.raises(MemoryLimitError, match=r"^memory: .* needs about [\d,.]+ GB"):
        routed.train.train(ModelConfig(vocab_size=2**20, d_model=2**15), TrainConfig(), "no-such-corpus")


@pytest.mark.parametrize("field, value", [("vocab_size", 2**21), ("n_layers", 257), ("d_model", 2**16),
                                          ("context_length", 2**18), ("n_heads", 2**11)])
def test_model_numbers_above_their_bound_are_refused(field, value):
    with pytest.raises(ValueError, match=f"^{field}: .* is above the limit of"):
        ModelConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("batch_size", 2**17), ("steps", 10**10), ("eval_tokens", 2**32)])
def test_training_numbers_above_their_bound_are_refused(field, value):
    with pytest.raises(ValueError, match=f"^{field}: .* is above the limit of"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("shape", [dict(), dict(n_layers=1, d_model=8, n_heads=2, vocab_size=257, context_length=3),
                                   dict(n_layers=5, d_model=48, n_heads=6)])
def test_parameter_count_and_shapes_are_the_models(shape):
    from routed.weights import expected_shapes

    config = ModelConfig(**shape)
    model = RoutedTransformer(config)
    assert parameter_count(config) == model.num_parameters()
    stored = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert expected_shapes(config) == stored and list(expected_shapes(config)) == list(stored)


def test_available_memory_honours_the_override(monkeypatch):
    monkeypatch.setenv("ROUTED_MAX_MEMORY", "512M")
    assert available_memory() <= 512 * MB
    assert parse_size("1.5G") == int(1.5 * 2**30) and parse_size("8gib") == 8 * 2**30
    for bad in ("lots", "-1G", "nanG", ""):
        with pytest.raises(ValueError, match="ROUTED_MAX_MEMORY"):
            parse_size(bad)


# =============================================================================================
# Hostile JSON: bounded reads, deep nesting, huge numbers, wrong types -> CheckpointError, never a crash

DEEP = "[" * 100_000 + "]" * 100_000


def _set(section, **values):
    return lambda c: c[section].update(values) if section else c.update(values)


CONFIG_CASES = {
    "deeply-nested": (lambda f: write_text(f / "config.json", '{"model": ' + DEEP + "}"), "nested more than 64"),
    "nested-under-an-extra-key": (lambda f: edit_json(f / "config.json", _set(None, notes=json.loads("[" * 80 + "]" * 80))),
                                  "nested more than 64"),
    "5000-digit-number": (lambda f: write_text(f / "config.json", f.joinpath("config.json").read_text().replace(
        '"d_model": 32', '"d_model": ' + "9" * 5000)), "not valid JSON"),
    "30-digit-number": (lambda f: edit_json(f / "config.json", _set("model", d_model=10**30)), "above the limit"),
    "infinite-dropout": (lambda f: edit_json(f / "config.json", _set("model", dropout=float("inf"))), "dropout"),
    "model-is-a-list": (lambda f: edit_json(f / "config.json", _set(None, model=[1, 2])), "model config"),
    "corpus-is-a-number": (lambda f: edit_json(f / "config.json", _set(None, corpus=5)), "corpus must be"),
    "layers-as-text": (lambda f: edit_json(f / "config.json", _set("model", n_layers="3")), "n_layers"),
    "weights-as-a-list": (lambda f: edit_json(f / "config.json", _set("train", layer_weights=[1, 2])), "layer_weights"),
    "fingerprint-is-a-dict": (lambda f: edit_json(f / "config.json", _set(None, fingerprint={})), "fingerprint"),
    "config-of-2-MB": (lambda f: write_text(f / "config.json", " " * (2 * MB) + "{}"), "limit of 1.0 MB"),
    "history-deeply-nested": (lambda f: write_text(f / "history.json", DEEP), "nested more than 64"),
    "history-wrong-types": (lambda f: write_text(f / "history.json", '[{"step": "ten", "val_ppl": []}]'),
                            "history.json is not a list of validation records"),
    "history-of-17-MB": (lambda f: write_text(f / "history.json", "[" + " " * (17 * MB) + "]"), "limit of 16.0 MB"),
    "tokenizer-of-65-MB": (lambda f: os.truncate(f / "tokenizer.json", 65 * MB), "limit of 64.0 MB"),
    "tokenizer-deeply-nested": (lambda f: write_text(f / "tokenizer.json", DEEP), "tokenizer.json cannot be read"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_hostile_json_is_refused_with_a_checkpoint_error(folder, case):
    damage, words = CONFIG_CASES[case]
    damage(folder)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    assert words in str(info.value) and "\n" not in str(info.value)[:300], str(info.value)[:300]


def test_a_huge_sweep_csv_is_refused(folder):
    from routed.checkpoint import read_sweep

    os.truncate(folder / "sweep.csv", 17 * MB)
    with pytest.raises(CheckpointError, match="limit of 16.0 MB"):
        read_sweep(folder)


# =============================================================================================
# No silent wrong results


def test_replacing_the_weights_but_not_the_config_is_never_answered_from_the_cache(tiny_world, tmp_path, capsys):
    for name in ("asymmetric_best", "standard_3l"):  # same shapes, same tokenizer, other weights
        shutil.copytree(tiny_world.checkpoints / name, tmp_path / name)
    a, b = tmp_path / "asymmetric_best", tmp_path / "standard_3l"
    argv = ["eval", "--checkpoint", a, "--json", "--threshold", "none"]
    assert run_main(argv) == 0  # fills the records cache for a's weights
    before = json.loads(capsys.readouterr().out)
    shutil.copy(b / "model.safetensors", a / "model.safetensors")  # config.json (and its fingerprint) kept
    assert run_main(argv) == 0
    after = json.loads(capsys.readouterr().out)
    assert run_main(["eval", "--checkpoint", b, "--json", "--threshold", "none"]) == 0
    of_b = json.loads(capsys.readouterr().out)
    assert after["ppl_by_exit"] == of_b["ppl_by_exit"] != before["ppl_by_exit"]
    assert load_checkpoint(a).fingerprint == load_checkpoint(b).fingerprint != load_checkpoint(a).meta["fingerprint"]


def poison_gradients(monkeypatch, at_call: int) -> None:
    """At the `at_call`-th gradient clipping, turn a weight into NaN while reporting a finite norm: the next
    step's loss is NaN, and no validation has seen finite weights since the run started."""
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def poisoned(parameters, *args, **kwargs):
        parameters = list(parameters)
        calls.append(1)
        norm = real(parameters, *args, **kwargs)
        if len(calls) == at_call:
            with torch.no_grad():
                parameters[0].fill_(float("nan"))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)


def test_a_run_without_finite_weights_saves_nothing_and_says_so(tmp_path, monkeypatch, capsys):
    corpus = write_text(tmp_path / "corpus.txt", repetitive_text(300))
    poison_gradients(monkeypatch, at_call=3)
    out = tmp_path / "ckpt"
    code = run_main(["train", *TINY_CLI_FLAGS, "--eval-interval", "100", "--corpus", corpus, "--device", "cpu",
                     "--out", out])
    assert code == 1
    err = capsys.readouterr().err
    assert "training stopped: the training loss is nan at step 4" in err and "nothing saved" in err, err
    assert not out.exists()


def test_a_diverged_run_says_so_in_its_checkpoint(tmp_path, monkeypatch, tiny_run, tiny_run_corpus):
    poison_gradients(monkeypatch, at_call=13)  # validations at steps 5 and 10 saw finite weights
    config = TrainConfig(**{**tiny_run.train_config.to_dict(), "steps": 20, "eval_interval": 5})
    result = routed.train.train(tiny_run.model_config, config, tiny_run_corpus, tokenizer=tiny_run.tokenizer)
    assert result.diverged == "the training loss is nan at step 14" and result.good_weights
    ckpt = load_checkpoint(save_trained(tmp_path / "ckpt", result))
    assert ckpt.meta["diverged"] == result.diverged and ckpt.meta["best_step"] in (5, 10)
    with torch.no_grad():
        result.model.blocks[0].ln1.weight.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="not saved: the weights are not finite"):
        save_trained(tmp_path / "other", result)
    assert not (tmp_path / "other").exists()


# =============================================================================================
# Tokenizer training: bounded on text without spaces, and cancellable


def test_tokenizer_training_on_a_long_run_without_spaces_is_fast():
    from routed.tokenizer import encode, train_tokenizer

    text = "a" * 400_000 + "\n" + repetitive_text(200)  # took about 100 s when BPE saw the run as one word
    started = time.perf_counter()
    tokenizer = train_tokenizer(text, 400)
    assert time.perf_counter() - started < 20
    assert encode(tokenizer, text).tolist() == tokenizer.encode(text).ids
    assert tokenizer.decode(encode(tokenizer, text).tolist()) == text


@settings(max_examples=40, deadline=None)
@given(runs=st.lists(st.tuples(st.sampled_from("ab.é\n "), st.integers(1, 700)), min_size=1, max_size=6))
def test_encoding_in_chunks_equals_whole_text_encoding_with_long_runs(runs):
    from routed.tokenizer import encode

    text = "".join(ch * n for ch, n in runs)
    assert encode(LONG_RUN_TOKENIZER, text).tolist() == LONG_RUN_TOKENIZER.encode(text).ids


def _long_run_tokenizer():
    from routed.tokenizer import train_tokenizer

    return train_tokenizer("b" * 3000 + "\n" + "ab. " * 500 + "\né" * 600, 300)


LONG_RUN_TOKENIZER = _long_run_tokenizer()


def test_tokenizer_training_stops_when_asked():
    from routed.tokenizer import TokenizerCancelled, train_tokenizer

    with pytest.raises(TokenizerCancelled):
        train_tokenizer(repetitive_text(100), 300, should_stop=lambda: True)
    polls = []
    with pytest.raises(TokenizerCancelled):  # text of 5,000 lines: stopped between chunks, after 2 polls
        train_tokenizer(repetitive_text(5000), 300, should_stop=lambda: polls.append(1) or len(polls) > 2)
    assert len(polls) == 3


def test_a_queued_run_is_cancelled_while_its_tokenizer_trains(tmp_path):
    from test_jobs import tiny_job

    from routed.jobs import JobQueue

    corpus = write_text(tmp_path / "big.txt", repetitive_text(150_000))  # about 4 MB: seconds of BPE training
    queue = JobQueue()
    job = queue.submit(tiny_job(tmp_path / "run", corpus, steps=5))
    while job.status == "queued":
        time.sleep(0.01)
    time.sleep(0.3)  # inside load_corpus / train_tokenizer
    job.cancel()
    deadline = time.monotonic() + 60
    while job.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status == "cancelled" and job.step == 0, (job.status, job.step, job.error)
    assert not (tmp_path / "run").exists()
