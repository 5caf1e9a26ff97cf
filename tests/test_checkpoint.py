"""Checkpoint folders: exact round trips, atomic replacement, and refusal of anything untrustworthy."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from routed.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from routed.folders import OutputError
from routed.model import RoutedTransformer


@pytest.fixture(scope="module")
def probe():
    return torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))


def save(tiny_run, path, model=None, **kwargs):
    return save_checkpoint(
        path,
        model if model is not None else tiny_run.model,
        tiny_run.tokenizer,
        tiny_run.train_config,
        tiny_run.corpus_name,
        tiny_run.corpus_fingerprint,
        tiny_run.history,
        **kwargs,
    )


def logits(model, idx):
    with torch.no_grad():
        return model.eval()(idx)


def other_model(tiny_run, seed=1):
    torch.manual_seed(seed)
    return RoutedTransformer(tiny_run.model_config)


@pytest.fixture
def saved(tiny_run, tmp_path):
    return save(tiny_run, tmp_path / "ckpt")


def test_float32_round_trip_gives_identical_logits(tiny_run, tmp_path, probe):
    path = save(tiny_run, tmp_path / "ckpt", dtype=torch.float32, extra={"preset": "asymmetric_best"})
    ckpt = load_checkpoint(path)
    expected, actual = logits(tiny_run.model, probe), logits(ckpt.model, probe)
    assert expected.keys() == actual.keys()
    for layer in expected:
        assert torch.equal(expected[layer], actual[layer]), layer
    assert ckpt.model.lm_head.weight is ckpt.model.tok_emb.weight  # still tied after loading
    assert not ckpt.model.training
    assert ckpt.model_config == tiny_run.model_config
    assert ckpt.train_config == tiny_run.train_config
    assert ckpt.tokenizer.to_str() == tiny_run.tokenizer.to_str()
    assert ckpt.corpus == tiny_run.corpus_name and ckpt.name == "ckpt"
    assert ckpt.meta["preset"] == "asymmetric_best" and ckpt.meta["dtype"] == "float32"
    assert [r["step"] for r in ckpt.history] == [r["step"] for r in tiny_run.history]


def test_default_fp16_round_trip_equals_the_fp16_rounded_model(tiny_run, saved, probe):
    ckpt = load_checkpoint(saved)
    assert ckpt.meta["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())
    rounded = other_model(tiny_run)
    rounded.load_state_dict({k: v.half().float() for k, v in tiny_run.model.state_dict().items()})
    expected, actual = logits(rounded, probe), logits(ckpt.model, probe)
    for layer in expected:
        assert torch.equal(expected[layer], actual[layer]), layer
    # ...and close to, but not the same as, the full-precision model.
    assert torch.allclose(actual[3], logits(tiny_run.model, probe)[3], atol=1e-2)


def test_saving_over_a_checkpoint_replaces_it_whole(tiny_run, tmp_path, probe):
    path = save(tiny_run, tmp_path / "ckpt", dtype=torch.float32)
    (path / "sweep.csv").write_text("threshold,routed_ppl\n", encoding="utf-8")  # ours, and stale once replaced
    replacement = other_model(tiny_run)
    save(tiny_run, path, model=replacement, dtype=torch.float32)
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "history.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    loaded = logits(load_checkpoint(path).model, probe)
    assert torch.equal(loaded[3], logits(replacement, probe)[3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary or old folders left


def test_a_checkpoint_holding_a_users_file_is_never_replaced(tiny_run, tmp_path, probe):
    path = save(tiny_run, tmp_path / "ckpt", dtype=torch.float32)
    (path / "notes.txt").write_text("mine", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(OutputError, match=r"holds files routed did not write \(notes.txt\)"):
        save(tiny_run, path, model=other_model(tiny_run))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_no_temporary_folders_are_left(tiny_run, tmp_path):
    save(tiny_run, tmp_path / "a")
    save(tiny_run, tmp_path / "b")
    save(tiny_run, tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_a_failed_save_keeps_the_old_checkpoint(tiny_run, tmp_path, probe):
    path = save(tiny_run, tmp_path / "ckpt", dtype=torch.float32)

    class BrokenTokenizer:
        def get_vocab_size(self):
            return tiny_run.tokenizer.get_vocab_size()

        def to_str(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, other_model(tiny_run), BrokenTokenizer(), tiny_run.train_config, "c", "f", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert torch.equal(logits(load_checkpoint(path).model, probe)[3], logits(tiny_run.model, probe)[3])


def test_fingerprint_follows_the_weights(tiny_run, tmp_path):
    a = load_checkpoint(save(tiny_run, tmp_path / "a"))
    b = load_checkpoint(save(tiny_run, tmp_path / "b"))
    c = load_checkpoint(save(tiny_run, tmp_path / "c", model=other_model(tiny_run)))
    assert a.fingerprint == b.fingerprint != c.fingerprint


# ---------------------------------------------------------------------------------------------
# Refusals


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        load_checkpoint(tmp_path / "nothing here")


def test_truncated_weights_are_refused(saved):
    raw = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is not a valid safetensors file"):
        load_checkpoint(saved)


def test_empty_weights_file_is_refused(saved):
    (saved / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(saved)


def test_torch_pickle_renamed_to_safetensors_is_refused(tiny_run, saved):
    torch.save(dict(tiny_run.model.state_dict()), saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(saved)


class _CreatesMarker:
    """Unpickling this object creates a file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_unpickling(saved, tmp_path, protocol):
    marker = tmp_path / "unpickled-marker"
    payload = pickle.dumps({"tok_emb.weight": _CreatesMarker(marker)}, protocol=protocol)
    (saved / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(saved)
    assert not marker.exists()
    # The payload really is live: unpickling it would have created the marker.
    pickle.loads(payload)["tok_emb.weight"].close()
    assert marker.exists()


@pytest.mark.parametrize("missing", ["tokenizer.json", "config.json", "model.safetensors"])
def test_missing_file_is_refused(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(CheckpointError, match=f"missing {missing}"):
        load_checkpoint(saved)


def test_missing_history_is_tolerated(saved):
    (saved / "history.json").unlink()
    assert load_checkpoint(saved).history == []


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config[section][field] = value
        else:
            config[key] = value
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")


def test_newer_format_version_is_refused(saved):
    edit_config(saved, format_version=99)
    with pytest.raises(CheckpointError, match=r"format 99.*upgrade routed"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="format 99"):
        read_config(saved)


def test_tensor_shape_mismatch_is_refused(saved):
    edit_config(saved, model__context_length=32)  # pos_emb needs 32 rows, the file has 16
    with pytest.raises(
        CheckpointError, match=r"weights do not match config\.json.*pos_emb\.weight.*\(16, 32\).*\(32, 32\)"
    ):
        load_checkpoint(saved)


def test_missing_layer_weights_are_refused(saved):
    edit_config(saved, model__n_layers=4)
    with pytest.raises(CheckpointError, match=r"weights do not match config\.json.*blocks\.3"):
        load_checkpoint(saved)


def test_tokenizer_of_another_size_is_refused(saved):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(saved / "tokenizer.json"))
    tokenizer.add_special_tokens(["<one more>"])  # 301 tokens for a model of 300
    tokenizer.save(str(saved / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="tokenizer has"):
        load_checkpoint(saved)


def test_malformed_tokenizer_is_refused(saved):
    (saved / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="tokenizer.json cannot be read"):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    "config_text",
    ["{not json", "[1, 2]", '{"model": {}}', json.dumps({"model": {"n_layer": 3}, "train": {}, "corpus": {}})],
    ids=["not-json", "not-an-object", "no-sections", "unknown-field"],
)
def test_malformed_config_is_refused(saved, config_text):
    (saved / "config.json").write_text(config_text, encoding="utf-8")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(saved)


def test_invalid_training_config_is_refused(saved):
    edit_config(saved, train__routing_threshold=1.5)
    with pytest.raises(CheckpointError, match="routing_threshold"):
        load_checkpoint(saved)


@pytest.mark.parametrize("version", ["one", None])
def test_damaged_format_version_is_refused_with_checkpoint_error(saved, version):
    edit_config(saved, format_version=version)
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(saved)
