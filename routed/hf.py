"""Pretrained causal LMs (Llama and GPT-2 families, through `transformers`) as routed models.

Every decoder layer is a candidate exit, read through the model's own final norm and output head
(the logit lens), optionally after a trained per-exit affine map (routed.adapters, the tuned lens).
The wrapper offers what routed's records, sweeps and views use: `config` (a ModelConfig),
`exit_features(idx, exits)` running the trunk only up to the deepest exit asked for, and `lm_head`.
"""

from __future__ import annotations

import hashlib
import threading

import torch
from torch import nn

from routed.config import ModelConfig

# model_type -> (trunk attribute, its list of decoder layers, its final norm)
FAMILIES = {"llama": ("model", "layers", "norm"), "gpt2": ("transformer", "h", "ln_f")}
DEFAULT_WINDOW = 1024  # tokens per evaluation window (records, sweeps), at most the model's own context
LENS_EXITS = 6  # exits read by default on a deep model without adapters (every layer when it has at most 12)


_ROUTED_INTERNALS = ("tok_emb", "pos_emb", "blocks", "embed", "ln_f")


class _Stop(Exception):
    """Raised by a layer hook to end the trunk's forward pass once the deepest wanted exit is read."""


def check_family(hf_config) -> str:
    """The family of a transformers config, or a ValueError naming the supported ones."""
    family = getattr(hf_config, "model_type", None)
    if family not in FAMILIES:
        raise ValueError(
            f"architecture {family!r} is not supported: routed reads causal LMs of the "
            f"{' and '.join(FAMILIES)} families"
        )
    return family


def model_config_of(hf_config, context_length: int | None = None) -> ModelConfig:
    """The routed ModelConfig of a Llama or GPT-2 transformers config; context_length is the evaluation window."""
    family = check_family(hf_config)
    if family == "llama":
        d, heads, layers = hf_config.hidden_size, hf_config.num_attention_heads, hf_config.num_hidden_layers
        kv_heads, d_ff, gated = hf_config.num_key_value_heads, hf_config.intermediate_size, True
        max_context = hf_config.max_position_embeddings
        head_dim = getattr(hf_config, "head_dim", None) or d // heads
        if head_dim * heads != d:
            raise ValueError(f"architecture: heads of {head_dim} x {heads} != width {d} are not supported")
    else:
        d, heads, layers = hf_config.n_embd, hf_config.n_head, hf_config.n_layer
        kv_heads, d_ff, gated = heads, hf_config.n_inner or 4 * d, False
        max_context = hf_config.n_positions
    window = min(context_length or DEFAULT_WINDOW, max_context)
    return ModelConfig(
        vocab_size=hf_config.vocab_size, n_layers=layers, d_model=d, n_heads=heads, context_length=window,
        n_kv_heads=None if kv_heads == heads else kv_heads, d_ff=None if d_ff == 4 * d else d_ff, gated_mlp=gated,
    )


def lens_exits(n_layers: int) -> list[int]:
    """Default exits of a model without adapters: every layer up to 12 layers, else LENS_EXITS evenly spaced."""
    if n_layers <= 12:
        return list(range(1, n_layers + 1))
    return sorted({round(n_layers * k / LENS_EXITS) for k in range(1, LENS_EXITS + 1)})


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of a model's weights (names, shapes and fp32 values): identifies a base model whatever its file."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class PretrainedLM(nn.Module):
    """A frozen transformers causal LM whose every layer is an exit through its own final norm and head."""

    def __init__(self, hf_model: nn.Module, context_length: int | None = None, adapters=None):
        super().__init__()
        family = check_family(hf_model.config)
        trunk_name, layers_name, norm_name = FAMILIES[family]
        head = hf_model.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise ValueError(f"model: the {family} model has no output head that routed can reach")
        self.family = family
        self.hf_model = hf_model.eval().requires_grad_(False)
        self.trunk = getattr(hf_model, trunk_name)
        self.layers = getattr(self.trunk, layers_name)
        self.norm = getattr(self.trunk, norm_name)
        self.lm_head = head
        self.config = model_config_of(hf_model.config, context_length)
        self.adapters = adapters  # routed.adapters.ExitAdapters or None: trained, so not frozen
        # Exits records read by default: the adapters' and the last layer, else a spread (see lens_exits).
        self.default_exits = sorted({*adapters.exits, self.config.n_layers}) if adapters else lens_exits(
            self.config.n_layers)
        self._lock = threading.Lock()  # hooks are installed per call: one forward pass at a time

    def _wanted(self, exits) -> list[int]:
        n = self.config.n_layers
        wanted = sorted({int(e) for e in exits}) if exits is not None else list(range(1, n + 1))
        if not wanted or wanted[0] < 1 or wanted[-1] > n:
            raise ValueError(f"exits must be within 1..{n}, got {exits!r}")
        return wanted

    @torch.no_grad()
    def hidden_states(self, idx: torch.Tensor, exits, stop=None) -> dict[int, torch.Tensor]:
        """Raw residual states (B, T, C) after each wanted layer; the trunk stops after the deepest one.

        `stop(layer, hidden) -> bool`, called at each wanted layer, can end the pass earlier.
        """
        wanted = self._wanted(exits)
        if idx.shape[1] > self.config.context_length:
            raise ValueError(f"sequence of {idx.shape[1]} tokens exceeds context_length={self.config.context_length}")
        captured: dict[int, torch.Tensor] = {}

        def hook_for(layer: int):
            def hook(module, args, output):
                captured[layer] = output[0] if isinstance(output, (tuple, list)) else output
                stopped = stop is not None and stop(layer, captured[layer])
                if stopped or layer == wanted[-1]:
                    raise _Stop
            return hook

        with self._lock:
            handles = [self.layers[layer - 1].register_forward_hook(hook_for(layer)) for layer in wanted]
            try:
                self.trunk(input_ids=idx.to(self.lm_head.weight.device), use_cache=False)
            except _Stop:
                pass
            finally:
                for handle in handles:
                    handle.remove()
        return captured

    def exit_norm(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Exit `layer`'s read-out of raw states: its adapter (if any), then the shared final norm."""
        if self.adapters is not None and layer in self.adapters:
            hidden = self.adapters(layer, hidden)
        return self.norm(hidden)

    def exit_features(self, idx: torch.Tensor, exits=None, stop=None) -> dict[int, torch.Tensor]:
        """Final-normed states (B, T, C) of each requested exit (default: every layer), adapters applied."""
        return {layer: self.exit_norm(layer, h) for layer, h in self.hidden_states(idx, exits, stop).items()}

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own exit: final norm + output head, (..., C) -> (..., V) (no adapter)."""
        return self.lm_head(self.norm(hidden))

    def forward(self, idx: torch.Tensor, exits=None) -> dict[int, torch.Tensor]:
        """Logits (B, T, V) of each requested exit (default: every layer)."""
        return {layer: self.lm_head(h) for layer, h in self.exit_features(idx, exits).items()}

    def __getattr__(self, name: str):
        if name in _ROUTED_INTERNALS:  # read by routed.sparse, which runs routed's own transformer
            raise ValueError("sparse execution and KV-cached generation run routed's own transformer; a pretrained "
                             "model is evaluated dense (records, sweeps) and generates with routed.hf_generate")
        return super().__getattr__(name)

    def train(self, mode: bool = True):
        """Only the adapters ever train: the pretrained model stays in eval mode (no dropout)."""
        super().train(mode)
        self.hf_model.eval()
        return self
