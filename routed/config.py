"""Configurations: the model, the training run, and the research notes' presets (as data)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from routed.limits import MODEL_BOUNDS, TRAIN_BOUNDS, check_bound


def _fail(field_name: str, message: str) -> None:
    raise ValueError(f"{field_name}: {message}")


@dataclass
class ModelConfig:
    """Shape of the decoder-only transformer."""

    vocab_size: int = 4096  # BPE vocabulary; the tokenizer trained on the corpus sets it
    n_layers: int = 3  # transformer blocks; every block can be an exit
    d_model: int = 128  # residual width
    n_heads: int = 4  # attention heads; d_model must divide by it
    context_length: int = 128  # tokens per window
    dropout: float = 0.0  # on attention weights and residual branches (training only)
    # Shapes of other decoder families (pretrained models), for the FLOPs ledger; the defaults are
    # routed's own GPT-2-style block and are left out of to_dict, so its JSON is unchanged.
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None: n_heads
    d_ff: int | None = None  # MLP hidden width; None: 4 * d_model
    gated_mlp: bool = False  # a gated MLP (SwiGLU: gate, up, down: 3 matrices) instead of 2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                _fail(name, f"must be a positive integer, got {value!r}")
            check_bound(name, value, MODEL_BOUNDS)
        if self.d_model % self.n_heads:
            _fail("d_model", f"{self.d_model} is not divisible by n_heads={self.n_heads}")
        if not (_is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            _fail("dropout", f"must be a number in [0, 1), got {self.dropout!r}")
        for name in ("n_kv_heads", "d_ff"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                _fail(name, f"must be a positive integer or None, got {value!r}")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            _fail("n_kv_heads", f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if not isinstance(self.gated_mlp, bool):
            _fail("gated_mlp", f"must be true or false, got {self.gated_mlp!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_heads unless grouped-query attention shares them."""
        return self.n_kv_heads or self.n_heads

    @property
    def mlp_width(self) -> int:
        """Hidden width of the MLP."""
        return self.d_ff or 4 * self.d_model

    @property
    def is_routed_block(self) -> bool:
        """Whether these are the shapes of routed's own block (full attention, 4x GELU MLP)."""
        return self.kv_heads == self.n_heads and self.mlp_width == 4 * self.d_model and not self.gated_mlp

    def to_dict(self) -> dict:
        data = asdict(self)
        for name, default in (("n_kv_heads", None), ("d_ff", None), ("gated_mlp", False)):
            if data[name] == default:
                del data[name]  # readers of older versions know no such field
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(**_known_fields(cls, data, "model config"))


@dataclass
class TrainConfig:
    """One training run: the universal loss (layer weights), the routing rule and the optimiser."""

    # Loss = sum_l w_l * CE_l / sum_l w_l over layers with w_l > 0.
    layer_weights: dict[int, float] = field(default_factory=lambda: {3: 1.0})
    # Dynamic weights: None keeps layer_weights; else they move linearly from layer_weights (first step)
    # to these (last step), e.g. {1: .9, 3: .1} -> {1: .5, 3: .5}. Validation uses these final weights.
    final_layer_weights: dict[int, float] | None = None
    # A token exits after layer 1 when its confidence >= threshold; None: no routing (all go deep).
    routing_threshold: float | None = None
    steps: int | None = 240  # optimiser steps (about two minutes at the default size on 2 cores)
    epochs: float | None = None  # passes over the training tokens (overrides steps)
    batch_size: int = 32  # windows per step
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay ends at learning_rate * min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0
    eval_interval: int = 60  # steps between validations
    eval_tokens: int = 65_536  # validation tokens per periodic evaluation (a fixed prefix)
    patience: int | None = 3  # validations without improvement before stopping; None = never
    bf16: bool = False  # bfloat16 autocast for the forward pass

    def __post_init__(self) -> None:
        self.layer_weights = _parse_layer_weights(self.layer_weights)
        if self.final_layer_weights is not None:
            self.final_layer_weights = _parse_layer_weights(self.final_layer_weights, "final_layer_weights")
        t = self.routing_threshold
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or t != t or not 0 <= t <= 1:
                _fail("routing_threshold", f"must be a number in [0, 1] or None, got {t!r}")
            self.routing_threshold = float(t)
        if self.epochs is None:
            _positive_int("steps", self.steps)
        elif not (_finite(self.epochs) and self.epochs > 0):
            _fail("epochs", f"must be a positive number, got {self.epochs!r}")
        for name in ("batch_size", "eval_interval", "eval_tokens"):
            _positive_int(name, getattr(self, name))
        lr = self.learning_rate
        if not (_finite(lr) and lr > 0):
            _fail("learning_rate", f"must be a positive number, got {lr!r}")
        for name in ("warmup_steps",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                _fail(name, f"must be a non-negative integer, got {value!r}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0):
                _fail(name, f"must be a non-negative number, got {value!r}")
        if not (_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            _fail("min_lr_ratio", f"must be a number in [0, 1], got {self.min_lr_ratio!r}")
        # torch seeds are 64-bit; a bad seed or flag would otherwise fail only once training starts
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and -(2**63) <= self.seed < 2**64):
            _fail("seed", f"must be a 64-bit integer, got {self.seed!r}")
        if not isinstance(self.bf16, bool):
            _fail("bf16", f"must be true or false, got {self.bf16!r}")
        if self.patience is not None:
            _positive_int("patience", self.patience)
        for name in TRAIN_BOUNDS:  # valid types by now; None means unused
            check_bound(name, getattr(self, name), TRAIN_BOUNDS)

    @property
    def trained_exits(self) -> list[int]:
        """Layers whose output head gets a loss at some step, ascending."""
        weights = [self.layer_weights, self.final_layer_weights or {}]
        return sorted({layer for w in weights for layer, v in w.items() if v > 0})

    def layer_weights_at(self, progress: float) -> dict[int, float]:
        """The loss weights a fraction `progress` (0: first step, 1: last) through training."""
        if self.final_layer_weights is None:
            return dict(self.layer_weights)
        p = min(1.0, max(0.0, progress))
        layers = sorted(set(self.layer_weights) | set(self.final_layer_weights))
        start, end = self.layer_weights, self.final_layer_weights
        return {k: (1 - p) * start.get(k, 0.0) + p * end.get(k, 0.0) for k in layers}

    @property
    def validation_weights(self) -> dict[int, float]:
        """The weights of the validation loss that picks the best step: the final ones."""
        return dict(self.final_layer_weights or self.layer_weights)

    def check_model(self, model: ModelConfig) -> None:
        """Raise ValueError when the weights name a layer the model does not have."""
        for name, weights in (("layer_weights", self.layer_weights), ("final_layer_weights", self.final_layer_weights)):
            missing = [layer for layer, w in (weights or {}).items() if w > 0 and layer > model.n_layers]
            if missing:
                _fail(name, f"layer(s) {missing} get a weight but the model has only {model.n_layers} layer(s)")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layer_weights"] = {str(k): v for k, v in self.layer_weights.items()}
        if self.final_layer_weights is not None:
            data["final_layer_weights"] = {str(k): v for k, v in self.final_layer_weights.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return cls(**_known_fields(cls, data, "training config"))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    # ints are finite, and math.isfinite would overflow on a huge one
    return _is_number(value) and (isinstance(value, int) or math.isfinite(value))


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(name, f"must be a positive integer, got {value!r}")


def _parse_layer_weights(weights, name: str = "layer_weights") -> dict[int, float]:
    if not isinstance(weights, dict) or not weights:
        _fail(name, f"must be a non-empty mapping {{layer: weight}}, got {weights!r}")
    parsed: dict[int, float] = {}
    for layer, weight in weights.items():
        try:
            layer_int = int(layer)
            weight_f = float(weight)
            if isinstance(layer, float) and layer != layer_int:
                raise ValueError("a fractional layer")  # 1.7 is no layer, rather than silently layer 1
        except (TypeError, ValueError, OverflowError):
            _fail(name, f"entry {layer!r}: {weight!r} is not layer (int): weight (number)")
        if layer_int < 1:
            _fail(name, f"layers are numbered from 1, got {layer!r}")
        if not math.isfinite(weight_f) or weight_f < 0:
            _fail(name, f"weight of layer {layer_int} must be finite and >= 0, got {weight!r}")
        parsed[layer_int] = weight_f
    if sum(parsed.values()) <= 0:
        _fail(name, "all weights are zero: at least one layer needs a positive weight")
    return dict(sorted(parsed.items()))


def _known_fields(cls, data: dict, what: str) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{what}: must be a mapping of field names to values, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names, key=repr)  # keys need not be strings, nor comparable
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}")
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class Preset:
    """A named configuration from the research notes."""

    name: str
    description: str
    layer_weights: dict[int, float]
    routing_threshold: float | None  # None: no routing
    n_layers: int = 3

    def train_config(self, **overrides) -> TrainConfig:
        return TrainConfig(
            layer_weights=dict(self.layer_weights), routing_threshold=self.routing_threshold, **overrides
        )

    def model_config(self, **overrides) -> ModelConfig:
        return ModelConfig(**{"n_layers": self.n_layers, **overrides})


_THIRD = 1 / 3

# Exactly the configurations of the research notes. The notes do not give asymmetric_l2's split;
# we keep L1 at 0.7 (as in asymmetric_best) and share the remaining 0.3 equally between L2 and L3.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("standard_3l", "Standard 3-layer model", {3: 1.0}, None),
        Preset("standard_1l", "Standard 1-layer model", {1: 1.0}, None, n_layers=1),
        Preset("standard_routing", "Auxiliary loss, alpha=0.5", {1: 0.5, 2: 0.0, 3: 0.5}, 0.95),
        Preset("asymmetric_best", "Asymmetric, alpha=0.7, no L2 loss", {1: 0.7, 2: 0.0, 3: 0.3}, 0.95),
        Preset("asymmetric_l2", "Asymmetric + L2 loss, alpha=0.7", {1: 0.7, 2: 0.15, 3: 0.15}, 0.95),
        Preset("lpt", "Layer-wise progressive training", {1: _THIRD, 2: _THIRD, 3: _THIRD}, None),
        Preset("lpt_routing", "LPT with routing", {1: _THIRD, 2: _THIRD, 3: _THIRD}, 0.7),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a ValueError listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def trained_as(name: str) -> str:
    """The preset whose training `name` reuses: lpt_routing is the lpt model read at another threshold."""
    return "lpt" if name == "lpt_routing" else name
