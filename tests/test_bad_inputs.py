"""The catalogue of bad input: the Python API, the CLI and every app page.

Each refusal is one clear line naming the problem (ValueError / CorpusError / CheckpointError; CLI:
exit code 2 and one `error:` line, no traceback; app: st.error, no exception) and nothing is lost
(no half-written checkpoint, no queued job, the form keeps its values). Odd but valid text is
routed, every token of it, and shown escaped.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import charts
import pytest
from helpers import TINY_CLI_FLAGS, tiny_model_config, tiny_train_config, write_text
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_app import errors, open_page
from test_cli import run_main

from routed.calibrate import threshold_for
from routed.cli import main
from routed.cli.args import layer_weights as _layer_weights
from routed.config import ModelConfig, TrainConfig, get_preset
from routed.data import Corpus, CorpusError, load_corpus
from routed.sweep import sweep
from routed.text import route_text
from routed.tokenizer import encode

ROOT = Path(__file__).resolve().parent.parent
NAN = math.nan
LONG_TEXT = ("The tower is very tall. A river was near the sea. 你好 🌊\n" * 4000)[:200_000]

# Valid but unusual text: routed without error, every character kept.
ODD_TEXTS = {
    "emoji": "Hello 👋🏽 family 👨‍👩‍👧 flag 🇫🇷 done",
    "cjk": "漢字かなカナ 한국어 混合 text",
    "rtl": "Arabic مرحبا بالعالم and Hebrew שלום עולם mixed",
    "control": "a\x00b\x1b[31mc\u202ed\x7f e\tf\r\ng",
    "html": "<script>alert(1)</script> <img src=x onerror=alert(1)> &amp; \"q\" 'a' </div>",
}
BLANK_TEXTS = {"empty": "", "whitespace": " \n\t\r \u2003 "}
SURROGATES = re.compile("[\ud800-\udfff]")


def assert_one_line(message: str, *words: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for word in words:
        assert word in message, (word, message)


# =============================================================================================
# Python API


@pytest.mark.parametrize("text", list(BLANK_TEXTS.values()), ids=list(BLANK_TEXTS))
def test_api_refuses_blank_text(tiny_run, text):
    with pytest.raises(ValueError, match="^text: nothing to route"):
        route_text(tiny_run.model, tiny_run.tokenizer, text, 0.5)


def test_api_refuses_text_that_is_not_a_string(tiny_run):
    with pytest.raises(ValueError, match="^text: must be a string, got bytes"):
        route_text(tiny_run.model, tiny_run.tokenizer, b"bytes", 0.5)


def assert_covers_every_token(routed, text: str, context: int) -> None:
    n = len(routed.tokens)
    assert "".join(routed.tokens) == text  # nothing dropped, no character split into U+FFFD
    assert len(routed.records) == n - 1 and routed.records.position.tolist() == list(range(1, n))
    assert routed.windows == math.ceil((n - 1) / context)


@pytest.mark.parametrize("text", list(ODD_TEXTS.values()), ids=list(ODD_TEXTS))
def test_api_routes_odd_text_whole(tiny_run, text):
    routed = route_text(tiny_run.model, tiny_run.tokenizer, text, 0.5)
    assert_covers_every_token(routed, text, tiny_run.model.config.context_length)


def test_api_routes_lone_surrogates_as_replacement_characters(tiny_run):
    # What Python makes of undecodable bytes in a command line (surrogateescape).
    routed = route_text(tiny_run.model, tiny_run.tokenizer, "caf\udce9 \ud800 ok", 0.5)
    assert "".join(routed.tokens) == "caf\ufffd \ufffd ok"


def test_api_windows_a_long_text_and_says_so(tiny_run):
    routed = route_text(tiny_run.model, tiny_run.tokenizer, LONG_TEXT, 0.5)
    context = tiny_run.model.config.context_length
    assert routed.windows > 1000
    assert_covers_every_token(routed, LONG_TEXT, context)


def _train_on_a_few_words():
    from routed.train import train

    return train(tiny_model_config(), tiny_train_config(steps=1), Corpus("few", "the cat sees.\n", "a dog.\n", "x\n"))


# (call, exception, what the message must start with); names and numbers of every API entry point.
API_CASES = {
    "unknown-corpus": (lambda: load_corpus("no-such-corpus"), CorpusError, "corpus: unknown corpus 'no-such-corpus'"),
    "unknown-preset": (lambda: get_preset("nope"), ValueError, "preset: unknown preset 'nope'"),
    "max-chars-negative": (lambda: load_corpus("python-docs", max_chars=-5), CorpusError, "max_chars"),
    "corpus-smaller-than-a-window": (_train_on_a_few_words, CorpusError, "corpus: the train split has"),
    "weight-negative": (lambda: TrainConfig(layer_weights={1: -0.5, 3: 1}), ValueError, "layer_weights"),
    "weight-nan": (lambda: TrainConfig(layer_weights={1: NAN, 3: 1}), ValueError, "layer_weights"),
    "weights-all-zero": (lambda: TrainConfig(layer_weights={1: 0, 3: 0}), ValueError, "layer_weights: all weights"),
    "weight-on-missing-layer": (
        lambda: TrainConfig(layer_weights={1: 0.5, 4: 0.5}).check_model(ModelConfig(n_layers=3)),
        ValueError,
        "layer_weights: layer(s) [4]",
    ),
    "weight-on-fractional-layer": (lambda: TrainConfig(layer_weights={1.5: 1}), ValueError, "layer_weights"),
    "threshold-negative": (lambda: TrainConfig(routing_threshold=-0.1), ValueError, "routing_threshold"),
    "threshold-above-1": (lambda: TrainConfig(routing_threshold=1.5), ValueError, "routing_threshold"),
    "threshold-nan": (lambda: TrainConfig(routing_threshold=NAN), ValueError, "routing_threshold"),
    "threshold-huge-int": (lambda: TrainConfig(routing_threshold=10**400), ValueError, "routing_threshold"),
    "steps-zero": (lambda: TrainConfig(steps=0), ValueError, "steps"),
    "steps-negative": (lambda: TrainConfig(steps=-3), ValueError, "steps"),
    "batch-size-zero": (lambda: TrainConfig(batch_size=0), ValueError, "batch_size"),
    "batch-size-negative": (lambda: TrainConfig(batch_size=-1), ValueError, "batch_size"),
    "learning-rate-zero": (lambda: TrainConfig(learning_rate=0.0), ValueError, "learning_rate"),
    "learning-rate-negative": (lambda: TrainConfig(learning_rate=-1e-3), ValueError, "learning_rate"),
    "learning-rate-nan": (lambda: TrainConfig(learning_rate=NAN), ValueError, "learning_rate"),
    "dropout-text": (lambda: ModelConfig.from_dict({"dropout": "0.1"}), ValueError, "dropout"),
    "seed-text": (lambda: TrainConfig.from_dict({"seed": "0"}), ValueError, "seed"),
    "config-not-a-mapping": (lambda: TrainConfig.from_dict(None), ValueError, "training config: must be a mapping"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_refuses_bad_names_and_numbers(case):
    call, error, start = API_CASES[case]
    with pytest.raises(error) as info:
        call()
    assert str(info.value).startswith(start), str(info.value)
    assert_one_line(str(info.value))


@pytest.mark.parametrize("threshold", [-0.1, 1.5, NAN, 10**400])
def test_api_refuses_bad_thresholds_when_routing(tiny_run, threshold):
    with pytest.raises(ValueError, match="^threshold"):
        route_text(tiny_run.model, tiny_run.tokenizer, "the cat sees the ball.", threshold)


def test_api_refuses_bad_thresholds_in_sweeps_and_calibration(tiny_run):
    from routed.records import evaluate

    records = evaluate(tiny_run.model, encode(tiny_run.tokenizer, "the cat sees the ball. " * 5))
    for thresholds in ([0.5, NAN], [-0.1], [1.5]):
        with pytest.raises(ValueError, match="^thresholds"):
            sweep(records, thresholds)
    with pytest.raises(ValueError, match="^target_compute: must be a number"):
        threshold_for(records, target_compute=NAN)


# =============================================================================================
# Command line


@pytest.fixture
def cli(tiny_world, tmp_path):
    """Paths for CLI cases: a checkpoint, good and bad corpus files, and an output folder that must not appear."""
    write_text(tmp_path / "few.txt", "the cat sees the ball.\n" * 20)
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xd8")
    return {
        "CK": str(tiny_world.checkpoints / "asymmetric_best"),
        "CORPUS": str(tiny_world.corpus),
        "FEW": str(tmp_path / "few.txt"),
        "BINARY": str(tmp_path / "binary.txt"),
        "OUT": str(tmp_path / "out"),
    }


def _train(*flags, corpus="CORPUS"):
    return ["train", "--corpus", corpus, "--out", "OUT", *TINY_CLI_FLAGS, *flags]


# argv (placeholders filled by the `cli` fixture) and a word the error line must hold.
CLI_CASES = {
    "route-empty-text": (["route", "--checkpoint", "CK", "--text", ""], "text: nothing to route"),
    "route-whitespace-text": (["route", "--checkpoint", "CK", "--text", " \n\t "], "text: nothing to route"),
    "route-threshold-negative": (["route", "--checkpoint", "CK", "--text", "a b c", "--threshold=-0.1"], "threshold"),
    "route-threshold-above-1": (["route", "--checkpoint", "CK", "--text", "a b c", "--threshold", "1.5"], "threshold"),
    "route-threshold-nan": (["route", "--checkpoint", "CK", "--text", "a b c", "--threshold", "nan"], "threshold"),
    "route-threshold-word": (["route", "--checkpoint", "CK", "--text", "a b c", "--threshold", "high"], "threshold"),
    "eval-threshold-nan": (["eval", "--checkpoint", "CK", "--threshold", "nan"], "threshold"),
    "eval-unknown-corpus": (["eval", "--checkpoint", "CK", "--corpus", "no-such-corpus"], "unknown corpus"),
    "sweep-threshold-nan": (["sweep", "--checkpoint", "CK", "--thresholds", "0.5,nan"], "thresholds"),
    "sweep-threshold-negative": (["sweep", "--checkpoint", "CK", "--thresholds=-0.1,0.5"], "thresholds"),
    "sweep-no-thresholds": (["sweep", "--checkpoint", "CK", "--thresholds", ","], "thresholds"),
    "calibrate-target-nan": (["calibrate", "--checkpoint", "CK", "--target-compute", "nan"], "target_compute"),
    "calibrate-agreement-above-1": (["calibrate", "--checkpoint", "CK", "--agreement", "1.5"], "agreement: must be a number strictly between 0 and 1"),
    "calibrate-agreement-1": (["calibrate", "--checkpoint", "CK", "--agreement", "1"], "agreement"),
    "calibrate-agreement-zero": (["calibrate", "--checkpoint", "CK", "--agreement", "0"], "agreement"),
    "calibrate-agreement-nan": (["calibrate", "--checkpoint", "CK", "--agreement", "nan"], "agreement"),
    "calibrate-delta-zero": (["calibrate", "--checkpoint", "CK", "--agreement", "0.9", "--delta", "0"], "delta: must be"),
    "calibrate-delta-above-1": (["calibrate", "--checkpoint", "CK", "--agreement", "0.9", "--delta", "2"], "delta"),
    "calibrate-delta-alone": (["calibrate", "--checkpoint", "CK", "--target-compute", "70", "--delta", "0.1"], "delta: goes with --agreement"),
    "lens-empty-text": (["lens", "--checkpoint", "CK", "--text", ""], "text: nothing to look at"),
    "lens-one-token": (["lens", "--checkpoint", "CK", "--text", "a"], "at least two tokens"),
    "train-unknown-preset": (_train("--preset", "nope"), "unknown preset 'nope'"),
    "train-unknown-corpus": (_train(corpus="no-such-corpus"), "unknown corpus 'no-such-corpus'"),
    "train-corpus-not-utf8": (_train(corpus="BINARY"), "not UTF-8"),
    "train-corpus-smaller-than-a-window": (_train("--context-length", "512", corpus="FEW"), "corpus"),
    "train-max-chars-negative": (_train("--max-chars", "-5"), "max_chars"),
    "train-weight-negative": (_train("--layer-weights", "1:-0.5,3:1"), "layer_weights"),
    "train-weight-nan": (_train("--layer-weights", "1:nan,3:1"), "layer_weights"),
    "train-weights-all-zero": (_train("--layer-weights", "1:0,3:0"), "layer_weights: all weights are zero"),
    "train-weight-on-missing-layer": (_train("--layer-weights", "1:0.5,4:0.5"), "layer(s) [4]"),
    "train-weights-garbled": (_train("--layer-weights", "1=0.5"), "LAYER:WEIGHT"),
    "train-threshold-negative": (_train("--threshold=-0.1"), "routing_threshold"),
    "train-threshold-above-1": (_train("--threshold", "1.5"), "routing_threshold"),
    "train-threshold-nan": (_train("--threshold", "nan"), "routing_threshold"),
    "train-steps-zero": (_train("--steps", "0"), "steps"),
    "train-steps-negative": (_train("--steps", "-3"), "steps"),
    "train-batch-size-zero": (_train("--batch-size", "0"), "batch_size"),
    "train-batch-size-negative": (_train("--batch-size", "-1"), "batch_size"),
    "train-lr-zero": (_train("--lr", "0"), "learning_rate"),
    "train-lr-negative": (_train("--lr", "-0.001"), "learning_rate"),
    "train-lr-nan": (_train("--lr", "nan"), "learning_rate"),
    "train-epochs-zero": (_train("--epochs", "0"), "epochs"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_refuses_with_one_error_line_and_writes_nothing(cli, capsys, case):
    argv, word = CLI_CASES[case]
    assert run_main([cli.get(a, a) for a in argv]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(lines) == 1 and word in lines[0], captured.err
    assert not Path(cli["OUT"]).exists()


def test_cli_refuses_a_layer_given_twice():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="layer 1 is given twice"):
        _layer_weights("1:0.7,1:0.3,3:0.3")


@pytest.mark.parametrize("text", [*ODD_TEXTS.values(), LONG_TEXT], ids=[*ODD_TEXTS, "200k-chars"])
def test_cli_routes_odd_and_long_text(cli, capsys, text):
    assert main(["route", "--checkpoint", cli["CK"], "--text", text, "--threshold", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    windows, context = re.search(r"; (\d+) window\(s\) of (\d+)$", lines[0]).groups()
    n = int(lines[-1].split()[1].split("/")[1])  # "shallow k/n tokens (...)": every predicted token
    assert len(lines) == n + 4 and int(windows) == math.ceil(n / int(context))
    if text is LONG_TEXT:
        assert int(windows) > 1000


def test_cli_routes_undecodable_argv_bytes_in_a_real_process(cli):
    # Bytes that are not UTF-8 reach Python as lone surrogates.
    command = [sys.executable, "-m", "routed", "route", "--checkpoint", cli["CK"], "--text", b"caf\xe9 \xff the cat"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr.decode(errors="replace")
    assert b"shallow " in result.stdout


# =============================================================================================
# App pages


def heatmap_text(at) -> str:
    """The text a reader sees in the Token routing chart (its tokens as drawn, joined)."""
    return charts.routing_paths(at)[0]


def route_in_app(text: str):
    at = open_page("pages/token_routing.py")
    at.text_area(key="routing_text").set_value(text).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("text", list(BLANK_TEXTS.values()), ids=list(BLANK_TEXTS))
def test_app_asks_for_text_when_blank(app_env, text):
    at = route_in_app(text)
    assert errors(at) == ["Enter some text to route."]


@pytest.mark.parametrize("text", list(ODD_TEXTS.values()), ids=list(ODD_TEXTS))
def test_app_shows_odd_text_whole_and_escaped(app_env, text):
    at = route_in_app(text)
    assert not errors(at)
    rendered = "".join(h.value for h in at.get("html")).lower()
    assert "<script" not in rendered and "<img" not in rendered and "\x00" not in rendered
    # Control characters and bidi overrides are shown as escapes, line breaks and tabs as signs, the rest as typed.
    shown = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202e]", lambda m: repr(m.group())[1:-1], text)
    shown = shown.replace("\r", "␍").replace("\t", "⇥").replace("\n", "↵\n")
    assert heatmap_text(at) == shown


def test_app_windows_a_long_text_and_says_so(app_env):
    at = route_in_app(LONG_TEXT)
    assert not errors(at)
    captions = " ".join(c.value for c in at.caption)
    assert re.search(r"cut into [\d,]+ windows", captions), captions
    assert "The text shows the first 2,000 of" in captions
    assert len(charts.routing_tokens(at)) == 2_000  # drawn up to the cap


def test_app_asks_for_a_prompt_before_generating(app_env):
    at = open_page("pages/generate.py")
    at.text_input(key="gen_prompt").set_value("   ")
    at.button(key="gen_run").click().run()
    assert not at.exception and errors(at) == ["Enter a prompt to generate from."]


def test_app_says_when_a_checkpoints_corpus_is_unknown(app_env):
    (app_env.checkpoints / "asymmetric_best" / "sweep.csv").unlink()
    app_env.corpus.rename(app_env.corpus.with_suffix(".gone"))
    try:
        at = open_page("pages/home.py")
        assert len(at.error) == 1 and "unknown corpus" in at.error[0].value
    finally:
        app_env.corpus.with_suffix(".gone").rename(app_env.corpus)


# Small settings, so that a case the page wrongly accepts trains for a moment only.
SMALL_RUN = {"d_model": 32, "n_heads": 2, "context": 32, "vocab": 300, "batch": 4, "steps": 5, "eval_interval": 5}


def train_form(app_env, upload: bytes | None = None, **settings):
    """The Train page with the small custom run, an optional upload, and `settings` over the defaults."""
    at = open_page("pages/train.py")
    at.radio(key="train_mode").set_value("custom layer weights")
    for key, value in (SMALL_RUN | settings).items():
        widget = at.slider(key=f"train_{key}") if key in ("alpha", "l2") else at.number_input(key=f"train_{key}")
        widget.set_value(value)
    if upload is not None:
        at.selectbox(key="train_corpus").set_value("upload a .txt file")
        at.file_uploader(key="train_upload").upload("corpus.txt", upload, "text/plain")
    at.text_input(key="train_name").input("my_run")
    at.button(key="train_submit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# Steps, batch size and learning rate have bounded inputs on this page (the API and CLI cases cover them).
TRAIN_CASES = {
    "upload-binary": ({"upload": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xd8"}, "not UTF-8"),
    "upload-nul-bytes": ({"upload": b"\x00" * 64}, "binary"),
    "upload-empty": ({"upload": b" \n\n "}, "holds no text"),
    "upload-over-the-limit": ({"upload": b"a" * (20 * 2**20 + 1)}, "the limit is 20 MB"),
    "l2-weight-in-a-1-layer-model": ({"n_layers": 1, "l2": 0.5}, "layer(s) [2]"),
    "l2-weight-in-a-2-layer-model": ({"n_layers": 2, "l2": 0.5}, "L2 is the last layer"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_page_refuses_before_queueing_and_keeps_the_form(app_env, case):
    settings, word = TRAIN_CASES[case]
    at = train_form(app_env, **settings)
    assert len(errors(at)) == 1 and word in errors(at)[0], errors(at)
    assert_one_line(errors(at)[0])
    assert any("No training runs yet" in c.value for c in at.caption)  # nothing queued
    assert at.text_input(key="train_name").value == "my_run"
    assert not (app_env.checkpoints / "my_run").exists()


def test_train_page_reports_a_corpus_smaller_than_a_window(app_env):
    at = train_form(app_env, upload=b"the cat sees the ball.\n" * 20, context=512)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the run fails in the background, once the corpus is tokenized
        status = next((m.value for m in at.markdown if "my_run" in m.value), "")
        if "failed" in status or "done" in status:
            break
        time.sleep(0.5)
        at.run()
    assert "failed" in status, status
    assert len(errors(at)) == 1 and errors(at)[0].startswith("corpus: the train split has"), errors(at)
    assert not (app_env.checkpoints / "my_run").exists()


# =============================================================================================
# Fuzzing

ANY_CHAR = st.characters(exclude_categories=())  # surrogates included


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(ANY_CHAR, max_size=80), threshold=st.none() | st.floats(0, 1))
@example(text="\x00", threshold=0.5)
@example(text="a\ud800", threshold=None)
def test_fuzz_any_text_is_routed_or_refused_as_documented(tiny_run, text, threshold):
    clean = SURROGATES.sub("\ufffd", text)
    try:
        routed = route_text(tiny_run.model, tiny_run.tokenizer, text, threshold)
    except ValueError as exc:  # blank, or a single token: nothing to predict
        assert str(exc).startswith("text:")
        assert not text.strip() or len(encode(tiny_run.tokenizer, clean)) < 2
        return
    assert_covers_every_token(routed, clean, tiny_run.model.config.context_length)


ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) | st.just(10**400),
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.dictionaries(st.integers() | st.floats() | st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=4,
)


def config_dicts(cls):
    names = list(cls().to_dict())
    return (
        st.dictionaries(st.sampled_from(names) | st.text(max_size=4) | st.integers(), ANY_VALUE, max_size=5) | ANY_VALUE
    )


@settings(max_examples=100, deadline=None)
@given(data=config_dicts(TrainConfig))
@example(data={"layer_weights": {1: 10**400}})
@example(data={"layer_weights": {float("inf"): 1.0}})
@example(data={1: 2, "a": 3})
def test_fuzz_train_config_from_dict_raises_only_value_error(data):
    try:
        TrainConfig.from_dict(data)
    except ValueError as exc:
        assert_one_line(str(exc)[:2000])


@settings(max_examples=100, deadline=None)
@given(data=config_dicts(ModelConfig))
@example(data={"dropout": "0.1"})
@example(data={"dropout": None, "n_layers": 10**400})
def test_fuzz_model_config_from_dict_raises_only_value_error(data):
    try:
        ModelConfig.from_dict(data)
    except ValueError as exc:
        assert_one_line(str(exc)[:2000])


LAYER_WEIGHT_TEXT = st.text(max_size=20) | st.lists(
    st.tuples(
        st.integers(-2, 6) | st.text("0123456789.-e", max_size=4), st.floats() | st.text("0123456789.-ein", max_size=5)
    ),
    min_size=1,
    max_size=4,
).map(lambda pairs: ",".join(f"{layer}:{weight}" for layer, weight in pairs))


@settings(max_examples=100, deadline=None)
@given(text=LAYER_WEIGHT_TEXT)
@example(text="1:1e999")
@example(text="99999999999999999999:1")
def test_fuzz_cli_layer_weights_raise_only_argparse_or_value_errors(text):
    import argparse

    try:
        weights = _layer_weights(text)
    except argparse.ArgumentTypeError:
        return
    try:
        TrainConfig(layer_weights=weights).check_model(ModelConfig(n_layers=3))
    except ValueError as exc:
        assert str(exc).startswith("layer_weights"), exc
