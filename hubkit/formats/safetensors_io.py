"""The safetensors format, read and written by hand in one place: every safetensors file hubkit touches (base
checkpoints' shards, canonical direction files, vector sets, PEFT adapter weights) is parsed and checked here,
and its callers keep only their own meaning (which keys a direction file has, what a vector set is).

Reading is for untrusted input (a downloaded base model, a repo's vectors): the header is bounded and strict
JSON (no duplicate keys, no NaN/Infinity), every entry's dtype, shape and ``data_offsets`` are checked, and the
tensors must lie back to back over the whole data region, before anything is allocated or read. Errors are one
line naming the file and the tensor, of the type the caller passes (``PlanError`` for a checkpoint,
``DirectionError`` for a direction file, ...). Writing is byte-deterministic. Also here: a checkpoint folder's
shards and tensors, its config facts, and the bfloat16 bits numpy lacks. No torch, no safetensors library.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubkit.errors import HubkitError, PlanError, first_line
from hubkit.formats.safefiles import strict_json

if TYPE_CHECKING:
    import numpy as np
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

MAX_HEADER_BYTES = 100 << 20
MAX_RANK = 8
MAX_DIM = 1 << 48
# every dtype the safetensors library knows, in bits per element (F4 and F6 pack below a byte)
DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
              "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
              "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")
READABLE_DTYPES = ("F32", "F64", "F16", "BF16")  # what read_tensors turns into float32 numbers
NP_DTYPES = {"BF16": "<u2", "F16": "<f2", "F32": "<f4", "F64": "<f8"}  # bfloat16 as its bits
DTYPE_EPS = {"BF16": 2.0**-8, "F16": 2.0**-10, "F32": 2.0**-23, "F64": 2.0**-52}


def _fail(error: type[HubkitError], where: str, place: str | None, problem: str) -> HubkitError:
    return error(f"{where}: {place}: {problem}" if place else f"{where}: {problem}")


def _quote(value: Any) -> str:
    text = first_line(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


# ====================================================================== reading


@dataclass(frozen=True)
class TensorEntry:
    """One checked header entry; ``begin``/``end`` are offsets inside the data region."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _read_header(path: Path, where: str, error: type[HubkitError]) -> tuple[dict[str, Any], int, int]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise _fail(error, where, None, "not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _fail(error, where, None, f"not a safetensors file (header length {n}, file size {size})")
            text = f.read(n)
    except OSError as e:
        raise _fail(error, where, None, f"unreadable ({_quote(e)})") from e
    try:
        header = strict_json(text)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; deep nesting recurses
        raise _fail(error, where, None, f"unreadable safetensors header ({_quote(e)})") from e
    if not isinstance(header, dict):
        raise _fail(error, where, None, "safetensors header is not a JSON object")
    return header, 8 + n, size


def read_header(path: str | Path, where: str | None = None, *,
                error: type[HubkitError] = PlanError) -> tuple[dict[str, Any], int]:
    """The raw JSON header (``__metadata__`` included, entries unchecked) and where the data region starts:
    at most :data:`MAX_HEADER_BYTES`, inside the file, strict JSON. ``where`` names the file in errors."""
    header, start, _ = _read_header(Path(path), str(path) if where is None else where, error)
    return header, start


def safetensors_header(path: str | Path, where: str, *, error: type[HubkitError],
                       dtypes: Iterable[str] | None = READABLE_DTYPES
                       ) -> tuple[dict[str, str], dict[str, TensorEntry], int]:
    """Metadata, checked tensor entries and the data region's start, from the header alone.

    Checks: ``__metadata__`` maps strings to strings; each entry is an object with a dtype among ``dtypes``
    (``None``: any dtype name, size-checked when :data:`DTYPE_BITS` knows it), a shape of at most 8
    non-negative integers, ``data_offsets [begin, end]`` inside the data region holding exactly the shape's
    bytes; and the tensors lie back to back from the region's first byte to its last (no gap, no overlap, no
    trailing bytes), as the safetensors library requires.
    """
    path = Path(path)
    header, start, size = _read_header(path, where, error)
    accepted = None if dtypes is None else tuple(dtypes)
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(error, where, "__metadata__", "must be an object mapping strings to strings")
    data_len = size - start
    entries: dict[str, TensorEntry] = {}
    for key, info in header.items():
        place = f"tensor {key[:200]!r}"
        if not isinstance(info, dict):
            raise _fail(error, where, place, "header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or (accepted is not None and dtype not in accepted):
            raise _fail(error, where, place, f"dtype {_quote(dtype)}; accepted: "
                        f"{', '.join(accepted) if accepted is not None else 'a dtype name'}")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(type(s) is int and 0 <= s < MAX_DIM for s in shape)):
            raise _fail(error, where, place,
                        f"malformed shape {_quote(shape)} (a list of at most {MAX_RANK} non-negative integers)")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise _fail(error, where, place, f"malformed data_offsets {_quote(offsets)} (needs [begin, end])")
        begin, end = offsets
        bits = DTYPE_BITS.get(dtype)
        want = None if bits is None else math.prod(shape) * bits
        if want is not None and want % 8:
            raise _fail(error, where, place, f"shape {shape} of {dtype} is not a whole number of bytes")
        want = None if want is None else want // 8
        if not 0 <= begin <= end <= data_len or (want is not None and end - begin != want):
            what = f"the {want} bytes of shape {shape} {dtype}" if want is not None else f"shape {shape} {dtype}"
            hint = " (truncated file?)" if end > data_len else ""
            raise _fail(error, where, place, f"data_offsets {offsets} do not hold {what} inside the "
                        f"{data_len}-byte data region{hint}")
        entries[key] = TensorEntry(key, dtype, tuple(shape), begin, end)
    pos = 0
    for t in sorted(entries.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != pos:
            how = "overlap the tensor before" if t.begin < pos else "leave a gap after the tensor before"
            raise _fail(error, where, f"tensor {t.key[:200]!r}",
                        f"data_offsets [{t.begin}, {t.end}] {how} (which ends at {pos}); tensors lie back to back")
        pos = t.end
    if pos != data_len:
        raise _fail(error, where, None, f"{data_len - pos} bytes after the last tensor's data "
                    f"(the data region has {data_len} bytes, the tensors {pos})")
    return {str(k): v for k, v in meta.items()}, entries, start


def read_tensors(path: str | Path, where: str, entries: Iterable[TensorEntry], start: int, *,
                 error: type[HubkitError]) -> dict[str, np.ndarray]:
    """The tensors of checked ``entries`` as float32 numpy arrays (their shapes), bfloat16 widened exactly."""
    import numpy as np

    out: dict[str, np.ndarray] = {}
    try:
        with open(path, "rb") as f:
            for t in entries:
                place = f"tensor {t.key[:200]!r}"
                code = NP_DTYPES.get(t.dtype)
                if code is None:
                    raise _fail(error, where, place, f"dtype {t.dtype}; read as numbers: {', '.join(READABLE_DTYPES)}")
                f.seek(start + t.begin)
                raw = f.read(t.end - t.begin)
                if len(raw) != t.end - t.begin:
                    raise _fail(error, where, place, f"{len(raw)} bytes of data, its header says {t.end - t.begin}")
                bits = np.frombuffer(raw, code).reshape(t.shape)
                out[t.key] = bf16_to_float32(bits) if t.dtype == "BF16" else bits.astype(np.float32)
    except OSError as e:
        raise _fail(error, where, None, f"unreadable ({_quote(e)})") from e
    return out


def read_safetensors(path: str | Path, where: str, *, error: type[HubkitError]
                     ) -> tuple[dict[str, str], dict[str, np.ndarray], dict[str, str]]:
    """Metadata, every tensor (float32 numpy) and their stored dtype names; float dtypes only."""
    meta, entries, start = safetensors_header(path, where, error=error)
    tensors = read_tensors(path, where, entries.values(), start, error=error)
    return meta, tensors, {k: t.dtype for k, t in entries.items()}


# ====================================================================== writing


def safetensors_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str], *, in_order: bool = False) -> bytes:
    """A safetensors file's bytes (float arrays written as little-endian F32), identical run to run.

    The safetensors library serialises its header from a hash map, so key order can vary; here the header is
    JSON with sorted keys, padded with spaces to a multiple of 8, and the data follow in sorted key order
    (``in_order``: in the mapping's order).
    """
    import numpy as np

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for key in (tensors if in_order else sorted(tensors)):
        a = np.ascontiguousarray(tensors[key], dtype="<f4")
        data = a.tobytes()
        header[key] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


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


def shard_names(model_dir: Path) -> list[str]:
    """Shard file names, from ``model.safetensors.index.json`` when there is one, else ``model.safetensors``."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = strict_json(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
            if not names:
                raise PlanError(f"{index}: weight_map is empty")
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
    """Shards and tensors of a checkpoint folder, from the safetensors headers alone (no tensor data read).

    Every dtype name passes (an unknown one is copied through byte for byte), size-checked where known."""
    model_dir = Path(model_dir)
    shards: list[ShardInfo] = []
    tensors: dict[str, TensorInfo] = {}
    for sname in shard_names(model_dir):
        path = model_dir / sname
        _, entries, start = safetensors_header(path, str(path), error=PlanError, dtypes=None)
        end = max((t.end for t in entries.values()), default=0)  # checked: the data region ends there
        shards.append(ShardInfo(sname, start + end, start))
        for name, t in entries.items():
            if name in tensors:
                raise PlanError(f"{path}: tensor {name} also in {tensors[name].shard}")
            tensors[name] = TensorInfo(name, sname, t.dtype, t.shape, start + t.begin, start + t.end)
    return shards, tensors


# ====================================================================== config and dtypes


#: a model's config.json is a few kB; anything this large is not one
MAX_CONFIG_BYTES = 4 << 20
#: bounds on the facts a plan loops over (the largest published models have ~100 blocks and d ~ 16k)
MAX_BLOCKS, MAX_HIDDEN = 10_000, 1 << 20


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise PlanError(f"{path}: {path.stat().st_size} bytes, not a model config (at most {MAX_CONFIG_BYTES})")
        config = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise PlanError(f"{path}: not found (the base checkpoint needs its config.json)") from e
    except (ValueError, RecursionError) as e:
        raise PlanError(f"{path}: not valid JSON ({str(e).splitlines()[0][:200]})") from e
    except OSError as e:
        raise PlanError(f"{path}: can't be read ({e.strerror})") from e
    if not isinstance(config, dict):
        raise PlanError(f"{path}: not a JSON object")
    return config


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
    if not isinstance(model_type, str) or not model_type or type(d) is not int or type(n) is not int:
        raise PlanError(
            f"{where}: needs model_type, hidden_size and num_hidden_layers (text_config for VLMs)"
        )
    if not (0 < d <= MAX_HIDDEN and 0 < n <= MAX_BLOCKS):
        raise PlanError(f"{where}: hidden_size {d}, num_hidden_layers {n}: out of range for a model "
                        f"(1–{MAX_HIDDEN}, 1–{MAX_BLOCKS})")
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
