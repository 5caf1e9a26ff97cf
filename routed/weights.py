"""A weights file checked before it is read whole: the safetensors header against the model's config.

A safetensors file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} and the raw tensor bytes. Reading the header alone (bounded) tells every name, shape,
type and byte range, so a file that disagrees with config.json, or claims more bytes than it holds, is
refused before any tensor or model is allocated.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from routed.files import MB, parse_json, regular_size

# Floating-point weights only: integer or boolean tensors of the right shape are no trained model.
ITEM_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
MAX_HEADER = 16 * MB


@dataclass(frozen=True)
class Header:
    """The parsed header of a safetensors file and where its data starts."""

    tensors: dict[str, tuple[str, tuple[int, ...], int, int]]  # name -> (dtype, shape, begin, end) in the data
    data_start: int  # 8 + header length
    file_size: int

    @property
    def raw_size(self) -> int:
        """The bytes the whole file must have: header and every tensor, nothing more."""
        return self.data_start + max((end for *_, end in self.tensors.values()), default=0)


def read_header(path: Path, max_file_bytes: int, error: type[Exception], what: str = "model.safetensors") -> Header:
    """The header of the safetensors file at `path`, checked for consistency; `error` saying what is wrong."""
    invalid = f"{what} is not a valid safetensors file (truncated, corrupted or another format)"
    size = regular_size(path, max_file_bytes, what, error)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise error(f"{invalid}: it has {size} bytes")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER or 8 + length > size:
            raise error(f"{invalid}: its header claims {length:,} bytes, the file has {size:,}")
        raw = f.read(length)
    if len(raw) != length:
        raise error(f"{invalid}: the file changed while it was read")
    header = parse_json(raw, f"{what} header", error)
    if not isinstance(header, dict):
        raise error(f"{invalid}: its header is not a JSON object")
    header.pop("__metadata__", None)
    tensors = {}
    for name, entry in header.items():
        tensors[name] = _entry(name, entry, what, invalid, error)
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in tensors.items())
    position = 0
    for begin, end, name in spans:  # the data is the tensors back to back, each once
        if begin != position:
            raise error(f"{invalid}: tensor {name!r} starts at byte {begin:,} of the data, expected {position:,}")
        position = end
    result = Header(tensors, 8 + length, size)
    if result.raw_size != size:
        raise error(f"{invalid}: its header describes {result.raw_size:,} bytes, the file has {size:,}")
    return result


def _entry(name: str, entry, what: str, invalid: str, error) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise error(f"{invalid}: header entry {name[:80]!r} lacks dtype/shape/data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ITEM_BYTES:
        raise error(f"{what}: tensor {name[:80]!r} has dtype {str(dtype)[:20]!r}: a checkpoint holds floating-point weights only "
                    f"({', '.join(ITEM_BYTES)})")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(_count(n) for n in shape)):
        raise error(f"{invalid}: tensor {name[:80]!r} has the shape {str(shape)[:80]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(n) for n in offsets)):
        raise error(f"{invalid}: tensor {name[:80]!r} has the byte range {str(offsets)[:80]}")
    begin, end = offsets
    if end - begin != math.prod(shape) * ITEM_BYTES[dtype]:
        raise error(f"{invalid}: tensor {name[:80]!r} of shape {tuple(shape)} ({dtype}) spans {end - begin:,} bytes")
    return dtype, tuple(shape), begin, end


def _count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**53


def mismatches(header: Header, expected: dict[str, tuple[int, ...]]) -> list[str]:
    """How the header's tensors differ from the `expected` {name: shape}: missing, unexpected, wrong shape."""
    problems = [f"missing {k}" for k in expected if k not in header.tensors]
    problems += [f"unexpected {k[:80]}" for k in header.tensors if k not in expected]
    problems += [
        f"{k} has shape {header.tensors[k][1]}, the config needs {shape}"
        for k, shape in expected.items()
        if k in header.tensors and header.tensors[k][1] != shape
    ]
    return problems


def expected_shapes(model_config) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the tensors a checkpoint of `model_config` stores (the tied head once), from arithmetic.

    The layout of routed.model.RoutedTransformer's state_dict (a test holds the two equal); building even
    a meta-device model would import much of torch's machinery for each listing.
    """
    V, T, d = model_config.vocab_size, model_config.context_length, model_config.d_model
    shapes = {"tok_emb.weight": (V, d), "pos_emb.weight": (T, d)}
    for i in range(model_config.n_layers):
        block = {"ln1.weight": (d,), "ln1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
                 "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "ln2.weight": (d,), "ln2.bias": (d,),
                 "mlp.0.weight": (4 * d, d), "mlp.0.bias": (4 * d,), "mlp.2.weight": (d, 4 * d), "mlp.2.bias": (d,)}
        shapes |= {f"blocks.{i}.{name}": shape for name, shape in block.items()}
    return shapes | {"ln_f.weight": (d,), "ln_f.bias": (d,)}


def non_finite(tensors: dict) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    import torch

    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
