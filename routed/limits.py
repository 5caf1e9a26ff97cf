"""Sizes: sane bounds on every model and training number, and the memory a model needs against what is free.

Checked before anything is allocated: a config from the command line, the app or a checkpoint's
config.json is refused with one error naming the field (and, for memory, the estimate), instead of
taking the machine's memory (or minutes) first. Pure arithmetic; nothing here imports torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

GB = 2**30

# Inclusive upper bounds: far above anything this project trains, low enough that no product of them
# overflows a tensor index and that the memory estimate below is what refuses a large-but-sane config.
MODEL_BOUNDS = {
    "vocab_size": 1 << 20,
    "n_layers": 256,
    "d_model": 1 << 15,
    "n_heads": 1 << 10,
    "context_length": 1 << 17,
}
TRAIN_BOUNDS = {
    "steps": 10**9,
    "batch_size": 1 << 16,
    "eval_interval": 10**9,
    "eval_tokens": 1 << 31,
    "warmup_steps": 10**9,
    "patience": 10**6,
    "epochs": 10**6,
}
EVAL_BATCH = 32  # windows per evaluation batch (routed.records)


class MemoryLimitError(ValueError):
    """A configuration that would need more memory than the machine has free."""


def check_bound(field: str, value, bounds: dict) -> None:
    """ValueError naming `field` when `value` exceeds its bound in `bounds`."""
    limit = bounds.get(field)
    if limit is not None and value is not None and value > limit:
        raise ValueError(f"{field}: {value:,} is above the limit of {limit:,}")


def parameter_count(cfg) -> int:
    """Parameters of a RoutedTransformer of ModelConfig `cfg` (the head is tied to the embedding)."""
    d, n = cfg.d_model, cfg.n_layers
    block = 12 * d * d + 13 * d  # qkv, proj, 4x MLP (weights and biases), two LayerNorms
    return cfg.vocab_size * d + cfg.context_length * d + n * block + 2 * d


def memory_estimate(cfg, batch_size: int = EVAL_BATCH, training: bool = True) -> dict[str, int]:
    """Bytes needed by the largest parts of training (or evaluating) a model of ModelConfig `cfg`, by part.

    fp32 throughout. Training: weights, gradients, two AdamW moments, the best weights kept aside and the
    resumable state serialised at a validation (about 9 copies of the weights); activations kept for the
    backward pass (about 16 floats per token, layer and width, plus one attention matrix per layer); the
    periodic validation's logits. Evaluation: the weights as read (fp16) and as loaded, and the logits and
    log-probabilities of every exit for one batch of windows.
    """
    params = parameter_count(cfg)
    V, T, d, L, h = cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.n_layers, cfg.n_heads
    logits = EVAL_BATCH * T * V * L * 4 * 2
    if not training:
        return {
            "weights (vocab_size x d_model + n_layers x d_model²)": params * (2 + 2 + 4),
            "logits of every exit (context_length x vocab_size x n_layers)": logits,
        }
    tokens = batch_size * T
    return {
        "weights and optimiser state (vocab_size x d_model + n_layers x d_model²)": params * 4 * 9,
        "activations (batch_size x context_length x d_model x n_layers)": tokens * d * (16 * L + 8) * 4,
        "attention (batch_size x n_heads x context_length² x n_layers)": batch_size * h * T * T * L * 4,
        "validation logits (context_length x vocab_size x n_layers)": logits,
    }


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for a new allocation: ROUTED_MAX_MEMORY if set (e.g. 8G), else what the system reports.

    Linux: MemAvailable of /proc/meminfo, capped by a cgroup's limit; elsewhere the free physical pages
    (os.sysconf); a CUDA device: its free memory. None when nothing can be read (no check is made).
    """
    found = []
    if str(device).startswith("cuda"):
        try:
            import torch

            found.append(torch.cuda.mem_get_info(torch.device(device))[0])
        except Exception:  # no CUDA, or a device that cannot be queried
            pass
    else:
        found += [v for v in (_meminfo_available(), _cgroup_free()) if v is not None]
        if not found:  # not Linux: the free physical pages, where the system says
            found += [v for v in (_sysconf_available(),) if v is not None]
    override = os.environ.get("ROUTED_MAX_MEMORY")
    if override:
        found.append(parse_size(override))
    return min(found) if found else None


def check_memory(cfg, batch_size: int = EVAL_BATCH, training: bool = True, device: str = "cpu") -> int:
    """The estimated bytes (see memory_estimate); MemoryLimitError when above the memory available."""
    parts = memory_estimate(cfg, batch_size, training)
    need = sum(parts.values())
    free = available_memory(device)
    if free is not None and need > free:
        largest = max(parts, key=parts.get)
        shape = (f"vocab_size={cfg.vocab_size}, n_layers={cfg.n_layers}, d_model={cfg.d_model}, "
                 f"n_heads={cfg.n_heads}, context_length={cfg.context_length}"
                 + (f", batch_size={batch_size}" if training else ""))
        raise MemoryLimitError(
            f"memory: {'training' if training else 'evaluating'} this model ({shape}) needs about "
            f"{need / GB:,.1f} GB, most of it for {largest} ({parts[largest] / GB:,.1f} GB); "
            f"{free / GB:,.1f} GB is available: make it smaller"
        )
    return need


def parse_size(text: str) -> int:
    """Bytes of "123", "512M", "8G" or "1.5T"; ValueError otherwise."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in units else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"ROUTED_MAX_MEMORY: {text!r} is not a size such as 8G or 512M")
    return int(number * units[unit])


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_free() -> int | None:
    """A cgroup v2 memory limit less its usage, when this process runs under one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        return None


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
