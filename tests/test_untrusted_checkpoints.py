"""Checkpoints that cannot be trusted, as the app meets them in its checkpoints folder: each is refused
with one message naming the checkpoint and the problem; nothing is unpickled, no page shows a traceback."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
VICTIM = "asymmetric_best"


class Boom:
    """Unpickling this creates a marker file: proof that a loader executed code from the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    change(config)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


def truncate(folder: Path, marker: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def pickle_renamed(folder: Path, marker: Path) -> None:
    (folder / "model.safetensors").write_bytes(pickle.dumps({"tok_emb.weight": Boom(str(marker))}))


def torch_save_renamed(folder: Path, marker: Path) -> None:
    torch.save({"tok_emb.weight": torch.zeros(3), "boom": Boom(str(marker))}, folder / "model.safetensors")


def missing_tokenizer(folder: Path, marker: Path) -> None:
    (folder / "tokenizer.json").unlink()


def newer_version(folder: Path, marker: Path) -> None:
    edit_config(folder, lambda c: c.update(format_version=99, package_version="99.0"))


def unknown_field(folder: Path, marker: Path) -> None:
    edit_config(folder, lambda c: c["model"].update(attention="linear"))


def shapes_disagree(folder: Path, marker: Path) -> None:
    edit_config(folder, lambda c: c["model"].update(d_model=c["model"]["d_model"] * 2))


CASES = {
    "truncated weights": (truncate, "not a valid safetensors file"),
    "pickle renamed to model.safetensors": (pickle_renamed, "not a valid safetensors file"),
    "torch.save file renamed": (torch_save_renamed, "not a valid safetensors file"),
    "missing tokenizer": (missing_tokenizer, "missing tokenizer.json"),
    "config from a newer version": (newer_version, "upgrade routed"),
    "config with an unknown field": (unknown_field, "unknown field"),
    "tensor shapes disagree with the config": (shapes_disagree, "weights do not match config.json"),
}


@pytest.mark.parametrize("case", CASES)
def test_token_routing_page_refuses_the_checkpoint_with_one_message(app_env, case):
    damage, reason = CASES[case]
    marker = app_env.tmp / "unpickled"
    damage(app_env.checkpoints / VICTIM, marker)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/token_routing.py").run()
    if VICTIM in at.selectbox(key="routing_model").options:
        at.selectbox(key="routing_model").set_value(VICTIM).run()
    assert not at.exception, [e.value for e in at.exception]
    messages = [e.value for e in at.error]
    assert any(VICTIM in m and reason in m for m in messages), messages
    assert not marker.exists(), "a pickle was executed"


@pytest.mark.parametrize("page", ["pages/home.py", "pages/ppl_vs_compute.py", "pages/train.py"])
@pytest.mark.parametrize("case", ["config from a newer version", "config with an unknown field"])
def test_other_pages_survive_a_bad_config(app_env, page, case):
    CASES[case][0](app_env.checkpoints / VICTIM, app_env.tmp / "unpickled")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
