"""safetensors checkpoints read from their headers alone: shards, tensors and byte ranges, config facts,
and the bfloat16 bits numpy lacks. Everything here is untrusted input (a downloaded base model)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubkit.errors import PlanError

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")
NP_DTYPES = {"BF16": "<u2", "F16": "<f2", "F32": "<f4", "F64": "<f8"}  # bfloat16 as its bits
DTYPE_EPS = {"BF16": 2.0**-8, "F16": 2.0**-10, "F32": 2.0**-23, "F64": 2.0**-52}


# ====================================================================== checkpoint index


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint: where its bytes are (absolute offsets in its shard file)."""

    name: str
    shard: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class ShardInfo:
    name: str
    size: int
    header_len: int  # 8 + JSON header length: where the data region starts


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the offset where its data region starts."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise PlanError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 << 20:
                raise PlanError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except (OSError, ValueError, RecursionError) as e:
        raise PlanError(f"{path}: unreadable safetensors header ({str(e).splitlines()[0][:200]})") from e
    if not isinstance(header, dict):
        raise PlanError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + n


_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4,
             "I64": 8, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1,
             "F6_E3M2": 1, "C64": 8}


def tensor_entry(path: Path, name: Any, meta: Any, start: int, size: int) -> TensorInfo:
    """One header entry, checked before anything is allocated or read: a dtype, a shape of non-negative ints,
    offsets inside the file that match the shape's byte size (a crafted header must not send a reader off)."""
    where = f"{path}: tensor {str(name)[:200]!r}"
    if not isinstance(meta, dict):
        raise PlanError(f"{where}: header entry is not an object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 48 for s in shape) or len(shape) > 8:
        raise PlanError(f"{where}: needs a dtype and a shape of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise PlanError(f"{where}: needs data_offsets [begin, end]")
    b, e = offsets
    if not 0 <= b <= e or start + e > size:
        raise PlanError(f"{where}: data_offsets [{b}, {e}] run past the end of the file (truncated download?)")
    count = 1
    for s in shape:
        count *= s
    if dtype in _ITEMSIZE and count * _ITEMSIZE[dtype] != e - b:
        raise PlanError(f"{where}: shape {shape} of {dtype} is {count * _ITEMSIZE[dtype]} bytes, its data_offsets "
                        f"span {e - b}")
    return TensorInfo(str(name), path.name, dtype, tuple(shape), start + b, start + e)


def shard_names(model_dir: Path) -> list[str]:
    """Shard file names, from ``model.safetensors.index.json`` when there is one, else ``model.safetensors``."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise PlanError(f"{index}: no readable weight_map ({str(e).splitlines()[0][:200]})") from e
        for n in names:  # a downloaded index names files: they must be plain shard names in this folder
            if (not isinstance(n, str) or "/" in n or "\\" in n or n in ("", ".", "..") or "\0" in n
                    or not n.endswith(".safetensors")):
                raise PlanError(f"{index}: shard name {str(n)[:100]!r} is not a .safetensors file of this folder")
        if any(len(n.encode()) > 255 for n in names):
            raise PlanError(f"{index}: shard name too long")
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise PlanError(f"{index}: names shard(s) not in the folder: {', '.join(missing[:3])}")
        return names
    if (model_dir / SINGLE_NAME).is_file():
        return [SINGLE_NAME]
    raise PlanError(
        f"{model_dir}: no {SINGLE_NAME} and no {INDEX_NAME} (only safetensors checkpoints are read)"
    )


def read_index(model_dir: str | Path) -> tuple[list[ShardInfo], dict[str, TensorInfo]]:
    """Shards and tensors of a checkpoint folder, from the safetensors headers alone (no tensor data read)."""
    model_dir = Path(model_dir)
    shards: list[ShardInfo] = []
    tensors: dict[str, TensorInfo] = {}
    for sname in shard_names(model_dir):
        path = model_dir / sname
        header, start = read_header(path)
        size = path.stat().st_size
        shards.append(ShardInfo(sname, size, start))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if name in tensors:
                raise PlanError(f"{path}: tensor {name} also in {tensors[name].shard}")
            tensors[name] = tensor_entry(path, name, meta, start, size)
    return shards, tensors


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise PlanError(f"{path}: not found (the base checkpoint needs its config.json)") from e
    except ValueError as e:
        raise PlanError(f"{path}: not valid JSON ({e})") from e


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's config: ``text_config`` of a VLM wrapper, else the config itself."""
    tc = config.get("text_config")
    return tc if isinstance(tc, dict) else config


def config_facts(config: dict[str, Any], where: str = "config.json") -> tuple[str, int, int]:
    """``(model_type, hidden_size, num_hidden_layers)`` of the language model."""
    tc = text_config(config)
    model_type = config.get("model_type") or tc.get("model_type")
    d = tc.get("hidden_size", config.get("hidden_size"))
    n = tc.get("num_hidden_layers", config.get("num_hidden_layers"))
    if not model_type or not isinstance(d, int) or not isinstance(n, int):
        raise PlanError(
            f"{where}: needs model_type, hidden_size and num_hidden_layers (text_config for VLMs)"
        )
    return str(model_type), d, n


def torch_dtype(code: str) -> torch.dtype:
    import torch

    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}[code]


def bf16_to_float32(bits: Any) -> Any:
    """bfloat16 values held as their uint16 bits (numpy has no bfloat16) → float32, exactly."""
    import numpy as np

    wide = bits.astype(np.uint32)
    wide <<= 16  # in place: every pass over a block counts, numpy fuses nothing
    return wide.view(np.float32)

