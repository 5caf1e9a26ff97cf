"""A reproduction's budget checked by training on twice the tokens: which records count, and what they decide."""

from __future__ import annotations

import json
import math

import pytest

from routed.budget_check import budget_checks
from routed.convergence import with_budget_check
from routed.reproduce import ReproduceSettings

SETTINGS = ReproduceSettings(corpus="tinystories", vocab_size=258, steps=100)


def _history(tokens: int, ppls: list[float]) -> list[dict]:
    n = len(ppls)
    return [{"step": i + 1, "tokens": tokens * (i + 1) // n, "val_loss": math.log(p)} for i, p in enumerate(ppls)]


def _record(preset: str, tokens: int, best_ppl: float, objective: bool = True, **fields) -> dict:
    curve = [{"step": 10, "tokens": tokens // 2, "val_ppl": best_ppl * 1.2},
             {"step": 20, "tokens": tokens, "val_ppl": best_ppl}]
    if objective:
        for c in curve:
            c["val_loss"] = math.log(c["val_ppl"])
    return {"corpus": "tinystories", "preset": preset, "seed": 0, "steps": 20, "vocab_size": 258, "best_step": 20,
            "curve": curve, **fields}


def _write(folder, name: str, record) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(record if isinstance(record, str) else json.dumps(record))


def test_the_doubling_check_decides_over_the_last_fifth_both_ways():
    flagged = {"status": "not converged", "tail_gain_pct": 2.4, "best_step": 96}
    assert with_budget_check(flagged, {"gain_pct": 0.5}) == {**flagged, "status": "converged",
                                                              "rule": "budget doubled", "doubling_gain_pct": 0.5}
    flat = {"status": "converged", "tail_gain_pct": 0.3, "best_step": 96}
    assert with_budget_check(flat, {"gain_pct": 1.5})["status"] == "not converged"
    assert with_budget_check(flat, {"gain_pct": -1.6})["status"] == "converged"  # the longer run overfit
    assert with_budget_check(flagged, None) == {**flagged, "rule": "last fifth", "doubling_gain_pct": None}
    empty = {"status": "no validation", "tail_gain_pct": None, "best_step": None}
    assert with_budget_check(empty, {"gain_pct": 0.1})["status"] == "no validation"


def test_a_record_on_twice_the_tokens_of_the_same_model_is_the_check(tmp_path):
    folder = tmp_path / "convergence"
    histories = {("standard_3l", 0): _history(1000, [4.0, 3.0, 2.5]), ("asymmetric_best", 0): _history(1000, [4.0, 3.0])}
    _write(folder, "a.json", _record("standard_3l", 2000, 2.49))
    _write(folder, "b.json", _record("standard_3l", 4000, 2.30))  # 4 times the tokens: no doubling check
    _write(folder, "c.json", _record("asymmetric_best", 1500, 2.0))  # 1.5 times the tokens: no check
    checks = budget_checks(folder, SETTINGS, histories)
    assert set(checks) == {"standard_3l"}
    check = checks["standard_3l"]
    assert check["gain_pct"] == pytest.approx(100 * (2.5 / 2.49 - 1))
    assert (check["tokens"], check["doubled_tokens"], check["record"]) == (1000, 2000, "convergence/a.json")
    assert check["best_ppl"] == pytest.approx(2.5) and check["doubled_best_ppl"] == pytest.approx(2.49)


def test_records_of_another_model_or_objective_or_unreadable_give_no_check(tmp_path):
    folder = tmp_path / "convergence"
    histories = {(p, 0): _history(1000, [3.0, 2.5]) for p in ("standard_3l", "asymmetric_best", "lpt")}
    _write(folder, "vocab.json", _record("standard_3l", 2000, 2.4, vocab_size=4096))
    _write(folder, "size.json", _record("standard_3l", 2000, 2.4, d_model=256))
    _write(folder, "tinystories-standard_3l-d256-v258-s20.json", _record("standard_3l", 2000, 2.4))  # size in name only
    _write(folder, "seed.json", _record("standard_3l", 2000, 2.4, seed=7))  # no run of that seed here
    _write(folder, "old.json", _record("asymmetric_best", 2000, 2.4, objective=False))  # last exit is not its objective
    _write(folder, "broken.json", '{"preset": "lpt", "curve": [')
    _write(folder, "list.json", "[1, 2]")
    _write(folder, "odd.json", {"preset": ["lpt"], "seed": 0, "curve": [{"tokens": "many"}]})
    _write(folder, "missing.json", {"preset": "lpt", "seed": 0, "curve": [{"step": 1}]})
    assert budget_checks(folder, SETTINGS, histories) == {}
    assert budget_checks(tmp_path / "absent", SETTINGS, histories) == {}


def test_an_old_record_of_a_single_exit_preset_reads_its_last_exit(tmp_path):
    folder = tmp_path / "convergence"
    _write(folder, "old.json", _record("standard_3l", 2000, 2.6, objective=False))  # worse than the budget's best
    checks = budget_checks(folder, SETTINGS, {("standard_3l", 0): _history(1000, [3.0, 2.5])})
    assert checks["standard_3l"]["gain_pct"] == pytest.approx(100 * (2.5 / 2.6 - 1))
    assert with_budget_check({"status": "not converged"}, checks["standard_3l"])["status"] == "converged"


def _reproduction(reports, name: str, steps: int, runs: dict) -> None:
    """A reproduction folder with the seed-0 train.json of each run: {run: (tokens, [val PPL per validation])}."""
    from dataclasses import asdict, replace

    folder = reports / name
    _write(folder, "settings.json", asdict(replace(SETTINGS, steps=steps)))
    for run, (tokens, ppls) in runs.items():
        history = [{**h, "val_ppl": {"3": math.exp(h["val_loss"])}} for h in _history(tokens, ppls)]
        (folder / "runs" / f"{run}-s0").mkdir(parents=True)
        _write(folder / "runs" / f"{run}-s0", "train.json",
               {"run": run, "seed": 0, "steps": steps, "best_step": steps, "train_s": 1.0, "history": history})


def test_a_reproduction_at_twice_the_budget_is_a_check(tmp_path):
    histories = {(p, 0): _history(1000, [3.0, 2.5]) for p in ("standard_3l", "lpt", "asymmetric_best")}
    _reproduction(tmp_path, "reproduction-long", 200, {"standard_3l": (2000, [2.6, 2.48]), "lpt": (2000, [2.6, 2.0])})
    _reproduction(tmp_path, "reproduction-longer", 800, {"asymmetric_best": (8000, [2.0, 1.5])})  # 8 times: none
    _write(tmp_path / "reproduction-long" / "runs" / "lpt-s0", "train.json", '{"history": [')  # being written
    _write(tmp_path / "convergence", "a.json", _record("standard_3l", 2000, 2.45))  # the benchmark's comes first
    checks = budget_checks(tmp_path / "convergence", SETTINGS, histories, reproductions=tmp_path)
    assert set(checks) == {"standard_3l"}
    assert checks["standard_3l"]["record"] == "convergence/a.json"
    (tmp_path / "convergence" / "a.json").unlink()
    check = budget_checks(tmp_path / "convergence", SETTINGS, histories, reproductions=tmp_path)["standard_3l"]
    assert check["record"] == "reproduction-long/runs/standard_3l-s0/train.json"
    assert check["gain_pct"] == pytest.approx(100 * (2.5 / 2.48 - 1)) and check["doubled_tokens"] == 2000
    assert budget_checks(tmp_path / "convergence", SETTINGS, histories) == {}  # reproductions only when asked


def _convergence_benchmark():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "convergence_benchmark", Path(__file__).resolve().parent.parent / "benchmarks" / "convergence.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


def test_the_convergence_benchmark_compares_each_budget_with_a_shorter_one(tmp_path):
    """Two runs of one budget (the benchmark's and a reproduction's) are each compared with the budget before,
    never with each other."""
    benchmark = _convergence_benchmark()
    out = tmp_path / "convergence"
    out.mkdir()
    for name, tokens, ppl in (("short", 1000, 3.0), ("long", 2000, 2.5), ("long-again", 2000, 2.4)):
        record = _record("lpt", tokens, ppl, final_val_ppl=ppl, best_val_ppl=ppl, train_s=60.0, epochs=None)
        (out / f"{name}.json").write_text(json.dumps(record), encoding="utf-8")
    rows = [line.split(" | ") for line in benchmark.write_report(out).read_text(encoding="utf-8").splitlines()
            if line.startswith("| 20 steps")]
    assert len(rows) == 3
    by_ppl = {row[3]: row[6] for row in rows}
    assert by_ppl["3.000"] == "–"
    assert by_ppl["2.500"] == "20.00% / 20.00%"  # 3.0 / 2.5 - 1
    assert by_ppl["2.400"] == "25.00% / 25.00%"  # 3.0 / 2.4 - 1, not 2.5 / 2.4 - 1


def test_the_convergence_benchmark_shows_presets_trained_only_in_reproductions(tmp_path):
    """A doubling check that comes from two reproductions alone (no benchmark record of the preset) is shown too."""
    out = tmp_path / "convergence"
    out.mkdir()
    _reproduction(tmp_path, "reproduction-short", 100, {"standard_1l": (1000, [3.5, 3.0])})
    _reproduction(tmp_path, "reproduction-long", 200, {"standard_1l": (2000, [3.5, 2.5])})
    text = _convergence_benchmark().write_report(out).read_text(encoding="utf-8")
    assert "## tinystories, standard_1l, vocabulary 258" in text
    rows = [line.split(" | ") for line in text.splitlines() if "| reproduction-" in line]
    assert [(row[-1], row[6]) for row in rows] == [("reproduction-short/ |", "–"),
                                                  ("reproduction-long/ |", "20.00% / 20.00%")]  # 3.0 / 2.5 - 1
