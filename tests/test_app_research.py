"""The Research page: which reproduction it opens on, the sources it offers, the committed report."""

from __future__ import annotations

import shutil

from test_app import errors, open_page


def test_research_page_renders_report_tables(app_env):
    at = open_page("pages/research.py")
    assert len(at.dataframe) == 2
    assert "not reproduced" in list(at.dataframe[0].value["verdict"])  # verdicts lead the page
    assert "asymmetric_best" in list(at.dataframe[1].value["model"])


def test_research_page_offers_reproductions_in_other_regimes(app_env, monkeypatch, tmp_path):
    main = tmp_path / "reproduction"
    shutil.copytree(app_env.reports, main)
    other = tmp_path / "reproduction-tinystories"
    other.mkdir()
    (other / "final_ranking.csv").write_text("model,ppl_mean\nstandard_1l,3.5\n", encoding="utf-8")
    (other / "settings.json").write_text('{"corpus": "tinystories", "steps": 1200, "seeds": 2, "alphas": false}')
    (other / "runs" / "standard_1l-s1").mkdir(parents=True)
    (other / "runs" / "standard_1l-s1" / "result.json").write_text("{}")
    monkeypatch.setenv("ROUTED_REPORTS_DIR", str(main))
    at = open_page("pages/research.py")
    assert "asymmetric_best" in list(at.dataframe[1].value["model"])
    source = at.selectbox(key="research_source")
    # each source says its budget and how many of its runs have finished (6 trained presets x 2 seeds)
    assert source.options == ["full reproduction",
                              "full reproduction (tinystories) — tinystories, 1,200 steps: 1 of 12 runs"]
    source.set_value("full reproduction (tinystories)").run()
    assert not errors(at)
    assert list(at.dataframe[0].value["model"]) == ["standard_1l"]


def test_research_page_starts_from_the_reproduction_the_chosen_model_came_from(app_env, monkeypatch, tmp_path):
    from appkit.defaults import default_model
    from appkit.loaders import checkpoint_names

    main = tmp_path / "reproduction"
    shutil.copytree(app_env.reports, main)
    chosen = app_env.checkpoints / default_model(checkpoint_names())
    for name, weights in (("reproduction-a", app_env.checkpoints / "standard_3l"), ("reproduction-b", chosen)):
        run = tmp_path / name / "runs" / "x-s0" / "checkpoint"
        run.mkdir(parents=True)
        shutil.copy(weights / "config.json", run / "config.json")
        (tmp_path / name / "final_ranking.csv").write_text(f"model,ppl_mean\n{name},3.5\n", encoding="utf-8")
    monkeypatch.setenv("ROUTED_REPORTS_DIR", str(main))
    at = open_page("pages/research.py")
    assert at.selectbox(key="research_source").value == "full reproduction (b)"
    assert "reproduction-b" in list(at.dataframe[0].value["model"])
    at.selectbox(key="research_source").set_value("full reproduction").run()  # the user's choice then stands
    assert at.selectbox(key="research_source").value == "full reproduction"


def test_research_page_shows_the_training_budgets(app_env, monkeypatch, tmp_path):
    main = tmp_path / "reproduction"
    shutil.copytree(app_env.reports, main)
    (tmp_path / "convergence").mkdir()
    (tmp_path / "convergence.md").write_text("# How long to train\n\n| budget | best val PPL |\n|---|---|\n"
                                             "| 9600 steps | 2.502 |\n", encoding="utf-8")
    monkeypatch.setenv("ROUTED_REPORTS_DIR", str(main))
    at = open_page("pages/research.py")
    source = at.selectbox(key="research_source")
    assert source.options[-1] == "training budgets: is a reproduction's budget long enough?"
    source.set_value(source.options[-1]).run()
    assert not errors(at)
    assert any("| 9600 steps | 2.502 |" in m.value for m in at.markdown)


def test_research_page_says_how_to_produce_tables(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTED_REPORTS_DIR", str(tmp_path / "nothing"))
    at = open_page("pages/research.py")
    assert not at.dataframe
    assert any("python -m routed reproduce" in i.value for i in at.info)


def test_research_page_renders_the_committed_report(shipped_env):
    at = open_page("pages/research.py")
    assert not errors(at)
    ranking = next(df.value for df in at.dataframe if "ppl_mean" in df.value.columns)
    assert {"standard_3l", "standard_1l", "asymmetric_best"} <= set(ranking["model"])
    assert (ranking["ppl_mean"] > 1).all()
