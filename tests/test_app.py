"""The Streamlit app, page by page, through AppTest (no browser)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import charts
import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = [
    "pages/home.py", "pages/train.py", "pages/token_routing.py", "pages/lens.py", "pages/calibration.py",
    "pages/generate.py", "pages/ppl_vs_compute.py", "pages/research.py",
]


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs(app_env, page):
    at = open_page(page)
    assert not errors(at)
    assert at.title, "every page has a title"


def test_home_headline_table_has_baselines(app_env):
    at = open_page("pages/home.py")
    assert at.selectbox(key="home_model").options == ["asymmetric_best", "standard_1l", "standard_3l"]
    table = charts.headline_table(at)
    assert list(table.index[1:]) == ["Standard 1L", "Standard 3L"]
    assert table.loc["Standard 1L", "Compute%"] == pytest.approx(100 / 3)
    # every row is scored on the same test tokens and bytes, so bits/byte over ln(PPL) (tokens / bytes / ln 2) is
    # one number for all: the baselines' bits/byte are those of the PPL beside them
    per_row = [float(b) / math.log(float(p)) for b, p in zip(table["bits/byte"], table["Routed PPL (per token)"])]
    assert per_row[0] > 0 and per_row == pytest.approx([per_row[0]] * 3, rel=1e-3)
    at.selectbox(key="home_model").set_value("standard_1l").run()  # Compute% is against 3 layers for any depth
    assert charts.headline_table(at).iloc[0]["Compute%"] == pytest.approx(100 / 3)


def add_checkpoints_on_another_corpus(checkpoints: Path) -> None:
    """other-asymmetric_best and other-standard_1l: copies said to be trained on corpus 'elsewhere'."""
    import json
    import shutil

    import pandas as pd

    for name in ("asymmetric_best", "standard_1l"):
        target = checkpoints / f"other-{name}"
        shutil.copytree(checkpoints / name, target)
        config = json.loads((target / "config.json").read_text())
        config["corpus"]["name"] = "elsewhere"
        (target / "config.json").write_text(json.dumps(config))
    curve = pd.read_csv(checkpoints / "asymmetric_best" / "sweep.csv")
    curve["deep_ppl"] = 7.0  # a deep PPL no tiny checkpoint has, to tell which baseline was read
    curve.to_csv(checkpoints / "other-standard_1l" / "sweep.csv", index=False)


def test_home_baselines_come_from_the_models_corpus(app_env):
    add_checkpoints_on_another_corpus(app_env.checkpoints)
    at = open_page("pages/home.py")
    at.selectbox(key="home_model").set_value("other-asymmetric_best").run()
    table = charts.headline_table(at)
    assert table.loc["Standard 1L", "Routed PPL (per token)"] == pytest.approx(7.0)  # other-standard_1l, same corpus
    # no Standard 3L on 'elsewhere': the one on the tiny corpus is shown, with a warning
    assert any("Standard 3L used another corpus" in w.value for w in at.warning)
    at.selectbox(key="home_model").set_value("asymmetric_best").run()
    assert charts.headline_table(at).loc["Standard 1L", "Routed PPL (per token)"] != pytest.approx(7.0)
    assert not at.warning


def test_ppl_vs_compute_starts_from_models_of_standard_3ls_size(app_env):
    import json
    import shutil

    wider = app_env.checkpoints / "wide-asymmetric_best"  # another size: offered, not drawn at first
    shutil.copytree(app_env.checkpoints / "asymmetric_best", wider)
    config = json.loads((wider / "config.json").read_text())
    config["model"]["n_heads"] *= 2
    (wider / "config.json").write_text(json.dumps(config))
    at = open_page("pages/ppl_vs_compute.py")
    assert not errors(at)
    models = at.multiselect(key="curve_models")
    assert "wide-asymmetric_best" in models.options
    assert models.value == ["asymmetric_best"]


def test_ppl_vs_compute_shows_one_corpus_at_a_time(app_env):
    add_checkpoints_on_another_corpus(app_env.checkpoints)
    at = open_page("pages/ppl_vs_compute.py")
    corpus = at.selectbox(key="curve_corpus")
    tiny = f"{app_env.corpus}, vocabulary 300"
    assert corpus.options == sorted(["elsewhere, vocabulary 300", tiny])
    at.selectbox(key="curve_corpus").set_value("elsewhere, vocabulary 300").run()
    assert at.multiselect(key="curve_models").options == ["other-asymmetric_best", "other-standard_1l"]
    assert at.multiselect(key="curve_models").value == ["other-asymmetric_best"]  # the baseline is a point
    at.selectbox(key="curve_corpus").set_value(tiny).run()
    assert not errors(at)
    assert at.multiselect(key="curve_models").options == ["asymmetric_best", "standard_1l", "standard_3l"]


def test_model_choice_is_kept_across_pages(app_env):
    at = open_page("pages/generate.py")
    at.selectbox(key="gen_model").set_value("standard_3l")
    at.slider(key="gen_threshold").set_value(0.5).run()
    at.switch_page("pages/token_routing.py").run()
    assert at.selectbox(key="routing_model").value == "standard_3l"
    assert charts.start_threshold(charts.vega_charts(at)[0]) == 0.5  # the chart's own slider starts there


def test_routing_chart_holds_every_threshold_of_its_slider(app_env):
    at = open_page("pages/token_routing.py")
    chart = charts.vega_charts(at)[0]
    slider = next(p for p in charts.spec(chart)["params"] if p["name"] == "threshold")
    assert slider["bind"]["input"] == "range" and slider["bind"]["step"] == 0.01  # moved in the browser
    numbers = charts.frame_with(chart, "label")
    shallow = numbers[numbers["label"] == "Shallow%"].set_index("position")["value"]
    assert list(shallow.index) == list(range(101))  # every position of the slider
    assert shallow[0] == "100.0%" and shallow[0] != shallow[100]
    paths = charts.frame_with(chart, "piece")["exit_index"]
    assert paths.min() == -2 and paths.max() <= 100  # context token, then each token's last shallow position


def test_routed_text_is_data_not_markup(app_env):
    at = open_page("pages/token_routing.py")
    at.text_area(key="routing_text").set_value("Hello <script>alert(1)</script> & <b>bold</b>\x00 world").run()
    assert not at.exception and not errors(at)
    rendered = [h.value for h in at.get("html")] + [m.value for m in at.markdown]
    assert not any("<script" in r.lower() or "<b>" in r for r in rendered)
    drawn, _ = charts.routing_paths(at)  # drawn as text marks, never parsed as HTML
    assert "<script>alert(1)</script> & <b>bold</b>\\x00 world" in drawn  # the NUL shown as an escape


def test_compare_two_models_side_by_side(app_env):
    at = open_page("pages/token_routing.py")
    at.selectbox(key="routing_compare").set_value("standard_3l").run()
    assert not at.exception and not errors(at)
    chart = charts.vega_charts(at)[0]
    titles = [part.get("title", {}).get("text") for part in charts.spec(chart)["hconcat"]]
    assert titles == ["asymmetric_best", "standard_3l"]  # one panel each, one slider for both
    assert len([f for f in charts.frames(chart) if "piece" in f.columns]) == 2


def test_ppl_vs_compute_uses_sweep_and_records(app_env):
    at = open_page("pages/ppl_vs_compute.py")
    at.multiselect(key="curve_models").set_value(["asymmetric_best", "standard_3l"]).run()
    at.toggle(key="curve_flops").set_value(True).run()
    assert not at.exception and not errors(at)
    table = at.dataframe[0].value
    assert list(table["Threshold"]) == [0.5, 0.7, 0.8, 0.9, 0.95]
    assert {d.key for d in at.download_button} == {"curve_chart_download", "curve_table_download"}


def test_missing_corpus_is_one_clear_error(app_env):
    (app_env.checkpoints / "asymmetric_best" / "sweep.csv").unlink()
    app_env.corpus.rename(app_env.corpus.with_suffix(".gone"))
    try:
        at = open_page("pages/ppl_vs_compute.py")
        assert len(at.error) == 1 and "cannot be evaluated" in at.error[0].value
    finally:
        app_env.corpus.with_suffix(".gone").rename(app_env.corpus)


def test_train_page_rejects_a_path_as_name(app_env):
    at = open_page("pages/train.py")
    at.text_input(key="train_name").input("../escape")
    at.button(key="train_submit").click().run()
    assert any("plain folder name" in e for e in errors(at))


def test_train_page_rejects_non_utf8_upload(app_env):
    at = open_page("pages/train.py")
    at.selectbox(key="train_corpus").set_value("upload a .txt file")
    at.file_uploader(key="train_upload").upload("bad.txt", b"\xff\xfe\x00bad", "text/plain")
    at.button(key="train_submit").click().run()
    assert any("not UTF-8" in e for e in errors(at))


def test_training_run_completes_and_becomes_selectable(app_env):
    at = open_page("pages/train.py")
    at.radio(key="train_mode").set_value("custom layer weights")
    for key, value in {
        "d_model": 32,
        "n_heads": 2,
        "context": 32,
        "vocab": 300,
        "batch": 4,
        "steps": 5,
        "eval_interval": 5,
    }.items():
        at.number_input(key=f"train_{key}").set_value(value)
    at.selectbox(key="train_corpus").set_value("upload a .txt file")
    at.file_uploader(key="train_upload").upload("tiny.txt", app_env.corpus.read_bytes(), "text/plain")
    at.text_input(key="train_name").input("tiny_run")
    at.button(key="train_submit").click().run()
    assert not errors(at), errors(at)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = next((m.value for m in at.markdown if "tiny_run" in m.value), "")
        if "done" in status or "failed" in status:
            break
        time.sleep(0.5)
        at.run()
    assert "done" in status, (status, errors(at))
    assert (app_env.checkpoints / "tiny_run" / "config.json").is_file()
    at.switch_page("pages/home.py").run()
    assert "tiny_run" in at.selectbox(key="home_model").options


def test_generate_page_colours_drafts_and_compares_speeds(app_env):
    at = open_page("pages/generate.py")
    at.text_input(key="gen_prompt").set_value("The <b>tower</b>")
    at.number_input(key="gen_tokens").set_value(12)
    at.slider(key="gen_threshold").set_value(0.0).run()  # always draft: some drafts are accepted, some rejected
    at.button(key="gen_run").click().run()
    assert not at.exception and not errors(at)
    table = at.dataframe[0].value
    assert list(table.index) == ["speculative", "routed", "plain"]
    assert table.loc["plain", "× plain"] == pytest.approx(1.0) and (table["tokens/s"] > 0).all()
    assert 0 <= table.loc["speculative", "acceptance %"] <= 100
    shown = [h.value for h in at.get("html") if "routed-text" in h.value][-1]
    assert "accepted draft (exit 1)" in shown and shown.count('class="tok"') == 12  # rejected drafts are extra
    at.selectbox(key="gen_mode").set_value("routed").run()
    at.button(key="gen_run").click().run()
    shown = [h.value for h in at.get("html") if "routed-text" in h.value][-1]
    assert "exit at layer" in shown and shown.count('class="tok"') == 12


def test_generate_page_says_a_one_exit_model_cannot_draft(app_env):
    at = open_page("pages/generate.py")
    at.selectbox(key="gen_model").set_value("standard_3l").run()
    at.button(key="gen_run").click().run()
    assert not at.exception
    assert any("speculative decoding drafts with an early exit" in e for e in errors(at))
    at.selectbox(key="gen_mode").set_value("plain").run()
    at.button(key="gen_run").click().run()
    assert not errors(at) and list(at.dataframe[0].value.index) == ["plain"]
    assert any("speculative: not available" in c.value for c in at.caption)


def test_shipped_checkpoints_give_every_preset_real_numbers(shipped_env):
    from routed.config import PRESETS

    at = open_page("pages/home.py")
    assert not errors(at)
    shipped = sorted(PRESETS) + sorted([*(f"tinystories-{name}" for name in PRESETS), "tinystories-6l-d256"])  # two regimes
    assert sorted(at.selectbox(key="home_model").options) == shipped
    for name in ("asymmetric_best", "tinystories-asymmetric_best"):
        at.selectbox(key="home_model").set_value(name).run()
        table = charts.headline_table(at)
        row = table.iloc[0]
        assert 1 < row["Routed PPL (per token)"] < 1000 and 0 < row["Shallow%"] < 100
        if name == "asymmetric_best":  # retrained with bits per byte in its sweep
            assert 0.5 < row["bits/byte"] < 4
        assert list(table.index[1:]) == ["Standard 1L", "Standard 3L"] and not at.warning  # same-corpus baselines
    # the two regimes at 0.5 (the chart's slider moved there): few vs most tokens confident
    assert charts.headline_table(at, 0.5).iloc[0]["Shallow%"] > 50
    at.selectbox(key="home_model").set_value("asymmetric_best").run()
    assert charts.headline_table(at, 0.5).iloc[0]["Shallow%"] < 20
    at.switch_page("pages/ppl_vs_compute.py").run()  # reads the shipped sweeps, no forward pass needed
    assert not at.exception and not errors(at)


def test_lens_page_opens_any_token_and_refuses_bad_text(app_env):
    at = open_page("pages/lens.py")
    assert not errors(at)
    assert {c.proto.id for c in at.get("plotly_chart")} and len(at.get("plotly_chart")) == 2  # lens, settling depth
    views = charts.vega_charts(at)[0]  # the threshold's views, moved by their own slider in the browser
    summary = charts.frame_with(views, "text").set_index("position")["text"]
    assert list(summary.index) == list(range(101)) and "100% take the shallow path" in summary[0]
    rates = charts.frame_with(views, "rate")
    assert set(rates["position"]) == set(range(101)) and rates["rate"].between(0, 100).all()
    token = at.selectbox(key="lens_token")
    token.set_value(3).run()
    table = at.dataframe[-1].value
    assert list(table["layer"]) == [1, 2, 3] and table["true token rank"].min() >= 1
    assert bool(table["agrees with last"].iloc[-1])  # the last layer agrees with itself
    for text, message in (("", "Enter some text"), ("a", "at least two tokens")):
        at.text_area(key="lens_text").set_value(text).run()
        assert not at.exception and any(message in e for e in errors(at)), errors(at)


def test_lens_heatmap_escapes_user_text(app_env):
    at = open_page("pages/lens.py")
    at.text_area(key="lens_text").set_value("Hello <script>alert(1)</script> & <b>bold</b> world").run()
    assert not at.exception and not errors(at)
    spec = at.get("plotly_chart")[0].proto.spec
    # a small vocabulary splits "<script>" into pieces; each piece is escaped on its own
    assert "<script" not in spec and "<b>bold" not in spec and "&lt;" in spec and "&amp;" in spec


def test_lens_page_says_when_the_text_is_cut_into_windows(app_env):
    at = open_page("pages/lens.py")
    at.text_area(key="lens_text").set_value("The tower is very tall. " * 40).run()
    assert not errors(at)
    assert any("windows" in c.value for c in at.caption)
    assert at.slider(key="lens_start").max > 1  # a long text is shown a window of tokens at a time


def test_calibration_page_falls_back_to_deep_only_when_nothing_is_certified(app_env):
    at = open_page("pages/calibration.py")
    assert not errors(at)
    assert "ECE max_softmax" in at.dataframe[0].value.columns
    at.slider(key="calibration_agreement").set_value(0.995)
    at.select_slider(key="calibration_delta").set_value(0.01).run()  # needs 919 shallow validation tokens
    assert not at.exception
    assert any("falling back to deep-only" in w.value for w in at.warning)


def test_threshold_follows_the_model_until_it_is_moved(app_env):
    at = open_page("pages/generate.py")
    first = at.slider(key="gen_threshold").value
    at.selectbox(key="gen_model").set_value("standard_3l").run()
    followed = at.slider(key="gen_threshold").value  # standard_3l's own default
    at.slider(key="gen_threshold").set_value(0.42).run()
    at.selectbox(key="gen_model").set_value("asymmetric_best").run()
    assert at.slider(key="gen_threshold").value == 0.42  # moved by hand: kept
    assert 0.0 <= first <= 1.0 and 0.0 <= followed <= 1.0
    at.switch_page("pages/home.py").run()  # the charts' own sliders start from it
    assert charts.start_threshold(charts.vega_charts(at)[0]) == 0.42


def heatmap_paths(at: AppTest) -> set[str]:
    return charts.routing_paths(at)[1]


def test_first_launch_shows_tokens_taking_both_paths(shipped_env):
    at = open_page("pages/token_routing.py")
    assert not errors(at)
    name = at.selectbox(key="routing_model").value
    assert name.endswith("asymmetric_best")
    assert heatmap_paths(at) == {"shallow", "deep"}
    for other in ("asymmetric_best", "tinystories-asymmetric_best"):  # either regime: the defaults follow the model
        at.selectbox(key="routing_model").set_value(other).run()
        assert not errors(at) and heatmap_paths(at) == {"shallow", "deep"}, other
    assert any("Regime" in c.value for c in at.caption)


def test_shipped_checkpoint_has_lens_and_calibration_views(shipped_env):
    at = open_page("pages/lens.py")
    assert not errors(at) and len(at.get("plotly_chart")) == 2 and len(charts.vega_charts(at)) == 1
    assert set(charts.frame_with(charts.vega_charts(at)[0], "rate")["source"]) == {"this text", "test split"}
    at.switch_page("pages/calibration.py").run()
    assert not at.exception and not errors(at)
    table = at.dataframe[0].value
    assert set(table["split"]) == {"validation", "test"} and (table["ECE max_softmax"] < 0.2).all()
    assert at.success or at.warning  # a threshold with its test check, or the deep-only fallback
