"""Exit adapters: a trained affine map per exit of a frozen pretrained model (as the tuned lens does).

The logit lens of a small pretrained model reads its middle layers poorly; a map h -> W h + b per
exit, before the model's shared final norm and head, makes each a usable exit. An adapters folder
holds config.json (kind "exit-adapters": the base model's hf: name and weight fingerprint, the
exits, the training config, the corpus) and adapters.safetensors; it lists beside routed's
checkpoints, and loading it refuses a base model whose weights differ.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn

from routed import __version__

KIND = "exit-adapters"
WEIGHTS = "adapters.safetensors"
FORMAT_VERSION = 1


class ExitAdapters(nn.Module):
    """One affine map (d_model -> d_model) per exit, the identity until trained.

    Each map reads its exit's states standardised, W (h - shift) / scale + b, with shift and scale
    fixed from the training states: residual streams carry a few huge dimensions, and on
    standardised inputs one learning rate suits every weight.
    """

    def __init__(self, d_model: int, exits):
        super().__init__()
        exits = sorted({int(e) for e in exits})
        if not exits or exits[0] < 1:
            raise ValueError(f"exits: adapters need layers numbered from 1, got {exits!r}")
        self.maps = nn.ModuleDict({str(e): nn.Linear(d_model, d_model) for e in exits})
        for e in exits:
            self.register_buffer(f"shift_{e}", torch.zeros(d_model))
            self.register_buffer(f"scale_{e}", torch.ones(d_model))
        with torch.no_grad():
            for m in self.maps.values():
                m.weight.copy_(torch.eye(d_model))
                m.bias.zero_()

    @property
    def exits(self) -> list[int]:
        return sorted(int(e) for e in self.maps)

    def __contains__(self, layer: int) -> bool:
        return str(layer) in self.maps

    @torch.no_grad()
    def set_map(self, layer: int, weight: torch.Tensor, bias: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        """Set exit `layer`'s map to h -> weight @ ((h - shift) / scale) + bias."""
        self.maps[str(layer)].weight.copy_(weight)
        self.maps[str(layer)].bias.copy_(bias)
        getattr(self, f"shift_{layer}").copy_(shift)
        getattr(self, f"scale_{layer}").copy_(scale)

    def forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The map of exit `layer` applied to raw residual states (..., C)."""
        z = (hidden - getattr(self, f"shift_{layer}")) / getattr(self, f"scale_{layer}")
        return self.maps[str(layer)](z)


def is_adapter_folder(path) -> bool:
    """Whether `path` is a folder of exit adapters (it holds adapters.safetensors)."""
    try:
        return (Path(path) / WEIGHTS).is_file()
    except (TypeError, OSError):
        return False


def save_adapters(path, adapters: ExitAdapters, model_config, base: dict, train_config, corpus: dict,
                  history: list[dict], extra: dict | None = None) -> Path:
    """Write an adapters folder atomically (fp16 weights; config.json last). `base`: {spec, fingerprint}."""
    from safetensors.torch import save

    from routed.folders import EXIT_ADAPTERS, write_folder

    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in adapters.state_dict().items()}
    weights = save(tensors, metadata={"format": "pt", "base_fingerprint": base["fingerprint"]})
    fingerprint = hashlib.sha256(weights + base["fingerprint"].encode()).hexdigest()[:16]
    config = {
        "kind": KIND, "format_version": FORMAT_VERSION, "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": dict(base), "exits": adapters.exits, "model": model_config.to_dict(), "train": train_config.to_dict(),
        "corpus": dict(corpus), "fingerprint": fingerprint, **(extra or {}),
    }
    return write_folder(Path(path), {
        WEIGHTS: weights,
        "history.json": json.dumps(history, indent=1).encode("utf-8"),
        "config.json": json.dumps(config, indent=2).encode("utf-8"),
    }, kind=EXIT_ADAPTERS)


def read_adapter_config(path) -> dict:
    """config.json of an adapters folder, checked; a ValueError says what is wrong."""
    from routed.checkpoint import CheckpointError
    from routed.config import ModelConfig, TrainConfig

    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"adapters {path.name!r}: config.json cannot be read ({exc})") from exc
    if not isinstance(config, dict) or config.get("kind") != KIND:
        raise CheckpointError(f"adapters {path.name!r}: config.json is not an exit-adapters config")
    if not isinstance(config.get("format_version"), int) or config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"adapters {path.name!r}: format {config.get('format_version')!r} is not one this "
                              f"version ({__version__}) reads: upgrade routed")
    try:
        base, exits = config["base"], config["exits"]
        ModelConfig.from_dict(config["model"])
        TrainConfig.from_dict(config["train"])
        if not (isinstance(base["spec"], str) and isinstance(base["fingerprint"], str) and config["corpus"]["name"]):
            raise ValueError("base or corpus")
        if not exits or not all(isinstance(e, int) and 1 <= e <= config["model"]["n_layers"] for e in exits):
            raise ValueError(f"exits {exits!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"adapters {path.name!r}: invalid config.json ({exc})") from exc
    return config


def load_adapted(path, base=None):
    """An adapters folder with its base model: a PretrainedCheckpoint routing on the adapted exits.

    `base` (a loaded PretrainedCheckpoint) saves loading the base again; either way its weights must
    be those the adapters were trained on.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    from routed.checkpoint import CheckpointError
    from routed.config import TrainConfig
    from routed.hf import PretrainedLM
    from routed.pretrained import PretrainedCheckpoint, load_pretrained

    path = Path(path)
    config = read_adapter_config(path)
    try:
        tensors = load((path / WEIGHTS).read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"adapters {path.name!r}: {WEIGHTS} is not a valid safetensors file ({exc})") from exc
    context = config["model"]["context_length"]
    base = base if base is not None else load_pretrained(config["base"]["spec"], context_length=context)
    check_base(config, base.meta["base"]["fingerprint"], path.name)
    d = base.model.config.d_model
    adapters = ExitAdapters(d, config["exits"])
    expected = adapters.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"adapters {path.name!r}: {WEIGHTS} does not hold {len(config['exits'])} maps of width {d}")
    adapters.load_state_dict({k: v.float() for k, v in tensors.items()})
    model = PretrainedLM(base.model.hf_model, context, adapters)
    history = []
    try:
        history = json.loads((path / "history.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass  # informative only
    return PretrainedCheckpoint(path, model.eval(), base.tokenizer, TrainConfig.from_dict(config["train"]), config,
                                history)


def check_base(config: dict, fingerprint: str, name: str = "adapters") -> None:
    """Refuse adapters trained on another base model (its weights' fingerprint differs)."""
    from routed.checkpoint import CheckpointError

    expected = config["base"]["fingerprint"]
    if fingerprint != expected:
        raise CheckpointError(
            f"{name}: these adapters were trained on {config['base']['spec']} with weights {expected}; the base "
            f"model given has weights {fingerprint}: adapters only fit the model they were trained on"
        )
