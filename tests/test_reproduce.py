"""The reproduction command in miniature: every preset over two seeds, report, resume, export."""

import csv
import json
import os
import re

import pytest
import torch

from routed.checkpoint import list_checkpoints, load_checkpoint, read_sweep
from routed.config import PRESETS
from routed.diagnostics import read_diagnostics
from routed.report import report_path
from routed.reproduce import ReproduceSettings, planned_runs, reproduce
from routed.reproduce_export import export_checkpoints
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
    for heading in ("Convergence", "Final ranking", "Threshold analysis: standard_routing", "Threshold analysis: lpt",
                    "claims, checked", "What exits", "What could produce the notes' numbers", "Regime"):
        assert heading in report
    assert "±" in report  # two seeds give a standard deviation
    with open(out / "final_ranking.csv") as f:
        ranking = list(csv.DictReader(f))
    assert [r["model"] for r in ranking] == ["asymmetric_best", "standard_routing", "lpt_routing", "lpt",
                                             "asymmetric_l2", "standard_3l", "standard_1l"]
    assert all(r["n_seeds"] == "2" for r in ranking)
    with open(out / "verdicts.csv") as f:
        verdicts = list(csv.DictReader(f))
    assert verdicts and {v["verdict"].split(" (")[0] for v in verdicts} <= {"held", "contradicted", "not shown", "not held"}
    tested = [v for v in verdicts if v["test"]]
    assert tested and all(v["p"] and v["ci_low"] and v["ci_high"] for v in tested)  # effect, CI and p, every one
    assert any(v["test"].startswith("block bootstrap") for v in tested)  # the threshold claims: within one model
    assert any(v["test"] == "paired t" for v in tested)  # between presets: seed-matched
    with open(out / "convergence.csv") as f:
        assert len(list(csv.DictReader(f))) == 12
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


def test_a_folder_of_other_settings_is_refused(reproduced):
    settings, out, _ = reproduced
    from dataclasses import replace

    with pytest.raises(ValueError, match="other settings .*steps"):
        reproduce(replace(settings, steps=5), out, log=lambda _: None)
    assert (out / "runs" / "standard_3l-s0" / "result.json").exists()


def test_runs_write_bpb_marker_free_and_every_token_sweeps(reproduced):
    _, out, _ = reproduced
    run = out / "runs" / "asymmetric_best-s0"
    clean, every = read_sweep(run / "sweep.csv"), read_sweep(run / "sweep_all.csv")
    assert (clean["routed_bpb"] > 0).all() and (every["routed_bpb"] > 0).all()
    import json

    result = json.loads((run / "result.json").read_text())
    assert result["convergence"]["status"] in ("converged", "not converged", "too few validations")
    assert set(result["what_exits"]) == {"0.5", "0.95"}


def test_the_alpha_sweep_holds_fixed_alphas_and_a_schedule():
    runs = {r.name: r for r in planned_runs(ReproduceSettings(alpha_schedules=[[0.9, 0.5]]))}
    assert {"alpha_0.3", "alpha_0.9", "alpha_0.9to0.5"} <= set(runs)
    schedule = runs["alpha_0.9to0.5"]
    assert schedule.layer_weights == {1: 0.9, 3: 0.1} and schedule.final_layer_weights == {1: 0.5, 3: 0.5}
    assert "alpha_0.9to0.5" not in {r.name for r in planned_runs(ReproduceSettings(alphas=False))}


class Interrupted(Exception):
    pass


def test_a_run_stopped_part_way_resumes_from_its_last_validation(tmp_path, monkeypatch):
    import routed.checkpoint
    from routed.checkpoint import train_state_path
    from routed.reproduce import prepare, train_run

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(repetitive_text(lines=800), encoding="utf-8")
    settings = ReproduceSettings(corpus=str(corpus), seeds=1, steps=30, quick=True, alphas=False)
    loaded = prepare(settings, tmp_path)
    run = next(r for r in planned_runs(settings) if r.name == "asymmetric_best")
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    train_run(run, 0, settings, *loaded, whole, log=lambda line: None)

    real_save = routed.checkpoint.save_train_state

    def save_then_die(*args, **kwargs):  # a kill right after the step-15 state reached the disk
        real_save(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(routed.checkpoint, "save_train_state", save_then_die)
    with pytest.raises(Interrupted):
        train_run(run, 0, settings, *loaded, parted, log=lambda line: None)
    state = train_state_path(parted / "checkpoint")
    assert (state / "state.json").is_file() and not (parted / "train.json").exists()
    monkeypatch.setattr(routed.checkpoint, "save_train_state", real_save)

    logs: list[str] = []
    train_run(run, 0, settings, *loaded, parted, log=logs.append)
    assert any("resuming" in line for line in logs)
    steps = [int(m.group(1)) for line in logs if (m := re.search(r"step (\d+)/30", line))]
    assert steps and min(steps) == 16  # steps 1-15 were not trained again
    assert not state.exists()  # finished: the state is removed
    a, b = load_checkpoint(whole / "checkpoint").model.state_dict(), load_checkpoint(parted / "checkpoint").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [h["step"] for h in json.loads((parted / "train.json").read_text())["history"]]
    assert history == [15, 30]


def test_the_default_budget_is_written_into_the_settings(tmp_path, monkeypatch):
    import routed.reproduce
    from routed.cli import main
    from routed.reproduce import DEFAULT_EPOCHS, check_settings

    seen = []
    monkeypatch.setattr(routed.reproduce, "reproduce", lambda settings, out, **_: seen.append(settings))
    assert main(["reproduce", "--out", str(tmp_path / "a")]) == 0
    assert main(["reproduce", "--steps", "100", "--out", str(tmp_path / "b")]) == 0
    assert seen[0].epochs == DEFAULT_EPOCHS and seen[0].budget()["epochs"] == DEFAULT_EPOCHS
    assert seen[1].epochs is None and seen[1].budget()["steps"] == 100
    # a folder whose runs used an unstated default is not continued under another budget
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "settings.json").write_text(json.dumps({"corpus": "wikitext-2", "seeds": 3, "epochs": None}))
    with pytest.raises(ValueError, match=f"epochs None there, {DEFAULT_EPOCHS!r} now"):
        check_settings(tmp_path / "old", seen[0])


def test_every_run_trains_its_whole_budget():
    from routed.reproduce import train_config_of

    for settings in (ReproduceSettings(), ReproduceSettings(steps=9600), ReproduceSettings(quick=True)):
        for run in planned_runs(settings):
            assert train_config_of(run, 0, settings).patience is None  # no early stop on validation noise


def test_export_only_ships_a_finished_folder_without_training(reproduced, tmp_path, capsys):
    import shutil

    from routed.cli import main

    _, out, _ = reproduced
    runs_before = sorted(p.name for p in (out / "runs").rglob("*"))
    assert main(["reproduce", "--out", str(out), "--export", str(tmp_path / "ship"), "--export-only"]) == 0
    assert list_checkpoints(tmp_path / "ship") == sorted(PRESETS)
    assert sorted(p.name for p in (out / "runs").rglob("*")) == runs_before  # nothing trained, nothing added
    # a folder where one preset's seed-0 run is unfinished is refused: the shipped set keeps one budget
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "runs" / "lpt-s0" / "result.json").unlink()
    capsys.readouterr()
    assert main(["reproduce", "--out", str(partial), "--export", str(tmp_path / "ship2"), "--export-only"]) == 2
    err = capsys.readouterr().err
    assert "lpt, lpt_routing have not finished" in err and "Traceback" not in err
    assert not (tmp_path / "ship2").exists()
    assert main(["reproduce", "--out", str(partial), "--export-only"]) == 2
    assert "name the folder" in capsys.readouterr().err
    assert main(["reproduce", "--out", str(tmp_path / "none"), "--export", str(tmp_path / "s3"), "--export-only"]) == 2
    assert "holds no reproduction" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_a_clone_without_the_models_retrains_the_exported_seed_and_matches_its_record(reproduced, tmp_path, capsys):
    """A clone holds a reproduction's results but not its runs' weights: export refuses rather than ship a mix,
    and `reproduce --export` trains the exported seed's lost models again, the same as recorded."""
    import shutil

    from routed.checkpoint import CheckpointError
    from routed.cli import main

    settings, out, _ = reproduced
    clone = tmp_path / "clone"
    shutil.copytree(out, clone)
    for run in ("standard_3l-s0", "standard_3l-s1"):
        shutil.rmtree(clone / "runs" / run / "checkpoint")
    recorded = json.loads((clone / "runs" / "standard_3l-s0" / "result.json").read_text())
    assert main(["reproduce", "--out", str(clone), "--export", str(tmp_path / "ship"), "--export-only"]) == 2
    err = capsys.readouterr().err
    assert "seed-0 models of standard_3l are not in" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="standard_3l"):
        export_checkpoints(clone, tmp_path / "ship")
    assert not (tmp_path / "ship").exists()  # nothing half-exported

    logs: list[str] = []
    reproduce(settings, clone, log=logs.append, weights_of_seed=0)
    again = [line for line in logs if "training it again" in line]
    assert len(again) == 1 and "standard_3l seed 0: finished earlier, but its model is not in" in again[0]
    assert not (clone / "runs" / "standard_3l-s1" / "checkpoint").exists()  # other seeds are not exported: left as they are
    result = json.loads((clone / "runs" / "standard_3l-s0" / "result.json").read_text())
    assert result["retrained"]["recorded_ppl_by_exit"] == recorded["ppl_by_exit"]
    assert result["retrained"]["largest_relative_difference"] < 1e-4  # same seed, same data order, same model
    assert "Trained again with the same seed and data order" in report_path(clone).read_text()
    assert main(["reproduce", "--out", str(clone), "--export", str(tmp_path / "ship"), "--export-only"]) == 0
    assert list_checkpoints(tmp_path / "ship") == sorted(PRESETS)


def test_a_smaller_invocation_keeps_the_folders_plan(reproduced, tmp_path):
    """Fewer seeds or no alpha sweep (e.g. only the seed-0 models, for an export) adds no runs and takes none
    from the folder's recorded plan, which its report and progress describe."""
    import shutil
    from dataclasses import replace

    from routed.reproduce import check_settings, saved_settings

    settings, out, _ = reproduced
    folder = tmp_path / "folder"
    shutil.copytree(out, folder)
    check_settings(folder, replace(settings, seeds=1, alphas=True, alpha_schedules=[[0.8, 0.6]]))
    check_settings(folder, replace(settings, seeds=1, alphas=False, alpha_schedules=[[0.9, 0.5]]))
    kept = saved_settings(folder)
    assert kept.seeds == 2 and kept.alphas and kept.alpha_schedules == [[0.9, 0.5], [0.8, 0.6]]
    reproduce(replace(settings, seeds=1), folder, log=lambda _: None)  # trains nothing new; the report keeps the plan
    command = next(line for line in report_path(folder).read_text().splitlines() if line.startswith("Command:"))
    assert "--seeds 2" in command and "--no-alphas" not in command


def test_a_claim_no_test_could_check_shows_a_dash_for_its_test(reproduced, tmp_path):
    from routed.report import load_blocks, load_results
    from routed.report_sections import verdict_section
    _, out, _ = reproduced
    one_seed = {name: runs[:1] for name, runs in load_results(out).items()}
    blocks = {key: b for key, b in load_blocks(out).items() if key[1] == 0}
    table = [line for line in verdict_section(tmp_path, one_seed, blocks, provisional=True) if "not tested" in line]
    assert table, "one seed leaves the between-preset claims untested"
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2:6] == ["–", "–", "–", "–"]  # effect, CI, p, and no test named


def test_a_live_claim_is_respected_and_a_dead_ones_taken_over(tmp_path):
    import subprocess
    import sys

    from routed.claims import claim, release

    path = tmp_path / "claim"
    assert claim(path) and path.read_text() == str(os.getpid())
    assert not claim(path), "held by a live process (this one): not taken"
    release(path)
    assert not path.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(dead.stdout.strip())  # the pid of a process that has exited
    assert claim(path) and path.read_text() == str(os.getpid()), "a dead process's claim is taken over"
    path.write_text("")  # a claimant between creating the file and writing its pid ...
    assert not claim(path), "a fresh empty claim is being written"
    old = path.stat().st_mtime - 60
    os.utime(path, (old, old))  # ... or one that died there, a minute ago
    assert claim(path) and path.read_text() == str(os.getpid())


def test_the_report_reads_a_doubled_budget_as_its_convergence_check(reproduced, tmp_path):
    import math
    import shutil

    from routed.cli import main

    settings, out, _ = reproduced
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    cfg = settings.model_config()
    for preset, gain_pct in (("standard_3l", 0.4), ("asymmetric_best", 3.0)):
        info = json.loads((copy / "runs" / f"{preset}-s0" / "train.json").read_text())
        doubled = min(h["val_loss"] for h in info["history"]) - math.log1p(gain_pct / 100)
        record = {"corpus": settings.corpus, "preset": preset, "seed": 0, "steps": 2 * info["steps"],
                  "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
                  "context_length": cfg.context_length, "best_step": 2 * info["steps"],
                  "curve": [{"step": 2 * info["steps"], "tokens": 2 * info["history"][-1]["tokens"],
                             "val_ppl": math.exp(doubled), "val_loss": doubled}]}
        (tmp_path / "convergence").mkdir(exist_ok=True)
        (tmp_path / "convergence" / f"{preset}.json").write_text(json.dumps(record))
    shutil.copy(report_path(out), report_path(copy))
    wall_time = next(line for line in report_path(copy).read_text().splitlines() if line.startswith("Wall time"))
    assert main(["reproduce", "--out", str(copy), "--report-only"]) == 0  # what a user runs once a check lands
    report = report_path(copy).read_text()
    assert wall_time in report.splitlines()  # the training invocation's time stays: rewriting trained nothing
    with open(copy / "convergence.csv") as f:
        rows = {(r["run"], r["seed"]): r for r in csv.DictReader(f)}
    for seed in ("0", "1"):  # the seed-0 check decides for every seed of its preset
        assert rows[("standard_3l", seed)]["status"] == "converged"
        assert rows[("standard_3l", seed)]["rule"] == "budget doubled"
        assert float(rows[("standard_3l", seed)]["doubling_gain_pct"]) == pytest.approx(0.4)
        assert rows[("asymmetric_best", seed)]["status"] == "not converged"
    assert rows[("lpt", "0")]["rule"] == "last fifth"  # no check: its own last fifth decides
    assert "- standard_3l: twice the tokens" in report and "gained 0.40%" in report
    assert "asymmetric_best s0 (doubling its budget gained 3.0%)" in report
    assert sorted(p.name for p in (copy / "runs").rglob("*")) == sorted(p.name for p in (out / "runs").rglob("*"))


def test_report_only_refuses_a_folder_without_a_reproduction(tmp_path, capsys):
    from routed.cli import main

    assert main(["reproduce", "--out", str(tmp_path / "none"), "--report-only"]) == 2
    assert "holds no reproduction" in capsys.readouterr().err and not (tmp_path / "none").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "settings.json").write_text('{"corpus": "x", "seeds": 1, "colour": "red"}')
    assert main(["reproduce", "--out", str(tmp_path / "bad"), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and "Traceback" not in err
    assert main(["reproduce", "--out", str(tmp_path / "bad"), "--report-only", "--export", str(tmp_path)]) == 2
    assert "drop --export" in capsys.readouterr().err


def test_hypotheses_follow_the_weights_they_were_computed_on(reproduced, tmp_path):
    """A seed-0 model trained again (its weights were lost) gets its hypotheses tables computed again; an entry
    computed on the weights present is kept, and one whose model is absent stands."""
    import shutil

    from routed.reproduce import prepare
    from routed.reproduce_hypotheses import compute_hypotheses

    settings, out, _ = reproduced
    folder = tmp_path / "folder"
    shutil.copytree(out, folder)
    path = folder / "hypotheses.json"
    data = json.loads(path.read_text())
    digest = load_checkpoint(folder / "runs" / "standard_routing-s0" / "checkpoint").fingerprint
    assert digest is not None and data["standard_routing"]["weights"] == digest
    data["standard_routing"] = {"weights": "lost-model", "tables": [], "fits": []}  # computed on other weights
    data["lpt"]["tables"] = []  # same weights: kept as it is
    path.write_text(json.dumps(data))
    _, tokenizer, ids = prepare(settings, folder)
    logs: list[str] = []
    compute_hypotheses(folder, tokenizer, ids["test"], log=logs.append)
    again = json.loads(path.read_text())
    assert logs == ["hypotheses for standard_routing seed 0 ..."]
    assert again["standard_routing"]["weights"] == digest and again["standard_routing"]["tables"]
    assert again["standard_routing"]["tables"] == json.loads((out / "hypotheses.json").read_text())["standard_routing"]["tables"]
    assert again["lpt"]["tables"] == []

    shutil.rmtree(folder / "runs" / "lpt-s0" / "checkpoint")  # a clone: results without the model
    compute_hypotheses(folder, tokenizer, ids["test"], log=logs.append)
    assert json.loads(path.read_text())["lpt"]["tables"] == []
