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
