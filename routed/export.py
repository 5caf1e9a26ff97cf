"""Export a routed checkpoint as a Hugging Face GPT-2 folder (`GPT2LMHeadModel.from_pretrained` loads it).

routed's block is GPT-2's: pre-LayerNorm (eps 1e-5), fused q/k/v with biases, exact GELU
(`activation_function="gelu"`, not GPT-2's tanh `gelu_new`), a 4x MLP, learned positions, and
the output head tied to the token embedding. GPT-2 keeps its projections as Conv1D, whose weight
is (in, out): the transpose of a Linear's. Early exits read `output_hidden_states[k]` through
`transformer.ln_f` and the tied head (the last hidden state already has ln_f applied).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from routed import __version__

EXPORT_KEY = "routed_export"  # in config.json: marks a folder this module wrote (and may replace)


def gpt2_config(cfg, extra: dict) -> dict:
    """The config.json of GPT2LMHeadModel for a routed ModelConfig (dropout off: exports are for inference)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": None,
        "activation_function": "gelu",  # exact (erf) GELU, as torch.nn.GELU()
        "layer_norm_epsilon": 1e-5,  # torch.nn.LayerNorm's default
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": None, "use_cache": True,
        "dtype": "float32", EXPORT_KEY: extra,
    }


def gpt2_state_dict(model) -> dict[str, torch.Tensor]:
    """routed's weights under GPT-2's names and layouts (Conv1D weights transposed; the tied head stored once)."""
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    names = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
             "mlp.0": "mlp.c_fc", "mlp.2": "mlp.c_proj"}
    for i in range(model.config.n_layers):
        for ours, theirs in names.items():
            weight, bias = sd[f"blocks.{i}.{ours}.weight"], sd[f"blocks.{i}.{ours}.bias"]
            is_conv = not ours.startswith("ln")
            out[f"transformer.h.{i}.{theirs}.weight"] = weight.T if is_conv else weight
            out[f"transformer.h.{i}.{theirs}.bias"] = bias
    return {k: v.contiguous() for k, v in out.items()}


def tokenizer_config(cfg) -> dict:
    """tokenizer_config.json: our tokenizers.Tokenizer read as a PreTrainedTokenizerFast."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.context_length,
            "clean_up_tokenization_spaces": False}


def check_target(out: Path) -> None:
    """Refuse an output path that exists and is not an export of ours (an empty folder is fine)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder; refusing to overwrite it")
    if not any(out.iterdir()):
        return
    try:
        ours = EXPORT_KEY in json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise ValueError(f"--out {out}: the folder exists and was not written by routed export; "
                         "refusing to overwrite it (choose another folder)")


def export_hf(checkpoint, out: Path | str) -> Path:
    """Write `checkpoint` (a routed Checkpoint) as a transformers GPT-2 folder at `out`, atomically."""
    from safetensors.torch import save

    from routed.folders import HF_EXPORT, write_folder
    from routed.model import RoutedTransformer

    out = Path(out)
    if not isinstance(checkpoint.model, RoutedTransformer):
        raise ValueError("export: only routed's own checkpoints export to GPT-2; a pretrained model already is one")
    check_target(out)
    cfg = checkpoint.model_config
    extra = {"package_version": __version__, "source": checkpoint.name, "fingerprint": checkpoint.fingerprint,
             "layer_weights": {str(k): v for k, v in checkpoint.train_config.layer_weights.items()},
             "routing_threshold": checkpoint.train_config.routing_threshold, "corpus": checkpoint.corpus,
             "exits": "hidden_states[k] -> transformer.ln_f -> lm_head, for k < n_layer; hidden_states[-1] is normed"}
    weights = save(gpt2_state_dict(checkpoint.model), metadata={"format": "pt"})
    return write_folder(out, {
        "model.safetensors": weights,
        "tokenizer.json": checkpoint.tokenizer.to_str().encode("utf-8"),
        "tokenizer_config.json": json.dumps(tokenizer_config(cfg), indent=2).encode("utf-8"),
        "config.json": json.dumps(gpt2_config(cfg, extra), indent=2).encode("utf-8"),
    }, kind=HF_EXPORT)
