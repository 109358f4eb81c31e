"""Reading untrusted small files without surprises, and writing byte-deterministic ones.

* :func:`strict_json` - JSON with a size bound, no duplicate keys (``{"a": 1, "a": 2}`` would let a file
  show one value to one reader and another to the next) and no ``NaN``/``Infinity``.
* :func:`safetensors_header` / :func:`read_safetensors` - the safetensors layout parsed by hand: bounded
  header, every tensor's offsets inside the data region and matching its shape. No torch, no library.
* :func:`safetensors_bytes` - the writer: sorted JSON header padded to 8 bytes, data in sorted key order.
* :func:`file_hashes` - size, md5 and sha256 in one streamed pass.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubkit.errors import DirectionError, HubkitError, first_line
from hubkit.formats.hashing import sha256_file  # noqa: F401  (re-exported: the one streamed sha256)

MAX_HEADER_BYTES = 100 << 20
MAX_JSON_BYTES = 1 << 20
NUMPY_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "<u2"}  # BF16 read as its bits


def _fail(error: type[HubkitError], where: str, place: str | None, problem: str) -> HubkitError:
    return error(f"{where}: {place}: {problem}" if place else f"{where}: {problem}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key '{k}'")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: bytes | str) -> Any:
    """``json.loads`` refusing duplicate keys and NaN/Infinity (ValueError)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def read_json_file(path: Path, where: str, *, error: type[HubkitError],
                   max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A small untrusted JSON file: bounded size, UTF-8, strict parse; one-line errors naming ``where``."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise _fail(error, where, None, f"{size} bytes, more than the {max_bytes} a config may have")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        return strict_json(raw.decode("utf-8"))
    except OSError as e:
        raise _fail(error, where, None, f"unreadable ({first_line(e)})") from e
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _fail(error, where, None, f"not valid JSON ({first_line(e)})") from e


@dataclass(frozen=True)
class TensorEntry:
    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets inside the data region
    end: int


def safetensors_header(path: Path, where: str, *, error: type[HubkitError] = DirectionError,
                       dtypes: Mapping[str, int] | None = None
                       ) -> tuple[dict[str, str], dict[str, TensorEntry], int]:
    """Metadata, tensor entries and the data region's start, from the header alone (nothing else is read).

    ``dtypes`` maps the accepted dtype names to their item size (default: the float types).
    """
    sizes = dtypes or {k: np.dtype(v).itemsize for k, v in NUMPY_DTYPES.items()}
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise _fail(error, where, None, "not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _fail(error, where, None,
                            f"not a safetensors file (header length {n}, file size {size})")
            header = strict_json(f.read(n))
    except OSError as e:
        raise _fail(error, where, None, f"unreadable ({first_line(e)})") from e
    except ValueError as e:
        raise _fail(error, where, None, f"unreadable safetensors header ({first_line(e)})") from e
    if not isinstance(header, dict):
        raise _fail(error, where, None, "safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(error, where, "__metadata__", "must map strings to strings")
    data_len = size - 8 - n
    entries: dict[str, TensorEntry] = {}
    for key, info in header.items():
        place = f"tensor '{key}'"
        if not isinstance(info, dict):
            raise _fail(error, where, place, "header entry is not an object")
        dtype = info.get("dtype")
        if not isinstance(dtype, str) or dtype not in sizes:
            raise _fail(error, where, place, f"dtype {dtype!r}; accepted: {', '.join(sizes)}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if (not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets)):
            raise _fail(error, where, place, f"malformed shape {shape!r} or data_offsets {offsets!r}")
        begin, end = offsets
        want = int(np.prod(shape, dtype=np.int64)) * sizes[dtype]
        if not 0 <= begin <= end <= data_len or end - begin != want:
            raise _fail(error, where, place, f"data_offsets {offsets} do not hold the {want} bytes of shape "
                        f"{shape} inside the {data_len}-byte data region")
        entries[key] = TensorEntry(key, dtype, tuple(shape), begin, end)
    return {str(k): v for k, v in meta.items()}, entries, 8 + n


def read_safetensors(path: Path, where: str, *, error: type[HubkitError] = DirectionError
                     ) -> tuple[dict[str, str], dict[str, np.ndarray], dict[str, str]]:
    """Metadata, tensors (float32 numpy) and their stored dtype names; float dtypes only."""
    meta, entries, start = safetensors_header(path, where, error=error)
    tensors: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for key, t in entries.items():
            f.seek(start + t.begin)
            raw = f.read(t.end - t.begin)
            arr = np.frombuffer(raw, NUMPY_DTYPES[t.dtype]).reshape(t.shape)
            if t.dtype == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            tensors[key] = arr.astype(np.float32)
    return meta, tensors, {k: t.dtype for k, t in entries.items()}


def safetensors_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file's bytes (float arrays written as little-endian F32), identical run to run.

    The safetensors library serialises its header from a hash map, so key order can vary; here the header is
    JSON with sorted keys, padded with spaces to a multiple of 8, and the data follow in sorted key order.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for key in sorted(tensors):
        a = np.ascontiguousarray(tensors[key], dtype="<f4")
        data = a.tobytes()
        header[key] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


@dataclass(frozen=True)
class FileHashes:
    """What a reproducibility card quotes for a file (the seeds cite data by MD5; Hub LFS uses sha256)."""

    path: str
    size: int
    md5: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "md5": self.md5, "sha256": self.sha256}


def file_hashes(path: str | Path, display: str | None = None, *, chunk: int = 1 << 20) -> FileHashes:
    """Size, md5 and sha256 of a file, streamed in one pass (a multi-GB JSONL never sits in memory)."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            md5.update(block)
            sha.update(block)
            size += len(block)
    return FileHashes(display or str(path), size, md5.hexdigest(), sha.hexdigest())
