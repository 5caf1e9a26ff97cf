"""The command line: train -> eval / route / sweep / calibrate on a tiny checkpoint, and clean errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_CLI_FLAGS, repetitive_text, write_text

from routed.cli import main

ROOT = Path(__file__).resolve().parent.parent
PRESET_NAMES = [
    "standard_3l",
    "standard_1l",
    "standard_routing",
    "asymmetric_best",
    "asymmetric_l2",
    "lpt",
    "lpt_routing",
]
SWEEP_COLUMNS = "threshold,routed_ppl,shallow_pct,compute_pct,flops_pct,shallow_ppl,deep_ppl,oracle_ppl,routed_bpb,shallow_bpb,deep_bpb,oracle_bpb"


def run_main(argv):
    """main(argv)'s exit code, also when argparse exits."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def run_cli(*args, env_overrides=None):
    env = {**os.environ, **(env_overrides or {})}
    return subprocess.run(
        [sys.executable, "-m", "routed", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A corpus file and a checkpoint trained from it through `python -m routed train` (main)."""
    root = tmp_path_factory.mktemp("cli")
    corpus = write_text(root / "corpus.txt", repetitive_text(300))
    checkpoint = root / "ckpt"
    with pytest.MonkeyPatch.context() as mp:
        import routed.train

        mp.setenv("ROUTED_CACHE_DIR", str(root / "cache"))
        mp.setattr(routed.train, "default_threads", lambda: 1)
        code = main(
            ["train", "--preset", "asymmetric_best", "--corpus", str(corpus), "--out", str(checkpoint), *TINY_CLI_FLAGS]
        )
    assert code == 0
    return corpus, checkpoint


def test_help_runs_as_a_module():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("presets", "train", "eval", "route", "sweep"):
        assert command in result.stdout


def test_presets_lists_the_seven_presets(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "name"
    assert [line.split()[0] for line in lines[1:]] == PRESET_NAMES


def test_train_writes_a_checkpoint(workspace):
    corpus, checkpoint = workspace
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "config.json",
        "history.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    assert config["preset"] == "asymmetric_best"
    assert config["model"] | {"vocab_size": 300} == dict(
        vocab_size=300, n_layers=3, d_model=32, n_heads=2, context_length=16, dropout=0.0
    )
    assert config["train"]["layer_weights"] == {"1": 0.7, "2": 0.0, "3": 0.3}
    assert config["train"]["routing_threshold"] == 0.95
    assert (config["train"]["steps"], config["train"]["batch_size"], config["train"]["eval_interval"]) == (20, 8, 10)
    assert config["corpus"]["name"] == str(corpus)
    history = json.loads((checkpoint / "history.json").read_text(encoding="utf-8"))
    assert [r["step"] for r in history] == [10, 20]


def test_train_reports_where_it_saved(tmp_path, capsys, workspace):
    corpus, _ = workspace
    out = tmp_path / "small"
    flags = [f if f != "20" else "2" for f in TINY_CLI_FLAGS]  # two steps
    assert main(["train", "--preset", "lpt", "--corpus", str(corpus), "--out", str(out), *flags]) == 0
    stdout = capsys.readouterr().out
    assert f"saved {out}" in stdout
    assert "validation PPL by exit" in stdout
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["train"]["routing_threshold"] is None


def test_eval_json(workspace, capsys):
    _, checkpoint = workspace
    assert main(["eval", "--checkpoint", str(checkpoint), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"threshold", "routed_ppl", "shallow_pct", "compute_pct", "flops_pct", "ppl_by_exit"} <= set(result)
    assert result["threshold"] == 0.95  # the checkpoint's own
    assert set(result["ppl_by_exit"]) == {"1", "2", "3"}
    assert 0 <= result["shallow_pct"] <= 100
    assert 100 / 3 <= result["compute_pct"] <= 100
    assert result["routed_ppl"] > 1


def test_eval_without_routing_is_the_last_exit(workspace, capsys, monkeypatch):
    _, checkpoint = workspace
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", "--threshold", "none"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["threshold"] is None and plain["shallow_pct"] == 0.0 and plain["compute_pct"] == 100.0
    assert plain["routed_ppl"] == pytest.approx(plain["ppl_by_exit"]["3"])
    # Another threshold reuses the cached records: the model does not run again.
    import routed.records

    monkeypatch.setattr(routed.records, "evaluate", lambda *a, **k: pytest.fail("records were recomputed"))
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", "--threshold", "0"]) == 0
    everything_shallow = json.loads(capsys.readouterr().out)
    assert everything_shallow["shallow_pct"] == 100.0
    assert everything_shallow["routed_ppl"] == pytest.approx(plain["ppl_by_exit"]["1"])


def test_eval_table(workspace, capsys):
    _, checkpoint = workspace
    assert main(["eval", "--checkpoint", str(checkpoint), "--split", "validation"]) == 0
    out = capsys.readouterr().out
    for label in ("exit 1: PPL per token", "exit 3: PPL per token", "bits per byte", "routed PPL", "Shallow%",
                  "Compute%", "FLOPs%", "(recompute execution"):
        assert label in out


def test_route_prints_a_table(workspace, capsys):
    _, checkpoint = workspace
    text = "the cat sees the ball.\nthe dog likes a tree.\n"
    assert main(["route", "--checkpoint", str(checkpoint), "--text", text, "--threshold", "0.2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("threshold 0.2 (max_softmax)")
    assert lines[1].split() == ["token", "confidence", "path", "NLL@1", "NLL@2", "NLL@3"]
    rows = lines[3:-1]
    assert rows and all(line.split()[-4] in ("shallow", "deep") for line in rows)
    assert lines[-1].startswith("shallow ") and lines[-1].endswith("%)")
    n_shallow = sum(line.split()[-4] == "shallow" for line in rows)
    assert lines[-1].split()[1] == f"{n_shallow}/{len(rows)}"


def test_sweep_writes_csv(workspace, tmp_path, capsys):
    _, checkpoint = workspace
    path = tmp_path / "sweep.csv"
    argv = ["sweep", "--checkpoint", str(checkpoint), "--thresholds", "0,0.3,0.6,1", "--csv", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| Threshold | PPL | bits/byte | Shallow% | Compute% | FLOPs% (recompute) |" in out
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert ",".join(rows[0]) == SWEEP_COLUMNS
    assert [float(r[0]) for r in rows[1:]] == [0.0, 0.3, 0.6, 1.0]
    shallow = [float(r[rows[0].index("shallow_pct")]) for r in rows[1:]]
    assert shallow[0] == 100.0 and shallow == sorted(shallow, reverse=True)


def _table_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| 0") or line.startswith("| 1")]


def test_sweep_sparse_mode_reports_sparse_ppl_equal_to_dense_at_the_extremes(workspace, capsys):
    _, checkpoint = workspace
    assert main(["sweep", "--checkpoint", str(checkpoint), "--thresholds", "0,1", "--mode", "sparse"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert len(rows) == 2
    for row in rows:  # all shallow, then all deep: the two executions are the same computation
        assert float(row[1]) == pytest.approx(float(row[6]), rel=1e-4)
        assert float(row[2]) == pytest.approx(float(row[7]), rel=1e-3)  # bits per byte too


def test_sparse_flops_are_one_ledger_whichever_command_prints_them(workspace, capsys):
    """`sweep --mode sparse`, `sweep --exits 1,3 --mode sparse` and `eval --mode sparse` price one execution alike."""
    _, checkpoint = workspace
    base = ["--checkpoint", str(checkpoint), "--split", "validation"]
    assert main(["sweep", *base, "--thresholds", "0.3", "--mode", "sparse"]) == 0
    two = _table_rows(capsys.readouterr().out)[0]
    assert main(["sweep", *base, "--thresholds", "0.3", "--mode", "sparse", "--exits", "1,3"]) == 0
    multi = _table_rows(capsys.readouterr().out)[0]
    assert main(["eval", *base, "--threshold", "0.3", "--mode", "sparse", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert two[-1] == multi[-1] == f"{result['sparse_flops_pct']:.1f}%"
    assert two[5] == multi[6] == f"{result['flops_pct']:.1f}%"  # the dense PPL's own execution, also alike
    assert result["sparse_execution"] == "propagate" and result["execution"] == "recompute"


@pytest.mark.parametrize("policy", ["propagate", "copy", "recompute", "drop"])
def test_eval_sparse_names_its_kv_policy_and_recompute_is_the_dense_ppl(workspace, capsys, policy):
    _, checkpoint = workspace
    base = ["--checkpoint", str(checkpoint), "--split", "validation", "--threshold", "0.3", "--mode", "sparse"]
    assert main(["eval", *base, "--kv-policy", policy, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sparse_execution"] == policy
    if policy == "recompute":  # the same computation as the notes' routing, priced by the same ledger entry
        assert result["sparse_ppl"] == pytest.approx(result["routed_ppl"], rel=1e-5)
        assert result["sparse_flops_pct"] == pytest.approx(result["flops_pct"])
    assert main(["sweep", *base[:4], "--thresholds", "0.3", "--mode", "sparse", "--kv-policy", policy]) == 0
    out = capsys.readouterr().out
    assert f"FLOPs% ({policy}) |" in out and _table_rows(out)[0][-1] == f"{result['sparse_flops_pct']:.1f}%"


def test_eval_refuses_an_unknown_kv_policy(workspace, capsys):
    _, checkpoint = workspace
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", str(checkpoint), "--mode", "sparse", "--kv-policy", "keep"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_sweep_with_three_exits_prints_each_exit_share(workspace, capsys):
    _, checkpoint = workspace
    assert main(["sweep", "--checkpoint", str(checkpoint), "--thresholds", "0,0.3,1", "--exits", "1,2,3"]) == 0
    out = capsys.readouterr().out
    assert "| Threshold | PPL | bits/byte | exit 1% | exit 2% | exit 3% | Compute% | FLOPs% (recompute) |" in out
    rows = _table_rows(out)
    for row in rows:
        assert sum(float(c.rstrip("%")) for c in row[3:6]) == pytest.approx(100.0, abs=0.2)
    assert rows[0][3] == "100.0%" and rows[-1][5] == "100.0%"


def test_calibrate_prints_json(workspace, capsys):
    _, checkpoint = workspace
    assert main(["calibrate", "--checkpoint", str(checkpoint), "--target-compute", "90"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["threshold"] <= 1
    assert result["validation"]["compute_pct"] <= 90 + 1e-9


def test_calibrate_with_a_guarantee_picks_on_validation_and_checks_on_test(workspace, capsys):
    _, checkpoint = workspace
    assert main(["calibrate", "--checkpoint", str(checkpoint), "--agreement", "0.8", "--delta", "0.2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    report = result["guarantee"]
    assert result["threshold"] == report["threshold"]
    if result["threshold"] is not None:
        pick = report["validation"]
        assert pick["upper_bound"] <= 0.2 + 1e-9 and pick["disagree"] <= pick["shallow"]
        assert report["test"]["held"] == (report["test"]["disagree"] <= 0.2 * report["test"]["shallow"])
    assert main(["calibrate", "--checkpoint", str(checkpoint), "--agreement", "0.8"]) == 0  # delta defaults to 0.1
    assert "fixed-sequence testing" in capsys.readouterr().out


def test_calibrate_says_when_no_threshold_meets_the_guarantee(workspace, capsys):
    _, checkpoint = workspace  # 99.99% with 99% certainty needs tens of thousands of shallow tokens
    assert main(["calibrate", "--checkpoint", str(checkpoint), "--agreement", "0.9999", "--delta", "0.01"]) == 0
    assert "falling back to deep-only" in capsys.readouterr().out
    assert main(["calibrate", "--checkpoint", str(checkpoint), "--agreement", "0.9999", "--delta", "0.01", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["threshold"] is None and result["test"]["shallow_pct"] == 0.0 and result["fallback"].startswith("deep-only")


def test_reliability_writes_diagnostics_beside_the_checkpoint(workspace, capsys, tmp_path):
    import shutil

    from routed.diagnostics import read_diagnostics

    _, checkpoint = workspace
    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    assert main(["reliability", "--checkpoint", str(copy), "--write"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "| exit | accuracy | ECE max_softmax |" in out
    diag = read_diagnostics(copy)
    test = diag["splits"]["test"]
    assert sum(test["settling"].values()) == test["tokens"]
    assert test["agreement"]["max_softmax"]["shallow"][0] == test["tokens"]  # threshold 0: every token exits
    assert sum(map(sum, test["exit_by_position"]["max_softmax"])) == test["tokens"]
    assert read_diagnostics(copy, fingerprint="another") is None  # made for other weights: not used


def test_lens_prints_every_layer_per_token(workspace, capsys):
    _, checkpoint = workspace
    assert main(["lens", "--checkpoint", str(checkpoint), "--text", "the cat sees the ball.", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["tokens"]
    assert rows and all(set(r["layers"]) == {"1", "2", "3"} for r in rows)
    assert all(r["layers"]["3"]["agrees_last"] and 1 <= r["settling_depth"] <= 3 for r in rows)


def bad_inputs(corpus, checkpoint, out):
    train = ["train", "--corpus", corpus, "--out", out, *TINY_CLI_FLAGS]
    return {
        "unknown-preset": [*train, "--preset", "nope"],
        "train-threshold-2": [*train, "--threshold", "2"],
        "weight-on-missing-layer": [*train, "--layer-weights", "1:0.5,4:0.5"],
        "unknown-corpus": ["train", "--corpus", "no-such-corpus", "--out", out],
        "eval-threshold-2": ["eval", "--checkpoint", checkpoint, "--threshold", "2"],
        "missing-checkpoint": ["eval", "--checkpoint", Path(out) / "missing"],
        "route-empty-text": ["route", "--checkpoint", checkpoint, "--text", "  "],
        "sweep-threshold-2": ["sweep", "--checkpoint", checkpoint, "--thresholds", "0.5,2"],
        "bad-split": ["eval", "--checkpoint", checkpoint, "--split", "dev"],
        "bad-layer-weights": [*train, "--layer-weights", "oops"],
        "no-command": [],
    }


@pytest.mark.parametrize("case", list(bad_inputs("c", "k", "o")))
def test_bad_input_exits_2_with_one_error_line(workspace, tmp_path, capsys, case):
    corpus, checkpoint = workspace
    argv = bad_inputs(corpus, checkpoint, tmp_path / "out")[case]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    result = run_cli("eval", "--checkpoint", tmp_path / "missing")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: checkpoint: {str(tmp_path / 'missing')!r} is not a folder"]
    assert result.stdout == ""
