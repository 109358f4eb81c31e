"""Reading small untrusted files without surprises, and hashing files for a card.

* :func:`strict_json` - no duplicate keys (``{"a": 1, "a": 2}`` would let a file show one value to one
  reader and another to the next) and no ``NaN``/``Infinity``; :func:`read_json_file` adds a size bound.
  (The safetensors format, whose header is strict JSON too, has its one owner: ``formats/safetensors_io``.)
* :func:`file_hashes` - size, md5 and sha256 in one streamed pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubkit.errors import HubkitError, first_line

MAX_JSON_BYTES = 1 << 20


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
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError; deep nesting recurses
        raise _fail(error, where, None, f"not valid JSON ({first_line(e)})") from e


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


def starts_like_pickle(head: bytes) -> bool:
    """A pickle stream (protocol 2-5 opens with PROTO), as ``torch.save`` wrote before torch 1.6."""
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")


def load_torch_tensors(path: Path, where: str, *, error: type[HubkitError], holds: str) -> Any:
    """``torch.load(weights_only=True)``: tensors and containers of them, never a full unpickle.

    Whatever torch's weights-only unpickler refuses (a class or function to import, an opcode it does not
    run: a legacy pickle of an object) is :class:`~hubkit.errors.PickleRefused`, the one refusal for "needs
    full unpickling"; an unreadable file is ``error``. ``holds`` says what hubkit reads, for the message.
    Torch's warnings about pickle protocols are not the user's concern: one line, the error, is."""
    import pickle
    import warnings

    import torch

    from hubkit.errors import PickleRefused

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        with open(path, "rb") as fh:
            head = fh.read(2)
        is_pickle = head == b"PK" or starts_like_pickle(head)  # a torch zip, or a legacy pickle
        if "weights only load failed" not in str(e).lower() or not is_pickle:
            raise error(f"{where}: not a readable torch file ({first_line(e)})") from e
        raise PickleRefused(
            f"{where}: needs full unpickling (weights_only=False), which can run arbitrary code; hubkit reads "
            f"only {holds}. Re-save it with torch.save of tensors, or as .safetensors") from e
    except Exception as e:
        raise error(f"{where}: not a readable torch file ({type(e).__name__}: {first_line(e)})") from e
