"""Checkpoints: one folder per model — config.json, model.safetensors, tokenizer.json, history.json.

Written atomically and only over a checkpoint of ours (routed.folders); read without unpickling anything,
every file bounded in size, the weights' header checked against config.json (routed.weights) and the
memory it needs checked (routed.limits) before a model is built.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from routed import __version__
from routed.config import ModelConfig, TrainConfig
from routed.files import MB, read_json, read_regular
from routed.folders import CHECKPOINT, recover, write_folder
from routed.limits import MemoryLimitError, check_memory, parameter_count
from routed.model import RoutedTransformer

FORMAT_VERSION = 1
FILES = ("config.json", "model.safetensors", "tokenizer.json", "history.json")
REQUIRED_FILES = FILES[:3]  # history.json is optional
MAX_CONFIG_BYTES = MB
MAX_HISTORY_BYTES = 16 * MB
MAX_TOKENIZER_BYTES = 64 * MB  # a 32k-token byte-level BPE takes about 2 MB


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or not trustworthy."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, fp32) and everything saved beside it."""

    path: Path
    model: RoutedTransformer
    tokenizer: object
    model_config: ModelConfig
    train_config: TrainConfig
    meta: dict
    history: list[dict] = field(default_factory=list)
    weights_sha256: str = ""  # of the model.safetensors bytes actually loaded

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def fingerprint(self) -> str:
        """The hash of the weights loaded (not the one config.json records): what caches are keyed by."""
        return self.weights_sha256[:16]

    @property
    def corpus(self) -> str:
        return self.meta["corpus"]["name"]


def save_checkpoint(
    path: Path | str,
    model: RoutedTransformer,
    tokenizer,
    train_config: TrainConfig,
    corpus_name: str,
    corpus_fingerprint: str,
    history: list[dict] | None = None,
    extra: dict | None = None,
    dtype: torch.dtype = torch.float16,
    replace: bool = True,
    hint: str = "add --force to replace it",
) -> Path:
    """Write a checkpoint folder atomically; an existing checkpoint at `path` is replaced whole when `replace`.

    Anything at `path` that is not a checkpoint of ours is never replaced (routed.folders.OutputError).
    """
    from safetensors.torch import save

    path = Path(path)
    # The head is tied to the embedding: store the shared tensor once.
    tensors = {
        k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"
    }
    weights = save(tensors, metadata={"format": "pt"})
    config = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model.config.to_dict(),
        "train": train_config.to_dict(),
        "corpus": {"name": corpus_name, "fingerprint": corpus_fingerprint},
        "tokenizer_vocab_size": tokenizer.get_vocab_size(),
        "dtype": str(dtype).removeprefix("torch."),
        "fingerprint": hashlib.sha256(weights).hexdigest()[:16],
        **(extra or {}),
    }
    return write_folder(path, {
        "model.safetensors": weights,
        "tokenizer.json": tokenizer.to_str().encode("utf-8"),
        "history.json": json.dumps(history or [], indent=1).encode("utf-8"),
        "config.json": json.dumps(config, indent=2).encode("utf-8"),  # last: a folder with a config is complete
    }, CHECKPOINT, replace, hint)


def save_trained(path: Path | str, result, extra: dict | None = None, replace: bool = True,
                 hint: str = "add --force to replace it") -> Path:
    """Save a routed.train.TrainResult (its best weights, tokenizer, configs and history).

    A diverged run says so in config.json ("diverged": why) beside the step its weights come from;
    weights that are not all finite are never saved (CheckpointError).
    """
    from routed.weights import non_finite

    bad = non_finite(result.model.state_dict())
    if bad:
        raise CheckpointError(f"checkpoint {Path(path).name!r}: not saved: the weights are not finite ({bad[0]}"
                              f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''})"
                              + (f"; training stopped: {result.diverged}" if result.diverged else ""))
    extra = {**(extra or {}), "best_step": result.best_step, "stopped_early": result.stopped_early}
    if result.diverged:
        extra["diverged"] = result.diverged
    return save_checkpoint(path, result.model, result.tokenizer, result.train_config, result.corpus_name,
                           result.corpus_fingerprint, result.history, extra=extra, replace=replace, hint=hint)


def holds_checkpoint(path: Path | str) -> bool:
    """Whether a folder has the files a checkpoint cannot load without (whether they load is read_config's say)."""
    return all(os.path.lexists(Path(path) / f) for f in REQUIRED_FILES)


def read_config(path: Path | str) -> dict:
    """The config.json of a checkpoint folder, every field this version uses checked (types, bounds).

    The model and train sections are returned as their configs write them (ModelConfig/TrainConfig.to_dict).
    """
    path = Path(path)
    recover(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint: {str(path)!r} is not a folder")
    missing = [f for f in REQUIRED_FILES if not os.path.lexists(path / f)]  # odd files are refused when read
    if missing:
        raise CheckpointError(f"checkpoint {path.name!r}: missing {', '.join(missing)}")
    where = f"checkpoint {path.name!r}: config.json"
    config = read_json(path / "config.json", MAX_CONFIG_BYTES, where, CheckpointError)
    if not isinstance(config, dict) or not {"model", "train", "corpus"} <= set(config):
        raise CheckpointError(f"{where} lacks model/train/corpus sections")
    version = config.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, (int, float)) or not math.isfinite(version):
        raise CheckpointError(f"{where} has an invalid format_version {str(version)[:40]!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path.name!r}: written by routed {str(config.get('package_version'))[:20]} in format "
            f"{version}; this version ({__version__}) reads format {FORMAT_VERSION}: upgrade routed"
        )
    try:
        model_config = ModelConfig.from_dict(config["model"])
        train_config = TrainConfig.from_dict(config["train"])
        train_config.check_model(model_config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path.name!r}: invalid config.json: {exc}") from None
    corpus = config["corpus"]
    if not (isinstance(corpus, dict) and isinstance(corpus.get("name"), str) and 0 < len(corpus["name"]) <= 4096
            and isinstance(corpus.get("fingerprint", ""), str)):
        raise CheckpointError(f"{where}: corpus must be {{name: text, fingerprint: text}}")
    for key, types in (("fingerprint", str), ("package_version", str), ("preset", (str, type(None))),
                       ("diverged", (str, type(None))), ("best_step", (int, type(None))), ("dtype", str)):
        if key in config and (not isinstance(config[key], types) or isinstance(config[key], bool)):
            raise CheckpointError(f"{where}: {key} has the wrong type ({type(config[key]).__name__})")
    return {**config, "model": model_config.to_dict(), "train": train_config.to_dict()}


def inspect_checkpoint(path: Path | str):
    """(config, weights header) of a checkpoint folder, the header checked against the config; no tensor is read.

    What listing a folder of checkpoints needs to tell a usable one from a damaged one, cheaply.
    """
    from routed.weights import ITEM_BYTES, expected_shapes, mismatches, read_header

    path = Path(path)
    config = read_config(path)
    model_config = ModelConfig.from_dict(config["model"])
    # The file can hold at most every parameter in float64 beside its header: the bound for reading it.
    most = parameter_count(model_config) * max(ITEM_BYTES.values()) + 16 * MB
    header = read_header(path / "model.safetensors", most, CheckpointError, f"checkpoint {path.name!r}: model.safetensors")
    problems = mismatches(header, expected_shapes(model_config))
    if problems:
        raise CheckpointError(f"checkpoint {path.name!r}: weights do not match config.json: {'; '.join(problems[:5])}")
    return config, header


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Load a checkpoint folder; any problem raises CheckpointError saying what is wrong, before allocating."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from routed.weights import non_finite

    path = Path(path)
    config, header = inspect_checkpoint(path)
    model_config = ModelConfig.from_dict(config["model"])
    train_config = TrainConfig.from_dict(config["train"])
    try:
        check_memory(model_config, training=False)
    except MemoryLimitError as exc:
        raise CheckpointError(f"checkpoint {path.name!r}: {exc}") from None
    tokenizer = _read_tokenizer(path, model_config)
    raw = read_regular(path / "model.safetensors", header.raw_size, f"checkpoint {path.name!r}: model.safetensors",
                       CheckpointError)
    if len(raw) != header.raw_size:
        raise CheckpointError(f"checkpoint {path.name!r}: model.safetensors changed while it was read")
    try:
        tensors = load(raw)  # parses a JSON header and raw arrays: never unpickles
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path.name!r}: model.safetensors is not a valid safetensors file "
            f"(truncated, corrupted or another format): {exc}"
        ) from None
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(f"checkpoint {path.name!r}: model.safetensors holds NaN or infinite values "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    model = RoutedTransformer(model_config)
    tensors["lm_head.weight"] = tensors["tok_emb.weight"]
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    model.eval()
    return Checkpoint(path, model, tokenizer, model_config, train_config, config, read_history(path),
                      hashlib.sha256(raw).hexdigest())


def _read_tokenizer(path: Path, model_config: ModelConfig):
    from tokenizers import Tokenizer

    data = read_regular(path / "tokenizer.json", MAX_TOKENIZER_BYTES, f"checkpoint {path.name!r}: tokenizer.json",
                        CheckpointError)
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise CheckpointError(f"checkpoint {path.name!r}: tokenizer.json cannot be read: {str(exc)[:200]}") from None
    if tokenizer.get_vocab_size() != model_config.vocab_size:
        raise CheckpointError(
            f"checkpoint {path.name!r}: tokenizer has {tokenizer.get_vocab_size()} tokens, "
            f"the model expects {model_config.vocab_size}"
        )
    return tokenizer


def read_history(path: Path | str) -> list[dict]:
    """The validation records in a checkpoint's history.json ([] when there is none), checked for their types."""
    path = Path(path)
    where = f"checkpoint {path.name!r}: history.json"
    if not (path / "history.json").exists():
        return []
    history = read_json(path / "history.json", MAX_HISTORY_BYTES, where, CheckpointError)
    ok = isinstance(history, list) and all(
        isinstance(h, dict)
        and (not isinstance(h.get("step"), bool) and isinstance(h.get("step", 0), int))
        and isinstance(h.get("val_ppl", {}), dict)
        and all(_is_layer(k) and _is_number(v) for k, v in h.get("val_ppl", {}).items())
        for h in history
    )
    if not ok:
        raise CheckpointError(f"{where} is not a list of validation records ({{step, val_ppl: {{layer: PPL}}, ...}})")
    return history


def _is_layer(key) -> bool:
    return isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 4


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Checkpoint folders by name, and the threshold sweep shipped beside a checkpoint (routed.sweepfile)

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"  # default; ROUTED_CHECKPOINTS_DIR overrides


def checkpoints_dir(root: Path | str | None = None) -> Path:
    """The folder of named checkpoints: `root`, else ROUTED_CHECKPOINTS_DIR, else CHECKPOINTS_DIR."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("ROUTED_CHECKPOINTS_DIR") or CHECKPOINTS_DIR)


def list_checkpoints(root: Path | str | None = None) -> list[str]:
    """Names of the complete checkpoint folders (those with a config.json) under root, sorted."""
    folder = checkpoints_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / "config.json").is_file())


def checkpoint_path(name: str, root: Path | str | None = None) -> Path:
    """The folder of checkpoint `name` under root; only a plain folder name is accepted."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise CheckpointError(f"checkpoint name: {name!r} is empty or has leading/trailing spaces")
    if name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or os.sep in name or "\0" in name:
        raise CheckpointError(
            f"checkpoint name: {name!r} must be a plain folder name (no path separators, no leading dot)"
        )
    if Path(name).is_absolute() or Path(name).name != name:
        raise CheckpointError(f"checkpoint name: {name!r} must be a plain folder name")
    return checkpoints_dir(root) / name


# Re-exported: the sweep CSV and the training state were part of this module.
from routed.sweepfile import SWEEP_BPB_COLUMNS, SWEEP_COLUMNS, SWEEP_FILE, read_sweep, write_sweep  # noqa: E402
from routed.train_state import load_train_state, save_train_state, train_state_path  # noqa: E402

__all__ = [
    "FILES", "FORMAT_VERSION", "SWEEP_BPB_COLUMNS", "SWEEP_COLUMNS", "SWEEP_FILE", "Checkpoint", "CheckpointError",
    "checkpoint_path", "checkpoints_dir", "inspect_checkpoint", "list_checkpoints", "load_checkpoint", "load_train_state", "read_config",
    "read_history", "read_sweep", "save_checkpoint", "save_train_state", "save_trained", "train_state_path",
    "write_folder", "write_sweep",
]
