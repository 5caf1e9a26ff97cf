"""Loading a pretrained causal LM (`hf:NAME_OR_FOLDER`) as a checkpoint routed's commands and views can use.

`hf:` names a fetched model (routed.fetch: `hf:smollm2-135m`), a local folder saved by
transformers (config.json, weights, tokenizer), a local GGUF file (or a folder holding one), or a
Hugging Face hub id (downloaded by transformers when the hub is reachable).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from routed.config import TrainConfig
from routed.hf import PretrainedLM, check_family, weights_fingerprint

PREFIX = "hf:"


def offline_route() -> str:
    """How to get a pretrained model without the hub, in one line."""
    from routed.fetch import fetch_command

    return (f"offline, run `{fetch_command('smollm2-135m')}` and use hf:smollm2-135m, or give hf:PATH to a local "
            "folder saved by transformers or to a .gguf file")


@dataclass(frozen=True)
class Source:
    """Where a pretrained model is read from: a transformers location, and the GGUF file in it if any."""

    spec: str  # as given, with the hf: prefix
    location: str  # a folder or a hub id
    gguf_file: str | None = None
    hub: bool = False

    @property
    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve(spec: str) -> Source:
    """The Source named by `hf:NAME_OR_FOLDER`, or a ValueError saying what is missing."""
    from routed.fetch import KNOWN_MODELS, fetch_command, registered_path

    if not isinstance(spec, str) or not spec.startswith(PREFIX) or not spec[len(PREFIX):].strip():
        raise ValueError(f"checkpoint: a pretrained model is named hf:NAME_OR_FOLDER, got {spec!r}")
    name = spec[len(PREFIX):].strip()
    if name in KNOWN_MODELS:
        path = registered_path(name)
        if path is None:
            raise ValueError(f"{spec}: the base model is not fetched yet: run `{fetch_command(name)}`")
        return Source(spec, str(path.parent), path.name)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{spec}: a file must be a .gguf model; a transformers model is a folder")
        return Source(spec, str(path.parent), path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return Source(spec, str(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Source(spec, str(path), ggufs[0].name)
        raise ValueError(f"{spec}: the folder holds no config.json and {len(ggufs)} .gguf files: not a model folder")
    if name.startswith((".", "/", "~")) or name.lower().endswith(".gguf") or name.count("/") != 1:
        raise ValueError(f"{spec}: no such file or folder (a hub id is OWNER/NAME)")
    return Source(spec, name, hub=True)


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers on our command lines."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _read(source: Source, what: str, call):
    """Run a transformers loader, turning its errors into one clear line."""
    try:
        return call()
    except ImportError as exc:
        raise ValueError(f"{source.spec}: reading it needs a package that is missing ({exc}); "
                         "pip install -r requirements.txt") from exc
    except Exception as exc:  # transformers, hub and gguf raise many types for one cause
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if source.hub:
            raise ValueError(f"{source.spec}: cannot load {what} from the Hugging Face hub ({first}); "
                             f"{offline_route()}") from exc
        if source.gguf_file:
            raise ValueError(f"{source.spec}: cannot read {what} from {source.gguf_file}: the file is truncated, "
                             f"damaged or not a supported GGUF model ({first})") from exc
        raise ValueError(f"{source.spec}: cannot read {what} from {source.location} ({first})") from exc


def load_hf(source: Source):
    """(transformers causal LM in eval mode and fp32, its fast tokenizer's `tokenizers.Tokenizer`)."""
    import torch

    _quiet_transformers()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_config = _read(source, "the model config", lambda: AutoConfig.from_pretrained(source.location, **source.kwargs))
    check_family(hf_config)
    model, info = _read(source, "the weights", lambda: AutoModelForCausalLM.from_pretrained(
        source.location, dtype=torch.float32, output_loading_info=True, **source.kwargs))
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    if head is None or (not tied and any(k.endswith(("lm_head.weight", "output.weight")) for k in info["missing_keys"])):
        raise ValueError(f"{source.spec}: the output head is neither in the weights nor tied to the token embedding; "
                         "routed reads every exit through the model's own head")
    missing = [k for k in info["missing_keys"] if not k.endswith("lm_head.weight")]
    if missing:
        raise ValueError(f"{source.spec}: weights missing from the files: {', '.join(missing[:5])}")
    tokenizer = _read(source, "the tokenizer", lambda: AutoTokenizer.from_pretrained(source.location, **source.kwargs))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{source.spec}: routed needs a fast (tokenizers) tokenizer, got {type(tokenizer).__name__}")
    if backend.get_vocab_size() > model.config.vocab_size:
        raise ValueError(f"{source.spec}: the tokenizer has {backend.get_vocab_size()} tokens, the model's head "
                         f"only {model.config.vocab_size}")
    return model.eval(), backend


@dataclass
class PretrainedCheckpoint:
    """A pretrained model wrapped for routed: what routed.checkpoint.Checkpoint offers the commands and views."""

    path: str | Path  # the hf: spec, or the adapters folder
    model: PretrainedLM
    tokenizer: object  # a tokenizers.Tokenizer
    train_config: TrainConfig
    meta: dict  # fingerprint, base {spec, fingerprint}, corpus (adapters only)
    history: list[dict] = field(default_factory=list)

    @property
    def model_config(self):
        return self.model.config

    @property
    def name(self) -> str:
        return Path(self.path).name if isinstance(self.path, Path) else str(self.path)

    @property
    def fingerprint(self) -> str:
        """Identifies what records depend on: base weights, adapters and the evaluation window."""
        return self.meta["fingerprint"]

    @property
    def corpus(self) -> str:
        corpus = self.meta.get("corpus")
        if not corpus:
            raise ValueError(f"{self.name}: a pretrained model has no corpus of its own: give --corpus "
                             "(python-docs is built in; tinystories, wikitext-2 or a .txt path)")
        return corpus["name"]


def load_pretrained(spec: str, context_length: int | None = None) -> PretrainedCheckpoint:
    """Load `hf:NAME_OR_FOLDER` as a logit-lens checkpoint (no adapters)."""
    import hashlib

    source = resolve(spec)
    hf_model, tokenizer = load_hf(source)
    model = PretrainedLM(hf_model, context_length)
    base = {"spec": spec, "fingerprint": weights_fingerprint(hf_model)}
    key = f"{base['fingerprint']}-lens-{model.config.context_length}"
    meta = {"kind": "pretrained", "base": base, "fingerprint": hashlib.sha256(key.encode()).hexdigest()[:16],
            "model": model.config.to_dict(), "corpus": None}
    train = TrainConfig(layer_weights={model.config.n_layers: 1.0}, routing_threshold=None)
    return PretrainedCheckpoint(spec, model, tokenizer, train, meta)


def load_any(checkpoint: str | Path):
    """A routed checkpoint folder, an exit-adapters folder, or `hf:NAME_OR_FOLDER`, loaded."""
    from routed.adapters import is_adapter_folder, load_adapted
    from routed.checkpoint import load_checkpoint

    if isinstance(checkpoint, str) and checkpoint.startswith(PREFIX):
        return load_pretrained(checkpoint)
    if is_adapter_folder(checkpoint):
        return load_adapted(checkpoint)
    return load_checkpoint(checkpoint)


def read_any_config(path: str | Path) -> dict:
    """config.json of a routed checkpoint folder or of an exit-adapters folder (no weights read)."""
    from routed.adapters import is_adapter_folder, read_adapter_config
    from routed.checkpoint import read_config

    return read_adapter_config(path) if is_adapter_folder(path) else read_config(path)
