"""Crashes and interruptions: SIGKILL mid-save, resuming a run, non-finite losses, concurrent writers,
and training under torchrun (DistributedDataParallel over gloo) against a single process."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_CLI_FLAGS, repetitive_text, tiny_model_config, tiny_train_config, write_text

import routed.train
from routed.checkpoint import list_checkpoints, load_checkpoint, train_state_path
from routed.cli import main
from routed.devices import pick_device
from routed.train import train

ROOT = Path(__file__).resolve().parent.parent


def subprocess_env(tmp_path: Path) -> dict:
    return {**os.environ, "ROUTED_NUM_THREADS": "1", "ROUTED_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONPATH": str(ROOT)}


def run_cli(tmp_path: Path, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "routed", *map(str, args)], cwd=ROOT, env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=300, **kwargs)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------
# Resume


def test_resumed_run_equals_an_uninterrupted_one(tiny_run_corpus, tiny_run, tmp_path):
    model_config = tiny_model_config(dropout=0.1)  # dropout: the random state must be restored too
    config = tiny_train_config(steps=12, eval_interval=4)
    common = dict(tokenizer=tiny_run.tokenizer)
    whole = train(model_config, config, tiny_run_corpus, state_dir=tmp_path / "whole", **common)

    steps_seen = []
    stopped = train(model_config, config, tiny_run_corpus, state_dir=tmp_path / "cut",
                    should_stop=lambda: len(steps_seen) >= 7, on_progress=lambda p: steps_seen.append(p.step), **common)
    assert stopped.cancelled and steps_seen[-1] == 7
    resumed_steps = []
    resumed = train(model_config, config, tiny_run_corpus, state_dir=tmp_path / "cut", resume=True,
                    on_progress=lambda p: resumed_steps.append(p.step), **common)

    assert resumed_steps == list(range(5, 13))  # from the state saved at the validation of step 4
    assert same_weights(resumed.model, whole.model)
    strip = [{k: v for k, v in h.items() if k != "elapsed_s"} for h in whole.history]
    assert [{k: v for k, v in h.items() if k != "elapsed_s"} for h in resumed.history] == strip


def test_resume_refuses_the_state_of_another_run(tiny_run_corpus, tiny_run, tmp_path):
    train(tiny_model_config(), tiny_train_config(steps=4, eval_interval=2), tiny_run_corpus,
          tokenizer=tiny_run.tokenizer, state_dir=tmp_path / "state")
    with pytest.raises(ValueError, match="resume: .*another run.*train"):
        train(tiny_model_config(), tiny_train_config(steps=4, eval_interval=2, learning_rate=1e-2), tiny_run_corpus,
              tokenizer=tiny_run.tokenizer, state_dir=tmp_path / "state", resume=True)


def test_sigkill_during_cli_training_then_resume_gives_the_uninterrupted_result(tmp_path):
    corpus = write_text(tmp_path / "corpus.txt", repetitive_text(300))
    flags = [*TINY_CLI_FLAGS, "--preset", "asymmetric_best", "--corpus", corpus, "--device", "cpu"]
    flags[flags.index("--steps") + 1], flags[flags.index("--eval-interval") + 1] = "60", "5"
    whole = run_cli(tmp_path, "train", *flags, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "cut"
    state = train_state_path(out)
    proc = subprocess.Popen([sys.executable, "-m", "routed", "train", *map(str, flags), "--out", str(out)],
                            cwd=ROOT, env=subprocess_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (state / "state.json").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.3))  # somewhere in the run, maybe in the middle of a save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run was killed before it finished, so no checkpoint yet"

    resumed = run_cli(tmp_path, "train", *flags, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not state.exists(), "a finished run leaves no resume state"
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(out)
    assert same_weights(a.model, b.model)
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]


# --------------------------------------------------------------------------------------------
# SIGKILL while saving, and two writers of one name

SAVER = textwrap.dedent("""
    import sys, torch
    from helpers import tiny_corpus
    from routed.checkpoint import save_checkpoint
    from routed.config import ModelConfig, TrainConfig
    from routed.tokenizer import train_tokenizer
    from routed.model import RoutedTransformer

    path, writer, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tokenizer = train_tokenizer(tiny_corpus().train, 300)
    torch.manual_seed(writer)
    # Big enough (about 12 MB) that a save takes a while, so a kill can land inside one.
    model = RoutedTransformer(ModelConfig(vocab_size=tokenizer.get_vocab_size(), d_model=256, n_heads=4, n_layers=4))
    for i in range(rounds):
        save_checkpoint(path, model, tokenizer, TrainConfig(), "tiny", "f", history=[{"writer": writer}],
                        extra={"writer": writer}, dtype=torch.float32)
        print("saved", i, flush=True)
""")


def start_saver(tmp_path: Path, path: Path, writer: int, rounds: int) -> subprocess.Popen:
    script = write_text(tmp_path / "saver.py", SAVER)
    env = {**subprocess_env(tmp_path), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.Popen([sys.executable, str(script), str(path), str(writer), str(rounds)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_whole(path: Path) -> int:
    """The checkpoint loads and its files all come from one writer; returns that writer."""
    ckpt = load_checkpoint(path)
    weights = (path / "model.safetensors").read_bytes()
    assert ckpt.meta["fingerprint"] == hashlib.sha256(weights).hexdigest()[:16]
    assert json.loads((path / "history.json").read_text()) == [{"writer": ckpt.meta["writer"]}]
    return ckpt.meta["writer"]


def test_sigkill_while_saving_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpts" / "model"
    for attempt in range(4):
        proc = start_saver(tmp_path, path, writer=attempt, rounds=1000)
        assert proc.stdout.readline().startswith("saved"), proc.stderr.read()  # at least one complete save
        time.sleep(random.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert assert_whole(path) == attempt
        assert list_checkpoints(path.parent) == ["model"]


def test_two_writers_of_one_name_never_mix_their_files(tmp_path):
    path = tmp_path / "ckpts" / "shared"
    procs = [start_saver(tmp_path, path, writer=w, rounds=15) for w in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert assert_whole(path) in (1, 2)
    assert sorted(p.name for p in path.parent.iterdir()) == ["shared"], "no temporary folders left"


# --------------------------------------------------------------------------------------------
# Non-finite loss


def poison_loss(monkeypatch, at_call: int, factor: float) -> None:
    """Multiply the training loss by `factor` (NaN, inf) at its `at_call`-th computation."""
    real, calls = routed.train.weighted_exit_loss, []

    def poisoned(model, inputs, targets, layer_weights):
        calls.append(1)
        loss, parts = real(model, inputs, targets, layer_weights)
        return (loss * factor if len(calls) == at_call else loss), parts

    monkeypatch.setattr(routed.train, "weighted_exit_loss", poisoned)


def test_nan_loss_stops_training_and_keeps_the_last_good_weights(tiny_run_corpus, tiny_run, monkeypatch):
    config = tiny_train_config(steps=20, eval_interval=4)
    steps = []  # the same run cancelled after step 4 holds the weights validated at step 4
    reference = train(tiny_run.model_config, config, tiny_run_corpus, tokenizer=tiny_run.tokenizer,
                      should_stop=lambda: len(steps) >= 4, on_progress=lambda p: steps.append(p.step))
    poison_loss(monkeypatch, at_call=7, factor=float("nan"))
    result = train(tiny_run.model_config, config, tiny_run_corpus, tokenizer=tiny_run.tokenizer)
    assert result.diverged == "the training loss is nan at step 7"
    assert [h["step"] for h in result.history] == [4] and result.best_step == 4
    assert same_weights(result.model, reference.model)
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values())


def test_cli_reports_a_diverged_run_and_saves_the_good_weights(tmp_path, monkeypatch):
    corpus = write_text(tmp_path / "corpus.txt", repetitive_text(300))
    poison_loss(monkeypatch, at_call=12, factor=float("inf"))
    monkeypatch.setattr(routed.train, "default_threads", lambda: 1)
    out = tmp_path / "ckpt"
    code = main(["train", *TINY_CLI_FLAGS, "--corpus", str(corpus), "--device", "cpu", "--out", str(out)])
    assert code == 1
    ckpt = load_checkpoint(out)
    assert [h["step"] for h in ckpt.history] == [10]
    assert train_state_path(out).exists(), "the state stays, for a look or a resume with other settings"


# --------------------------------------------------------------------------------------------
# Devices and torchrun


def test_device_is_picked_automatically_and_can_be_forced():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device().type == expected
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device: 'banana' is not a device"):
        pick_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda' is not available"):
            pick_device("cuda")


def test_torchrun_with_two_gloo_processes_matches_a_single_process(tmp_path):
    corpus = write_text(tmp_path / "corpus.txt", repetitive_text(300))
    flags = [*TINY_CLI_FLAGS, "--preset", "asymmetric_best", "--corpus", corpus, "--device", "cpu"]
    single = run_cli(tmp_path, "train", *flags, "--out", tmp_path / "single")
    assert single.returncode == 0, single.stderr
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "routed", "train", *map(str, flags), "--out", str(tmp_path / "ddp")],
        cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "single"), load_checkpoint(tmp_path / "ddp")
    assert (a.meta["processes"], b.meta["processes"]) == (1, 2)
    assert [h["step"] for h in b.history] == [h["step"] for h in a.history] == [10, 20]
    for ha, hb in zip(a.history, b.history):
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-4)
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, atol=2e-3, rtol=0)  # fp16 checkpoints
    assert list_checkpoints(tmp_path) == ["ddp", "single"]
