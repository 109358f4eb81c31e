"""sha256 of files, streamed, with a cache by (path, size, mtime): a 9 GB run is hashed once, not on every
publish. Every hash hubkit writes or checks goes through here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hubkit.formats.atomic import write_bytes

CHUNK = 8 * 1024 * 1024



def _cache_path() -> Path:
    base = os.environ.get("HUBKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hubkit")
    return Path(base) / "sha256-cache.json"


class HashCache:
    """sha256 by (absolute path, size, mtime_ns): a 9 GB run is hashed once, not on every publish."""

    def __init__(self, path: Path | None = None):
        self.path = path or _cache_path()
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def sha256(self, file: Path, progress: Any = None) -> str:
        st = file.stat()
        key = str(file.resolve())
        hit = self.entries.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            if progress is not None:
                progress.update(st.st_size)
            return hit[2]
        digest = sha256_file(file, progress)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    @contextlib.contextmanager
    def batch(self, total_bytes: int, progress: bool) -> Iterator[Any]:
        """A byte progress bar (or None) for a run of hashes; the cache is saved however the run ends."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="hashing", leave=False)
        try:
            yield bar
        finally:
            if bar is not None:
                bar.close()
            self.save()

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            write_bytes(self.path, json.dumps(self.entries).encode())
        except OSError:
            pass  # a cache that can't be written only costs time


def sha256_file(path: Path, progress: Any = None) -> str:
    """Streamed: never holds a large file in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


