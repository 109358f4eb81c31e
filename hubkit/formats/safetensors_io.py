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
    except (OSError, ValueError) as e:
        raise PlanError(f"{path}: unreadable safetensors header ({e})") from e
    return header, 8 + n


def shard_names(model_dir: Path) -> list[str]:
    """Shard file names, from ``model.safetensors.index.json`` when there is one, else ``model.safetensors``."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise PlanError(f"{index}: no readable weight_map ({e})") from e
        names = sorted(set(weight_map.values()))
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
            b, e = meta["data_offsets"]
            if name in tensors:
                raise PlanError(f"{path}: tensor {name} also in {tensors[name].shard}")
            if start + e > size:
                raise PlanError(f"{path}: tensor {name} runs past the end of the file (truncated download?)")
            tensors[name] = TensorInfo(name, sname, meta["dtype"], tuple(meta["shape"]), start + b, start + e)
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

