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
    _write(folder, "b.json", _record("standard_3l", 4000, 2.30))  # longer still: the shortest doubling is the check
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
