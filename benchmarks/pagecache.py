"""The page-cache states the benchmarks measure from: everything dropped, one checkpoint's pages dropped, or the
checkpoint read once (warm). One module, so every benchmark means the same thing by "cold"."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def drop_all() -> bool:
    """Write back dirty pages, then drop the whole page cache (root); False where that is refused."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def drop_checkpoint(ckpt: Path) -> bool:
    """Drop only the checkpoint's pages (``POSIX_FADV_DONTNEED`` on each shard: clean pages go, no root needed);
    the interpreter and its libraries stay cached, as on a machine in use."""
    os.sync()
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def warm(ckpt: Path) -> None:
    """Read the shards once, in a child (the caller stays small: a child's peak RSS starts from its parent's)."""
    subprocess.run(["cat", *map(str, sorted(Path(ckpt).glob("*.safetensors")))], stdout=subprocess.DEVNULL,
                   check=True)
