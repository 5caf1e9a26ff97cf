"""Checkpoints: one folder per model — config.json, model.safetensors, tokenizer.json, history.json.

Written atomically (a temporary folder, then renamed into place); read without unpickling anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from routed import __version__
from routed.config import ModelConfig, TrainConfig
from routed.model import RoutedTransformer

FORMAT_VERSION = 1
FILES = ("config.json", "model.safetensors", "tokenizer.json", "history.json")


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

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def corpus(self) -> str:
        return self.meta["corpus"]["name"]


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
) -> Path:
    """Write a checkpoint folder atomically; an existing folder at `path` is replaced whole."""
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
    })


def write_folder(path: Path, files: dict[str, bytes]) -> Path:
    """Replace folder `path` whole by one holding `files`, so that a crash at any moment (even SIGKILL)
    leaves either the old folder or the new one, and two writers of the same name never mix their files.

    Files are written and fsynced in a private temporary folder beside `path`, then swapped in under an
    exclusive lock on the parent folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is readable like any saved file
    try:
        for name, data in files.items():
            _fsync_write(tmp / name, data)
        with _folder_lock(path.parent):
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old / "previous")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive flock on a folder; the kernel releases it when the holder exits, even by SIGKILL."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _recover(path: Path) -> None:
    """After a crash between the two renames of `write_folder`, put the previous folder back."""
    if path.exists() or not any(path.parent.glob(f".{path.name}.old-*/previous")):
        return
    with _folder_lock(path.parent):  # no writer is between its renames while we hold it
        for old in path.parent.glob(f".{path.name}.old-*/previous"):
            if not path.exists():
                os.replace(old, path)


def save_trained(path: Path | str, result, extra: dict | None = None) -> Path:
    """Save a routed.train.TrainResult (its best weights, tokenizer, configs and history)."""
    extra = {**(extra or {}), "best_step": result.best_step, "stopped_early": result.stopped_early}
    return save_checkpoint(path, result.model, result.tokenizer, result.train_config, result.corpus_name,
                           result.corpus_fingerprint, result.history, extra=extra)


def read_config(path: Path | str) -> dict:
    """The parsed config.json of a checkpoint folder, checked for the fields this version needs."""
    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint: {str(path)!r} is not a folder")
    missing = [f for f in FILES[:3] if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path.name!r}: missing {', '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path.name!r}: config.json is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or not {"model", "train", "corpus"} <= set(config):
        raise CheckpointError(f"checkpoint {path.name!r}: config.json lacks model/train/corpus sections")
    try:
        format_version = int(config.get("format_version", 0))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path.name!r}: invalid format_version {config.get('format_version')!r} in config.json"
        ) from exc
    if format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path.name!r}: written by routed {config.get('package_version')} in format "
            f"{config['format_version']}; this version ({__version__}) reads format {FORMAT_VERSION}: upgrade routed"
        )
    return config


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Load a checkpoint folder; any problem raises CheckpointError saying what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from routed.tokenizer import load_tokenizer

    path = Path(path)
    config = read_config(path)
    try:
        model_config = ModelConfig.from_dict(config["model"])
        train_config = TrainConfig.from_dict(config["train"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path.name!r}: invalid config.json: {exc}") from exc
    raw = (path / "model.safetensors").read_bytes()
    try:
        tensors = load(raw)  # parses a JSON header and raw arrays: never unpickles
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path.name!r}: model.safetensors is not a valid safetensors file "
            f"(truncated, corrupted or another format): {exc}"
        ) from exc
    try:
        tokenizer = load_tokenizer(path / "tokenizer.json")
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise CheckpointError(f"checkpoint {path.name!r}: tokenizer.json cannot be read: {exc}") from exc
    if tokenizer.get_vocab_size() != model_config.vocab_size:
        raise CheckpointError(
            f"checkpoint {path.name!r}: tokenizer has {tokenizer.get_vocab_size()} tokens, "
            f"the model expects {model_config.vocab_size}"
        )
    model = RoutedTransformer(model_config)
    tensors["lm_head.weight"] = tensors.get("tok_emb.weight", torch.empty(0))
    expected = model.state_dict()
    problems = [k for k in expected if k not in tensors] + [k for k in tensors if k not in expected]
    problems += [
        f"{k} has shape {tuple(tensors[k].shape)}, the config needs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if problems:
        raise CheckpointError(f"checkpoint {path.name!r}: weights do not match config.json: {'; '.join(problems[:5])}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    model.eval()
    history = []
    if (path / "history.json").is_file():
        try:
            history = json.loads((path / "history.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            history = []  # the history is informative only; the model is intact
    config.setdefault("fingerprint", hashlib.sha256(raw).hexdigest()[:16])
    return Checkpoint(path, model, tokenizer, model_config, train_config, config, history)


# --------------------------------------------------------------------------------------------
# Checkpoint folders by name, and the threshold sweep shipped beside a checkpoint

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"  # default; ROUTED_CHECKPOINTS_DIR overrides
SWEEP_FILE = "sweep.csv"
SWEEP_COLUMNS = tuple("threshold routed_ppl shallow_pct compute_pct flops_pct shallow_ppl deep_ppl oracle_ppl".split())
# Bits per byte, written by this version; a sweep from before has none (read as NaN).
SWEEP_BPB_COLUMNS = ("routed_bpb", "shallow_bpb", "deep_bpb", "oracle_bpb")


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


def _sweep_file(path: Path | str) -> Path:
    path = Path(path)
    return path / SWEEP_FILE if path.is_dir() else path


def write_sweep(path: Path | str, rows: dict) -> Path:
    """Write a threshold sweep (the dict of arrays from routed.sweep.sweep) as CSV, atomically.

    `path` is a checkpoint folder (the file is its sweep.csv) or a file path.
    """
    import csv

    path = _sweep_file(path)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        columns = SWEEP_COLUMNS + tuple(c for c in SWEEP_BPB_COLUMNS if c in rows)
        writer.writerow(columns)
        for i in range(len(rows["threshold"])):
            writer.writerow([f"{float(rows[c][i]):.6g}" for c in columns])
    tmp.replace(path)
    return path


def read_sweep(path: Path | str) -> dict | None:
    """A sweep CSV (a checkpoint folder's sweep.csv, or a file) as {column: array}, or None when there is none."""
    import csv

    import numpy as np

    path = _sweep_file(path)
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in SWEEP_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CheckpointError(f"checkpoint {path.parent.name!r}: {SWEEP_FILE} lacks column(s) {missing}")
        columns = SWEEP_COLUMNS + tuple(c for c in SWEEP_BPB_COLUMNS if c in (reader.fieldnames or []))
        try:
            rows = [{c: float(row[c]) for c in columns} for row in reader]
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {path.parent.name!r}: {SWEEP_FILE} has a non-numeric value ({exc})"
            ) from exc
    if not rows:
        raise CheckpointError(f"checkpoint {path.parent.name!r}: {SWEEP_FILE} has no rows")
    result = {c: np.array([r[c] for r in rows]) for c in columns}
    return result | {c: np.full(len(rows), np.nan) for c in SWEEP_BPB_COLUMNS if c not in result}


# --------------------------------------------------------------------------------------------
# Training state, for resuming an interrupted run: tensors in safetensors, the rest in JSON


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
        "state.json": json.dumps({"format_version": FORMAT_VERSION, **meta}).encode("utf-8"),
    })


def load_train_state(path: Path | str):
    """(tensors, meta, tokenizer) of a saved training state, or None when there is none."""
    from safetensors.torch import load

    from routed.tokenizer import load_tokenizer

    path = Path(path)
    _recover(path)
    if not (path / "state.json").is_file():
        return None
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        tensors = load((path / "state.safetensors").read_bytes())
        tokenizer = load_tokenizer(path / "tokenizer.json")
    except Exception as exc:  # OSError, JSON and safetensors errors; tokenizers raises a bare Exception
        raise CheckpointError(f"training state {str(path)!r} cannot be read ({exc}); delete it to start afresh") from exc
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"training state {str(path)!r} was written by a newer routed; delete it to start afresh")
    return tensors, meta, tokenizer
