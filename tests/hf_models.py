"""Tiny randomly initialised Llama and GPT-2 models built locally with transformers (no download), and GGUF files.

Test modules import the fixtures from here; each skips when transformers is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import repetitive_text

MARKER = "<|endoftext|>"
TINY_LLAMA = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                  initializer_range=0.3)  # large enough weights that an exit can be confident
TINY_GPT2 = dict(n_embd=32, n_layer=3, n_head=4, n_positions=64, activation_function="gelu", initializer_range=0.3)


def tiny_tokenizer():
    """A byte-level BPE of 300 tokens whose marker token ends each story (as TinyStories' files do)."""
    from routed.tokenizer import train_tokenizer

    return train_tokenizer(repetitive_text(400), 300, markers=(MARKER,))


def save_model(folder: Path, family: str, tokenizer, seed: int = 0, tie: bool = True, **overrides) -> Path:
    """Save a tiny random `family` ("llama" or "gpt2") causal LM and its tokenizer as a transformers folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    shape = {"vocab_size": tokenizer.get_vocab_size(), "tie_word_embeddings": tie}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**{**shape, **TINY_LLAMA, **overrides}))
    else:
        model = GPT2LMHeadModel(GPT2Config(**{**shape, "bos_token_id": None, "eos_token_id": None, **TINY_GPT2,
                                              **overrides}))
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(folder)
    return folder


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order of q/k projections (rotary halves interleaved), which transformers undoes."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_llama_gguf(path: Path, folder: Path, tokenizer) -> Path:
    """Write the tiny Llama of `folder` as a GGUF file (fp32 tensors, llama.cpp names, a gpt2 tokenizer)."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    sd = load_file(folder / "model.safetensors")
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_rope_dimension_count(cfg["hidden_size"] // heads)
    writer.add_rope_freq_base(float(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = tokenizer.get_added_tokens_decoder()
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if i in special else 1 for _, i in vocab])  # 3: control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.token_to_id(MARKER))
    writer.add_bos_token_id(tokenizer.token_to_id(MARKER))
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[prefix + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[prefix + "self_attn.k_proj.weight"], kv_heads))
        for theirs, ours in names.items():
            writer.add_tensor(f"blk.{i}.{ours}.weight", sd[prefix + theirs + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def hf_world(tmp_path_factory):
    """Tiny Llama and GPT-2 folders, the Llama as a GGUF file, their tokenizer and a corpus file."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("hf")
    tokenizer = tiny_tokenizer()
    llama = save_model(root / "llama", "llama", tokenizer)
    gpt2 = save_model(root / "gpt2", "gpt2", tokenizer)
    text = "\n".join(f"{line} {MARKER}" for line in repetitive_text(600, seed=1).splitlines()) + "\n"
    corpus = root / "stories.txt"
    corpus.write_text(text, encoding="utf-8")
    return SimpleNamespace(root=root, tokenizer=tokenizer, llama=llama, gpt2=gpt2,
                           gguf=write_llama_gguf(root / "tiny-llama.gguf", llama, tokenizer), corpus=corpus)
