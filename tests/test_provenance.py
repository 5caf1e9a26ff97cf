"""Which reproduction trained a checkpoint, and the convergence verdict shown beside the model."""

from __future__ import annotations

import json
from dataclasses import asdict

from test_app import open_page

from routed.provenance import source_of, training_status
from routed.reproduce import ReproduceSettings

CONVERGENCE_HEADER = "run,seed,steps,best_step,tail_gain_pct,doubling_gain_pct,rule,status\n"


def _run_config(folder, run: str, text: str) -> None:
    path = folder / "runs" / run / "checkpoint"
    path.mkdir(parents=True)
    (path / "config.json").write_text(text, encoding="utf-8")


def _reproductions(tmp_path):
    """broken/list: unreadable run configs; source: holds the weights 'a'; old: kept no weights, trained lpt."""
    _run_config(tmp_path / "broken", "lpt-s0", '{"fingerprint": ')
    _run_config(tmp_path / "list", "lpt-s0", "[1]")
    _run_config(tmp_path / "source", "asymmetric_best-s0", '{"fingerprint": "a"}')
    (tmp_path / "source" / "convergence.csv").write_text(
        CONVERGENCE_HEADER + "asymmetric_best,0,100,100,2.5,1.5,budget doubled,not converged\n", encoding="utf-8")
    old = tmp_path / "old"
    settings = ReproduceSettings(corpus="tinystories", vocab_size=258, steps=100)
    (old / "runs" / "lpt-s0").mkdir(parents=True)
    (old / "runs" / "lpt-s0" / "result.json").write_text("{}", encoding="utf-8")
    (old / "settings.json").write_text(json.dumps(asdict(settings)), encoding="utf-8")
    (old / "convergence.csv").write_text(CONVERGENCE_HEADER + "lpt,0,100,100,0.4,,last fifth,converged\n",
                                         encoding="utf-8")
    model = asdict(settings.model_config())
    return [tmp_path / n for n in ("broken", "list", "source", "old")], model


def test_a_checkpoint_is_traced_by_its_weights_or_its_recipe(tmp_path):
    folders, model = _reproductions(tmp_path)
    exported = {"fingerprint": "a", "preset": "asymmetric_best", "seed": 0, "train": {"steps": 100}, "best_step": 90}
    assert source_of(exported, folders) == tmp_path / "source"
    assert training_status(exported, folders) == (
        "Trained 100 steps (best validation at step 90); not converged: twice the tokens gained 1.50% (source).")
    # a run's own checkpoint folder names no preset or seed: the run it sits in does
    bare = {"fingerprint": "a", "preset": "asymmetric_best", "seed": None, "train": {"steps": 100}}
    assert training_status(bare, folders) == (
        "Trained 100 steps; not converged: twice the tokens gained 1.50% (source).")
    # lpt_routing is the lpt model: a reproduction that kept no weights but trained that recipe answers for it
    recipe = {"fingerprint": "z", "preset": "lpt_routing", "seed": 0, "corpus": {"name": "tinystories"},
              "model": model, "train": {"steps": 100, "epochs": None}, "best_step": 100}
    assert source_of(recipe, folders) == tmp_path / "old"
    assert training_status(recipe, folders) == ("Trained 100 steps (best validation at step 100); converged: its "
                                                "last fifth of training gained 0.40%, and no run on twice the tokens (old).")


def test_no_reproduction_no_status(tmp_path):
    folders, model = _reproductions(tmp_path)
    recipe = {"fingerprint": "z", "preset": "lpt", "seed": 0, "corpus": {"name": "tinystories"}, "model": model,
              "train": {"steps": 100, "epochs": None}}
    assert training_status({**recipe, "train": {"steps": 200, "epochs": None}}, folders) is None  # another budget
    assert training_status({**recipe, "seed": 1}, folders) is None  # a seed not trained there
    assert training_status({**recipe, "model": {**model, "d_model": 256}}, folders) is None  # another size
    assert training_status({"train": {"steps": 100}}, folders) is None  # a checkpoint of no preset
    (tmp_path / "old" / "convergence.csv").write_text("run,seed\n", encoding="utf-8")  # no row for the run
    assert training_status(recipe, folders) is None


def test_the_model_picker_says_whether_the_models_training_converged(app_env, monkeypatch, tmp_path):
    from appkit.defaults import default_model
    from appkit.loaders import checkpoint_names

    chosen = app_env.checkpoints / default_model(checkpoint_names())
    config = json.loads((chosen / "config.json").read_text(encoding="utf-8"))
    config |= {"preset": "asymmetric_best", "seed": 0}
    (chosen / "config.json").write_text(json.dumps(config), encoding="utf-8")
    main = tmp_path / "reproduction"
    main.mkdir()
    source = tmp_path / "reproduction-long"
    _run_config(source, "asymmetric_best-s0", json.dumps({"fingerprint": config["fingerprint"]}))
    (source / "convergence.csv").write_text(
        CONVERGENCE_HEADER + "asymmetric_best,0,5,5,9.0,3.25,budget doubled,not converged\n", encoding="utf-8")
    monkeypatch.setenv("ROUTED_REPORTS_DIR", str(main))
    at = open_page("pages/home.py")
    assert any("not converged: twice the tokens gained 3.25% (reproduction-long)" in c.value for c in at.caption)
