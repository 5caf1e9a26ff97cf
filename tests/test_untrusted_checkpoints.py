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


def deeply_nested(folder: Path, marker: Path) -> None:
    (folder / "config.json").write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")


def huge_number(folder: Path, marker: Path) -> None:
    edit_config(folder, lambda c: c["model"].update(d_model=10**30))


def corpus_of_wrong_type(folder: Path, marker: Path) -> None:
    edit_config(folder, lambda c: c.update(corpus=["not", "a", "mapping"]))


def nan_weights(folder: Path, marker: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    tensors["ln_f.weight"][0] = float("nan")
    save_file(tensors, folder / "model.safetensors")


def integer_weights(folder: Path, marker: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    tensors["ln_f.weight"] = tensors["ln_f.weight"].to(torch.int32)
    save_file(tensors, folder / "model.safetensors")


CASES = {
    "truncated weights": (truncate, "not a valid safetensors file"),
    "pickle renamed to model.safetensors": (pickle_renamed, "not a valid safetensors file"),
    "torch.save file renamed": (torch_save_renamed, "not a valid safetensors file"),
    "missing tokenizer": (missing_tokenizer, "missing tokenizer.json"),
    "config from a newer version": (newer_version, "upgrade routed"),
    "config with an unknown field": (unknown_field, "unknown field"),
    "tensor shapes disagree with the config": (shapes_disagree, "weights do not match config.json"),
    "config nested 100,000 deep": (deeply_nested, "nested more than 64"),
    "a 31-digit width": (huge_number, "d_model: 1,000,000,000,000,000,000,000,000,000,000 is above the limit"),
    "corpus of the wrong type": (corpus_of_wrong_type, "corpus must be"),
    "NaN weights": (nan_weights, "NaN or infinite values"),
    "integer weights": (integer_weights, "floating-point weights only"),
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
@pytest.mark.parametrize("case", ["config from a newer version", "config with an unknown field", "config nested 100,000 deep",
                                  "corpus of the wrong type", "integer weights"])
def test_other_pages_survive_a_bad_config(app_env, page, case):
    CASES[case][0](app_env.checkpoints / VICTIM, app_env.tmp / "unpickled")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.parametrize("page, picker", [("pages/home.py", "home_model"), ("pages/token_routing.py", "routing_model")])
def test_a_bad_checkpoint_is_listed_with_its_problem_and_skipped(app_env, page, picker):
    deeply_nested(app_env.checkpoints / VICTIM, app_env.tmp / "unpickled")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [
        f"Skipped 1 checkpoint folder(s) that cannot be used:\n\n- checkpoint '{VICTIM}': config.json: "
        "nested more than 64 levels deep"
    ]
    assert VICTIM not in at.selectbox(key=picker).options and at.selectbox(key=picker).options
