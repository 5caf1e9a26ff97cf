"""ModelConfig, TrainConfig and the presets: validation, round-trips, and the notes' table."""

from __future__ import annotations

import math

import pytest

from routed.config import PRESETS, ModelConfig, TrainConfig, get_preset
from routed.routing import check_threshold

THIRD = 1 / 3

# The research notes' table: name -> (layers, layer weights, routing threshold).
NOTES_TABLE = {
    "standard_3l": (3, {3: 1.0}, None),
    "standard_1l": (1, {1: 1.0}, None),
    "standard_routing": (3, {1: 0.5, 2: 0.0, 3: 0.5}, 0.95),
    "asymmetric_best": (3, {1: 0.7, 2: 0.0, 3: 0.3}, 0.95),
    "asymmetric_l2": (3, {1: 0.7, 2: 0.15, 3: 0.15}, 0.95),
    "lpt": (3, {1: THIRD, 2: THIRD, 3: THIRD}, None),
    "lpt_routing": (3, {1: THIRD, 2: THIRD, 3: THIRD}, 0.7),
}


def test_defaults_are_the_documented_runnable_size():
    model, train = ModelConfig(), TrainConfig()
    assert (model.vocab_size, model.n_layers, model.d_model, model.n_heads, model.context_length) == (4096, 3, 128, 4, 128)
    assert train.layer_weights == {3: 1.0} and train.routing_threshold is None
    train.check_model(model)  # the defaults fit together: raises ValueError otherwise


def test_exactly_the_notes_presets():
    assert sorted(PRESETS) == sorted(NOTES_TABLE)


@pytest.mark.parametrize("name", sorted(NOTES_TABLE))
def test_preset_equals_the_notes_table(name):
    layers, weights, threshold = NOTES_TABLE[name]
    preset = get_preset(name)
    assert preset.name == name
    assert preset.n_layers == layers
    assert preset.routing_threshold == threshold
    # Zero-weight layers are part of the table (no L2 loss), so compare the whole mapping.
    assert dict(preset.layer_weights) == weights
    train_config, model_config = preset.train_config(), preset.model_config()
    assert train_config.layer_weights == weights
    assert train_config.routing_threshold == threshold
    assert model_config.n_layers == layers
    train_config.check_model(model_config)  # every preset fits its own model
    assert train_config.trained_exits == sorted(k for k, w in weights.items() if w > 0)


def test_preset_configs_do_not_share_the_weight_mapping():
    config = get_preset("asymmetric_best").train_config()
    config.layer_weights[1] = 99.0
    assert get_preset("asymmetric_best").layer_weights[1] == 0.7


def test_preset_overrides():
    preset = get_preset("standard_routing")
    assert preset.train_config(steps=7).steps == 7
    assert preset.model_config(d_model=64, n_heads=2).d_model == 64


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"preset.*'nope'.*standard_3l.*lpt_routing"):
        get_preset("nope")


@pytest.mark.parametrize(
    "weights",
    [{1: -0.1, 3: 1.0}, {1: 0.0, 3: 0.0}, {1: math.nan, 3: 1.0}, {1: math.inf}, {}, {0: 1.0}, {"a": 1.0}, [1.0]],
    ids=["negative", "all-zero", "nan", "inf", "empty", "layer-0", "not-a-layer", "not-a-mapping"],
)
def test_invalid_layer_weights_name_the_field(weights):
    with pytest.raises(ValueError, match="^layer_weights"):
        TrainConfig(layer_weights=weights)


def test_weight_on_a_layer_the_model_lacks():
    config = TrainConfig(layer_weights={1: 0.5, 4: 0.5})
    with pytest.raises(ValueError, match=r"^layer_weights.*\[4\].*3 layer"):
        config.check_model(ModelConfig(n_layers=3))
    config.check_model(ModelConfig(n_layers=4))
    # A zero weight on a missing layer trains nothing there, so it is allowed.
    TrainConfig(layer_weights={1: 1.0, 5: 0.0}).check_model(ModelConfig(n_layers=3))


@pytest.mark.parametrize("threshold", [-0.01, 1.01, math.nan, math.inf, True, "0.5"])
def test_invalid_routing_threshold(threshold):
    with pytest.raises(ValueError, match="^routing_threshold"):
        TrainConfig(routing_threshold=threshold)
    with pytest.raises(ValueError, match="^threshold"):
        check_threshold(threshold)


@pytest.mark.parametrize("threshold", [None, 0, 0.0, 0.5, 1, 1.0])
def test_valid_routing_threshold(threshold):
    config = TrainConfig(routing_threshold=threshold)
    assert config.routing_threshold == threshold
    check_threshold(threshold)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", 0.0),
        ("learning_rate", -1e-3),
        ("learning_rate", math.nan),
        ("steps", 0),
        ("steps", -5),
        ("steps", 2.5),
        ("batch_size", 0),
        ("batch_size", -1),
        ("eval_interval", 0),
        ("eval_tokens", 0),
        ("patience", 0),
        ("warmup_steps", -1),
        ("weight_decay", -0.1),
        ("grad_clip", math.nan),
        ("min_lr_ratio", 1.5),
        ("epochs", 0),
        ("epochs", math.inf),
    ],
)
def test_invalid_train_field_is_named(field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        TrainConfig(**{field: value})


def test_epochs_replace_steps():
    config = TrainConfig(steps=None, epochs=0.5)
    assert config.epochs == 0.5
    with pytest.raises(ValueError, match="^steps"):
        TrainConfig(steps=None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vocab_size", 0),
        ("n_layers", 0),
        ("n_layers", -1),
        ("d_model", 0),
        ("n_heads", 0),
        ("context_length", 0),
        ("n_layers", 2.0),
        ("n_layers", True),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("dropout", math.nan),
    ],
)
def test_invalid_model_field_is_named(field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        ModelConfig(**{field: value})


def test_d_model_must_divide_by_n_heads():
    with pytest.raises(ValueError, match=r"^d_model.*n_heads=3"):
        ModelConfig(d_model=32, n_heads=3)
    assert ModelConfig(d_model=32, n_heads=4).head_dim == 8


def test_model_config_round_trip():
    config = ModelConfig(vocab_size=300, n_layers=2, d_model=48, n_heads=3, context_length=20, dropout=0.1)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_train_config_round_trip_through_json():
    import json

    config = TrainConfig(
        layer_weights={1: 0.7, 2: 0.0, 3: 0.3}, routing_threshold=0.95, steps=None, epochs=1.5, seed=3, patience=None
    )
    data = json.loads(json.dumps(config.to_dict()))  # JSON turns the layer keys into strings
    restored = TrainConfig.from_dict(data)
    assert restored == config
    assert restored.layer_weights == {1: 0.7, 2: 0.0, 3: 0.3}


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig])
def test_from_dict_refuses_unknown_fields(cls):
    data = cls().to_dict() | {"n_layer": 3}
    with pytest.raises(ValueError, match=r"unknown field.*n_layer"):
        cls.from_dict(data)


def test_layer_weights_are_normalised_to_sorted_int_float():
    config = TrainConfig(layer_weights={"3": "0.3", 1: 1})
    assert config.layer_weights == {1: 1.0, 3: 0.3}
    assert list(config.layer_weights) == [1, 3]
    assert all(isinstance(k, int) and isinstance(v, float) for k, v in config.layer_weights.items())
