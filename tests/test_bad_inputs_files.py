"""Bad input on the file system: output paths that hold the user's things, odd files as input, bad names.

Every command and the app leave what routed did not write exactly as it was (checked byte for byte) and
refuse with one clear line (CLI: exit 2) before training starts; --force replaces only routed's own
outputs. Inputs that are not regular files (a FIFO, a device) are refused at once instead of blocking.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_CLI_FLAGS, repetitive_text, write_text
from test_app import errors, open_page
from test_bad_inputs import SMALL_RUN, assert_one_line, train_form
from test_cli import run_main
from test_jobs import tiny_job

from routed.checkpoint import load_checkpoint, train_state_path
from routed.jobs import run_job

ROOT = Path(__file__).resolve().parent.parent


def snapshot(path: Path) -> dict:
    """Every file and link under `path` (or `path` itself) with its bytes or target: to prove nothing changed."""
    if path.is_symlink() or path.is_file():
        return {path.name: os.readlink(path) if path.is_symlink() else path.read_bytes()}
    return {str(p.relative_to(path)): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir")
            for p in sorted(path.rglob("*"))}


def user_folder(path: Path) -> Path:
    write_text(path / "thesis.tex", "my work")
    write_text(path / "data" / "results.csv", "1,2,3\n")
    return path


def refuse(argv, capsys, *words) -> str:
    """Run the CLI; assert exit 2 with one `error:` line holding `words`; return that line."""
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_text(tmp_path / "corpus.txt", repetitive_text(300))


def train_argv(corpus, out, *flags):
    return ["train", "--corpus", corpus, "--out", out, *TINY_CLI_FLAGS, "--steps", "2", "--device", "cpu", *flags]


# =============================================================================================
# train --out


def _folder(tmp):
    return user_folder(tmp / "mine")


def _file(tmp):
    return write_text(tmp / "mine", "a file of mine")


def _link(tmp):
    target = user_folder(tmp / "elsewhere")
    (tmp / "mine").symlink_to(target)
    return tmp / "mine"


def _fifo(tmp):
    os.mkfifo(tmp / "mine")
    return tmp / "mine"


def _hf_model(tmp):  # a Hugging Face model folder has config.json, model.safetensors and tokenizer.json too
    folder = tmp / "mine"
    for name, text in (("config.json", '{"model_type": "gpt2"}'), ("model.safetensors", "x"), ("tokenizer.json", "{}")):
        write_text(folder / name, text)
    return folder


USER_THINGS = {"folder": (_folder, "holds files routed did not write"), "file": (_file, "is a file"),
               "link": (_link, "is a symbolic link"), "fifo": (_fifo, "is a FIFO"),
               "hf-model-folder": (_hf_model, "is not a routed checkpoint")}


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("thing", list(USER_THINGS))
def test_train_never_replaces_what_routed_did_not_write(tmp_path, corpus, capsys, thing, force):
    make, words = USER_THINGS[thing]
    out = make(tmp_path)
    before = snapshot(tmp_path)
    refuse(train_argv(corpus, out, *(["--force"] if force else [])), capsys, "out:", words, "never replaces")
    assert snapshot(tmp_path) == before


def test_train_refuses_the_current_folder(tmp_path, corpus, capsys, monkeypatch):
    project = user_folder(tmp_path / "project")
    monkeypatch.chdir(project)
    before = snapshot(tmp_path)
    for out in (".", "./", "data/..", "data"):
        refuse(train_argv(corpus, out, "--force"), capsys, "out:", "never replaces")
    assert snapshot(tmp_path) == before


def test_train_replaces_its_own_checkpoint_only_with_force(tmp_path, corpus, capsys):
    out = tmp_path / "ckpt"
    assert run_main(train_argv(corpus, out, "--seed", "1")) == 0
    first = snapshot(out)
    refuse(train_argv(corpus, out, "--seed", "2"), capsys, "already holds a routed checkpoint", "--force")
    assert snapshot(out) == first
    assert run_main(train_argv(corpus, out, "--seed", "2", "--force")) == 0
    assert load_checkpoint(out).train_config.seed == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "corpus.txt"]  # nothing else left behind


def test_force_never_deletes_a_users_file_inside_a_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "ckpt"
    assert run_main(train_argv(corpus, out)) == 0
    write_text(out / "notes.txt", "my notes on this model")
    before = snapshot(tmp_path)
    refuse(train_argv(corpus, out, "--force"), capsys, "holds files routed did not write (notes.txt)")
    assert snapshot(tmp_path) == before


def test_train_into_an_empty_folder_is_fine(tmp_path, corpus):
    (tmp_path / "ckpt").mkdir()
    assert run_main(train_argv(corpus, tmp_path / "ckpt")) == 0
    assert (tmp_path / "ckpt" / "config.json").is_file()


def test_resume_state_of_someone_else_or_of_an_interrupted_run(tmp_path, corpus, capsys):
    import shutil

    import torch

    from routed.checkpoint import save_train_state
    from routed.tokenizer import train_tokenizer

    out = tmp_path / "ckpt"
    state = user_folder(train_state_path(out))  # a folder of the user's under the hidden name
    before = snapshot(tmp_path)
    for flags in ([], ["--resume"], ["--force"]):
        refuse(train_argv(corpus, out, *flags), capsys, str(state), "never replaces")
    assert snapshot(tmp_path) == before
    shutil.rmtree(state)  # the user's own cleanup
    # the state of an interrupted run of ours: kept until the user says --resume or --force
    save_train_state(state, {"x": torch.zeros(1)}, {"step": 10}, train_tokenizer(repetitive_text(50), 260))
    before = snapshot(tmp_path)
    refuse(train_argv(corpus, out), capsys, "interrupted run", "--resume", "--force")
    assert snapshot(tmp_path) == before
    assert run_main(train_argv(corpus, out, "--force")) == 0
    assert not state.exists() and (out / "config.json").is_file()


def test_a_bad_name_is_refused_before_training(tmp_path, corpus, capsys):
    started = time.perf_counter()
    refuse(train_argv(corpus, tmp_path / ("x" * 101)), capsys, "out:", "limit is 100")
    refuse(train_argv(corpus, tmp_path / "my run"), capsys, "out:", "letters, digits")
    refuse(train_argv(corpus, tmp_path / "-dash"), capsys, "out:", "letters, digits")
    assert time.perf_counter() - started < 30  # refused up front, not after training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def test_an_unwritable_place_is_refused_before_training(corpus, capsys):
    refuse(train_argv(corpus, "/proc/routed-test/ckpt"), capsys, "out: cannot write in")


def test_a_file_where_a_parent_folder_should_be_is_refused_and_kept(tmp_path, corpus, capsys):
    mine = write_text(tmp_path / "results.csv", "my,own,table\n")
    before = snapshot(tmp_path)
    refuse(train_argv(corpus, mine / "ckpt"), capsys, "out:", "is not a folder")
    assert snapshot(tmp_path) == before


# =============================================================================================
# sweep --csv, reproduce --out / --export


@pytest.fixture
def ckpt(tiny_world):
    return str(tiny_world.checkpoints / "asymmetric_best")


def test_sweep_csv_never_replaces_a_users_file(tmp_path, ckpt, capsys):
    mine = write_text(tmp_path / "results.csv", "my,own,table\n")
    os.mkfifo(tmp_path / "pipe.csv")
    folder = user_folder(tmp_path / "folder")
    before = snapshot(tmp_path)
    for target, words in ((mine, "was not written by routed"), (tmp_path / "pipe.csv", "is a FIFO"),
                          (folder, "is a folder and not a routed checkpoint")):
        for force in ([], ["--force"]):
            refuse(["sweep", "--checkpoint", ckpt, "--csv", target, *force], capsys, "csv:", words)
    assert snapshot(tmp_path) == before


def test_sweep_csv_replaces_its_own_file_only_with_force(tmp_path, ckpt, capsys):
    out = tmp_path / "sweep.csv"
    assert run_main(["sweep", "--checkpoint", ckpt, "--csv", out, "--thresholds", "0.5"]) == 0
    first = out.read_bytes()
    refuse(["sweep", "--checkpoint", ckpt, "--csv", out, "--thresholds", "0.9"], capsys, "exists", "--force")
    assert out.read_bytes() == first
    assert run_main(["sweep", "--checkpoint", ckpt, "--csv", out, "--thresholds", "0.9", "--force"]) == 0
    assert out.read_bytes() != first and out.read_text().splitlines()[1].startswith("0.9,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv"]  # no temporary file left


def test_reproduce_refuses_a_users_folder_and_report_before_training(tmp_path, capsys):
    folder = user_folder(tmp_path / "folder")
    write_text(tmp_path / "taken.md", "# My own notes\n")
    (tmp_path / "taken").mkdir()
    before = snapshot(tmp_path)
    refuse(["reproduce", "--quick", "--out", folder], capsys, "out:", "did not write")
    refuse(["reproduce", "--quick", "--out", tmp_path / "taken"], capsys, "report", "was not written by routed")
    assert snapshot(tmp_path) == before


def test_reproduce_export_refuses_a_users_folder_and_needs_force_for_its_own(tmp_path, tiny_world, capsys):
    dest = tmp_path / "checkpoints"
    user_folder(dest / "x-lpt")
    before = snapshot(tmp_path)
    argv = ["reproduce", "--quick", "--out", tmp_path / "repro", "--export", dest, "--export-prefix", "x-"]
    refuse([*argv, "--force"], capsys, "export:", "x-lpt", "never replaces")
    assert snapshot(tmp_path) == before
    import shutil

    shutil.rmtree(dest / "x-lpt")  # the user's own cleanup
    shutil.copytree(tiny_world.checkpoints / "asymmetric_best", dest / "x-asymmetric_best")
    refuse(argv, capsys, "export:", "already holds a routed checkpoint", "--force")
    refuse(["reproduce", "--quick", "--out", tmp_path / "r", "--export", dest, "--export-prefix", "a b"], capsys,
           "export-prefix")


# =============================================================================================
# The app's Train page and the background queue


def test_train_page_refuses_a_name_held_by_a_users_folder(app_env):
    folder = user_folder(app_env.checkpoints / "my_run")
    before = snapshot(folder)
    at = train_form(app_env)
    assert len(errors(at)) == 1 and "already taken" in errors(at)[0], errors(at)
    assert any("No training runs yet" in c.value for c in at.caption)
    assert snapshot(folder) == before


@pytest.mark.parametrize("name, word", [("x" * 101, "limit is 100"), ("my run", "letters, digits"),
                                        ("../escape", "letters, digits"), (".hidden", "letters, digits")])
def test_train_page_refuses_a_bad_name_before_queueing(app_env, name, word):
    at = open_page("pages/train.py")
    at.radio(key="train_mode").set_value("custom layer weights")
    for key, value in SMALL_RUN.items():
        at.number_input(key=f"train_{key}").set_value(value)
    at.text_input(key="train_name").input(name)
    at.button(key="train_submit").click().run()
    assert not at.exception
    assert word in " ".join(errors(at)), errors(at)
    assert_one_line(errors(at)[-1])
    assert any("No training runs yet" in c.value for c in at.caption)


def test_queue_run_never_replaces_a_folder_that_appeared_meanwhile(tiny_world, tmp_path):
    out = user_folder(tmp_path / "run")  # appears after submit, before the run saves
    before = snapshot(tmp_path)
    job = run_job(tiny_job(out, tiny_world.corpus, steps=2, eval_interval=2))
    assert job.status == "failed" and "did not write" in job.error, job.error
    assert snapshot(tmp_path) == before


# =============================================================================================
# Inputs that are not regular files: refused at once, never read forever


def run_cli(*args, timeout=60):
    env = {**os.environ, "ROUTED_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "routed", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_fifo_or_a_device_as_corpus_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")  # nobody ever writes to it: reading would block forever
    folder = tmp_path / "folder"
    write_text(folder / "a.txt", "some text\n")
    os.mkfifo(folder / "b.txt")
    for corpus, words in ((tmp_path / "pipe.txt", "is a FIFO"), ("/dev/zero", "is a character device"),
                          (folder, "b.txt' is a FIFO")):
        result = run_cli("train", "--corpus", corpus, "--out", tmp_path / "out", "--quiet")  # timeout: a hang fails
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: corpus:") and words in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "history.json"])
def test_a_fifo_inside_a_checkpoint_is_refused_without_hanging(tiny_world, tmp_path, name):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_world.checkpoints / "asymmetric_best", folder)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    result = run_cli("eval", "--checkpoint", folder)
    assert result.returncode == 2 and "is a FIFO" in result.stderr and name in result.stderr, result.stderr
