"""The reproduction command in miniature: every preset over two seeds, report, resume, export."""

import csv

import pytest

from routed.checkpoint import list_checkpoints, load_checkpoint, read_sweep
from routed.config import PRESETS
from routed.diagnostics import read_diagnostics
from routed.reproduce import ReproduceSettings, compare, export_checkpoints, report_path, reproduce
from tests.helpers import repetitive_text


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    corpus = root / "corpus.txt"
    corpus.write_text(repetitive_text(lines=800), encoding="utf-8")
    settings = ReproduceSettings(corpus=str(corpus), seeds=2, steps=3, quick=True, alphas=False)
    out = root / "out"
    logs: list[str] = []
    reproduce(settings, out, log=logs.append)
    return settings, out, logs


def test_every_preset_is_trained_for_each_seed_and_lpt_routing_shares_lpt(reproduced):
    _, out, _ = reproduced
    runs = sorted(p.name for p in (out / "runs").iterdir())
    expected = sorted(f"{name}-s{seed}" for name in PRESETS if name != "lpt_routing" for seed in (0, 1))
    assert runs == expected
    assert all((out / "runs" / r / "result.json").exists() for r in runs)


def test_report_has_every_table_with_error_bars_and_verdicts(reproduced):
    _, out, _ = reproduced
    report = report_path(out).read_text()
    for heading in ("Final ranking", "Threshold analysis: standard_routing", "Threshold analysis: lpt", "claims, checked", "Regime"):
        assert heading in report
    assert "±" in report  # two seeds give a standard deviation
    with open(out / "final_ranking.csv") as f:
        ranking = list(csv.DictReader(f))
    assert [r["model"] for r in ranking] == ["asymmetric_best", "standard_routing", "lpt_routing", "lpt",
                                             "asymmetric_l2", "standard_3l", "standard_1l"]
    assert all(r["n_seeds"] == "2" for r in ranking)
    with open(out / "verdicts.csv") as f:
        verdicts = list(csv.DictReader(f))
    assert verdicts and {v["verdict"].split(" (")[0] for v in verdicts} <= {"held", "not held", "within noise"}
    sweep = read_sweep(out / "runs" / "asymmetric_best-s0" / "sweep.csv")
    assert len(sweep["threshold"]) == 1001


def test_a_second_invocation_resumes_and_keeps_finished_runs(reproduced):
    settings, out, _ = reproduced
    before = (out / "runs" / "standard_3l-s0" / "result.json").read_text()
    logs: list[str] = []
    reproduce(settings, out, log=logs.append)
    assert sum("done earlier, kept" in line for line in logs) == 12
    assert not any("training" in line for line in logs)
    assert (out / "runs" / "standard_3l-s0" / "result.json").read_text() == before


def test_export_writes_each_preset_with_its_own_threshold_and_sweep(reproduced, tmp_path):
    _, out, _ = reproduced
    export_checkpoints(out, tmp_path)
    assert list_checkpoints(tmp_path) == sorted(PRESETS)
    for name, preset in PRESETS.items():
        ckpt = load_checkpoint(tmp_path / name)
        assert ckpt.train_config.routing_threshold == preset.routing_threshold
        assert ckpt.model_config.n_layers == preset.n_layers
        assert read_sweep(tmp_path / name) is not None
        diagnostics = read_diagnostics(tmp_path / name, ckpt.fingerprint)  # the app's calibration view, offline
        assert diagnostics is not None and set(diagnostics["splits"]) == {"validation", "test"}


def test_export_prefix_names_the_copies_and_must_stay_a_plain_name(reproduced, tmp_path):
    from routed.checkpoint import CheckpointError

    _, out, _ = reproduced
    export_checkpoints(out, tmp_path, prefix="tiny-")
    assert list_checkpoints(tmp_path) == sorted(f"tiny-{name}" for name in PRESETS)
    with pytest.raises(CheckpointError, match="plain folder name"):
        export_checkpoints(out, tmp_path, prefix="../")
    assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.startswith("standard")) == []


def test_compare_uses_two_standard_errors():
    assert compare([10.0, 10.1, 9.9], [12.0, 12.1, 11.9]) == "better"
    assert compare([12.0, 12.1, 11.9], [10.0, 10.1, 9.9]) == "worse"
    assert compare([10.0, 11.0, 9.0], [10.2, 11.2, 9.2]) == "within noise"
