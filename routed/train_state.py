"""The state of an interrupted training run, for --resume: tensors in safetensors, the rest in JSON.

Kept in a hidden folder beside the checkpoint it will become (.NAME.resume), written atomically and
only over a state of ours (routed.folders); read with size bounds, its fields checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from routed.files import MB, read_json, read_regular
from routed.folders import TRAIN_STATE, recover, write_folder
from routed.limits import available_memory

STATE_FORMAT_VERSION = 1  # of state.json; a newer one is refused
MAX_STATE_JSON_BYTES = 16 * MB  # the history of validations rides along


def train_state_path(checkpoint: Path | str) -> Path:
    """Where a run that saves to `checkpoint` keeps its resumable state: a hidden folder beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / f".{checkpoint.name}.resume"


def save_train_state(path: Path | str, tensors: dict[str, torch.Tensor], meta: dict, tokenizer) -> Path:
    """Write the training state atomically (see `write_folder`): a crash keeps the previous state."""
    from safetensors.torch import save

    weights = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    return write_folder(Path(path), {
        "state.safetensors": weights,
        "tokenizer.json": tokenizer.to_str().encode("utf-8"),
        "state.json": json.dumps({"format_version": STATE_FORMAT_VERSION, **meta}).encode("utf-8"),
    }, TRAIN_STATE)


def load_train_state(path: Path | str):
    """(tensors, meta, tokenizer) of a saved training state, or None when there is none."""
    from safetensors.torch import load
    from tokenizers import Tokenizer

    from routed.checkpoint import MAX_TOKENIZER_BYTES, CheckpointError

    path = Path(path)
    recover(path)
    if not (path / "state.json").exists():
        return None
    where = f"training state {str(path)!r}"
    afresh = "; delete it to start afresh"
    meta = read_json(path / "state.json", MAX_STATE_JSON_BYTES, where, CheckpointError)
    fields = {"format_version": (int, float), "step": int, "elapsed_s": (int, float), "best_loss": (int, float),
              "bad_evals": int, "best_step": int, "history": list}
    if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t) for k, t in fields.items()):
        raise CheckpointError(f"{where}: state.json lacks fields or has the wrong types{afresh}")
    if meta["format_version"] > STATE_FORMAT_VERSION:
        raise CheckpointError(f"{where} was written by a newer routed{afresh}")
    free = available_memory() or 64 * 2**30
    try:
        tensors = load(read_regular(path / "state.safetensors", free, where, CheckpointError))
        tokenizer = Tokenizer.from_str(read_regular(path / "tokenizer.json", MAX_TOKENIZER_BYTES, where,
                                                    CheckpointError).decode("utf-8"))
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{afresh}") from None
    except Exception as exc:  # safetensors and UTF-8 errors; tokenizers raises a bare Exception
        raise CheckpointError(f"{where} cannot be read ({str(exc)[:200]}){afresh}") from None
    return tensors, meta, tokenizer


def pack_train_state(model, best_state: dict | None, optimizer, sampler, device: torch.device) -> dict[str, torch.Tensor]:
    """Everything a resumed run needs as flat tensors: weights, best weights, Adam moments, sampler and RNGs."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tensors |= {f"best.{k}": v for k, v in (best_state or {}).items() if k != "lm_head.weight"}
    tensors |= {f"adam.{i}.{name}": t for i, st in optimizer.state_dict()["state"].items() for name, t in st.items()}
    tensors |= sampler.state() | {"torch.rng": torch.get_rng_state()}
    if device.type == "cuda":  # dropout on the GPU draws from its own generator
        tensors["cuda.rng"] = torch.cuda.get_rng_state(device)
    return tensors


def restore_train_state(tensors: dict[str, torch.Tensor], model, optimizer, sampler, device: torch.device) -> dict | None:
    """Load what `pack_train_state` saved into the live objects; returns the best weights (None if none yet).

    Raises KeyError, RuntimeError, TypeError or ValueError on a damaged or edited state.
    """
    model.load_state_dict(_with_tied_head({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}))
    best_state = None
    if any(k.startswith("best.") for k in tensors):
        best_state = _with_tied_head({k[5:]: v for k, v in tensors.items() if k.startswith("best.")})
    optimizer.load_state_dict(_optimizer_state(optimizer, tensors))
    sampler.load_state(tensors)
    torch.set_rng_state(tensors["torch.rng"])
    if device.type == "cuda" and "cuda.rng" in tensors:
        torch.cuda.set_rng_state(tensors["cuda.rng"], device)
    return best_state


def _with_tied_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**state, "lm_head.weight": state["tok_emb.weight"]}  # the head is the embedding, stored once


def _optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict:
    """An optimizer state_dict rebuilt from the flat `adam.{param index}.{name}` tensors of a saved state."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}
