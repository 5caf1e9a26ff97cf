"""python -m routed generate: plain, routed and speculative text from a checkpoint, and clean refusals."""

from __future__ import annotations

import json

import pytest

from routed.cli import main


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def ckpt(tiny_world):
    return tiny_world.checkpoints / "asymmetric_best"


def generated(ckpt, capsys, *extra) -> dict:
    code, out, err = run(["generate", "--checkpoint", ckpt, "--prompt", "The tower is", "--max-new-tokens", 24,
                          "--json", *extra], capsys)
    assert code == 0, err
    return json.loads(out)


def test_each_mode_prints_text_ids_and_speed(ckpt, capsys):
    from routed.checkpoint import load_checkpoint
    from routed.tokenizer import decode

    tokenizer = load_checkpoint(ckpt).tokenizer
    plain = generated(ckpt, capsys)
    assert len(plain["token_ids"]) == 24 and plain["text"] == decode(tokenizer, plain["token_ids"])
    assert plain["tokens_per_s"] > 0 and plain["mode"] == "plain" and plain["notes"] == []
    spec = generated(ckpt, capsys, "--mode", "speculative", "--threshold", "none", "--draft-k", 3)
    assert spec["token_ids"] == plain["token_ids"]  # greedy: the full model's own output
    assert spec["draft_k"] == 3 and 0 <= spec["acceptance_rate"] <= 1 and spec["drafted"] > 0
    assert spec["mean_accepted_length"] == pytest.approx(spec["accepted"] / spec["rounds"])
    auto = generated(ckpt, capsys, "--mode", "speculative", "--threshold", "0.5")
    assert auto["draft_k"] == "auto" and auto["token_ids"] == plain["token_ids"]
    routed = generated(ckpt, capsys, "--mode", "routed", "--kv-policy", "recompute", "--threshold", "0.5")
    assert routed["kv_policy"] == "recompute" and routed["exits"] == [1, 3] and len(routed["token_ids"]) == 24


def test_sampling_is_seeded(ckpt, capsys):
    a = generated(ckpt, capsys, "--temperature", "1", "--seed", 3, "--mode", "speculative", "--draft-k", 2)
    b = generated(ckpt, capsys, "--temperature", "1", "--seed", 3, "--mode", "speculative", "--draft-k", 2)
    assert a["token_ids"] == b["token_ids"]


def test_text_output_and_a_prompt_longer_than_the_context(ckpt, capsys):
    prompt = "The small cat is quiet at night. " * 20  # far more than the 32-token context
    code, out, err = run(["generate", "--checkpoint", ckpt, "--prompt", prompt, "--max-new-tokens", 5], capsys)
    assert code == 0 and out.startswith(prompt)
    assert "note: the prompt is" in err and "sees its last 32 tokens" in err and "tokens/s (plain)" in err


@pytest.mark.parametrize("extra, message", [
    (["--mode", "speculative", "--draft-k", "0"], "error: draft_k: must be an integer within 1..32"),
    (["--mode", "speculative", "--draft-k", "1000"], "error: draft_k: must be an integer within 1..32"),
    (["--draft-k", "2"], "error: draft_k: --draft-k applies to --mode speculative only"),
    (["--mode", "speculative", "--draft-k", "two"], "draft k must be an integer or 'auto'"),
    (["--max-new-tokens", str(10**9)], "error: max_new_tokens: at most 4,096 per request"),
    (["--temperature", "-1"], "error: temperature: must be >= 0"),
    (["--prompt", ""], "error: prompt: empty"),
    (["--device", "tpu"], "error: device:"),
])
def test_bad_input_is_one_clear_error(ckpt, capsys, extra, message):
    code, out, err = run(["generate", "--checkpoint", ckpt, "--prompt", "The", *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err and out == ""


@pytest.mark.parametrize("name", ["standard_1l", "standard_3l"])
def test_a_model_with_one_trained_exit_cannot_decode_speculatively(tiny_world, capsys, name):
    code, _, err = run(["generate", "--checkpoint", tiny_world.checkpoints / name, "--prompt", "The",
                        "--mode", "speculative"], capsys)
    assert code == 2 and "error: exits: speculative decoding drafts with an early exit" in err
