"""The disk's floor from a cold page cache: how fast this machine reads and writes a checkpoint's shards, one
stream against many reads in flight, so that ``regenerate``'s cold figures can be read against it.

    python benchmarks/probe_io.py CHECKPOINT_DIR [--threads 4,8,16] [--chunk-mb 8] [--json OUT]

Each probe runs after ``drop_caches`` (root; refused otherwise) and is timed alone:

* ``read-seq``: one thread, ``pread`` of every shard in turn (what ``cat`` does);
* ``read-files``: one thread per shard;
* ``read-ranges-N``: N threads taking 64 MB ranges of every shard from one queue (N reads in flight);
* ``fadvise``: ``POSIX_FADV_WILLNEED`` over every shard, then ``read-seq`` (the kernel's own read-ahead);
* ``mmap-hash``: sha256 of each shard through a read-only map with ``MADV_WILLNEED`` ahead, a thread per
  shard (what regenerate's hasher does);
* ``copy``: ``shutil.copyfile`` of every shard in turn + fsync (the benchmark's copy);
* ``copy-ranges-N``: N threads, ``pread`` + ``pwrite`` of 64 MB ranges + fsync (a parallel copy);
* ``write-only``: the same bytes written from memory by a thread per shard + fsync (the write floor).

Prints one line per probe (seconds, GB/s) and writes JSON; also records the kernel and the file system.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import platform
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

from pagecache import drop_all

RANGE = 64 << 20


def _shards(ckpt: Path) -> list[Path]:
    return sorted(ckpt.glob("*.safetensors"))


def _pread_range(fd: int, a: int, b: int, buf: bytearray) -> None:
    view = memoryview(buf)
    while a < b:
        n = os.preadv(fd, [view[: min(len(buf), b - a)]], a)
        if n <= 0:
            raise OSError(f"short read at {a}")
        a += n


def _threads(fn, items: list, n: int) -> None:
    q: queue.Queue = queue.Queue()
    for it in items:
        q.put(it)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while True:
                try:
                    it = q.get_nowait()
                except queue.Empty:
                    return
                fn(it)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def _ranges(files: list[Path]) -> list[tuple[Path, int, int]]:
    out = []
    for f in files:
        size = f.stat().st_size
        out += [(f, a, min(size, a + RANGE)) for a in range(0, size, RANGE)]
    return out


def read_seq(files: list[Path], chunk: int) -> None:
    buf = bytearray(chunk)
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            _pread_range(fd, 0, os.fstat(fd).st_size, buf)
        finally:
            os.close(fd)


def read_files(files: list[Path], chunk: int) -> None:
    _threads(lambda f: read_seq([f], chunk), files, len(files))


def read_ranges(files: list[Path], chunk: int, n: int) -> None:
    local = threading.local()
    fds = {f: os.open(f, os.O_RDONLY) for f in files}

    def one(item: tuple[Path, int, int]) -> None:
        if not hasattr(local, "buf"):
            local.buf = bytearray(chunk)
        f, a, b = item
        _pread_range(fds[f], a, b, local.buf)

    try:
        _threads(one, _ranges(files), n)
    finally:
        for fd in fds.values():
            os.close(fd)


def fadvise(files: list[Path], chunk: int) -> float:
    t = time.perf_counter()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        os.close(fd)
    issued = time.perf_counter() - t
    read_seq(files, chunk)
    return issued


def mmap_hash(files: list[Path], chunk: int) -> None:
    def one(f: Path) -> None:
        with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            size, sha = len(mm), hashlib.sha256()
            for a in range(0, size, RANGE):
                b = min(size, a + RANGE)
                try:
                    mm.madvise(mmap.MADV_WILLNEED, b - b % mmap.PAGESIZE, min(size, b + RANGE) - b + b % mmap.PAGESIZE)
                except (OSError, ValueError):
                    pass
                with memoryview(mm) as v:
                    sha.update(v[a:b])

    _threads(one, files, len(files))


def _fsync_all(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def copy(files: list[Path], out: Path) -> None:
    out.mkdir()
    for f in files:
        shutil.copyfile(f, out / f.name)
    _fsync_all([out / f.name for f in files])


def copy_ranges(files: list[Path], out: Path, chunk: int, n: int) -> None:
    out.mkdir()
    src = {f: os.open(f, os.O_RDONLY) for f in files}
    dst = {f: os.open(out / f.name, os.O_WRONLY | os.O_CREAT, 0o644) for f in files}
    local = threading.local()

    def one(item: tuple[Path, int, int]) -> None:
        if not hasattr(local, "buf"):
            local.buf = bytearray(chunk)
        f, a, b = item
        view = memoryview(local.buf)
        while a < b:
            k = os.preadv(src[f], [view[: min(chunk, b - a)]], a)
            w = 0
            while w < k:
                w += os.pwrite(dst[f], view[w:k], a + w)
            a += k

    try:
        _threads(one, _ranges(files), n)
        for fd in dst.values():
            os.fsync(fd)
    finally:
        for fd in [*src.values(), *dst.values()]:
            os.close(fd)


def write_only(files: list[Path], out: Path, chunk: int) -> None:
    out.mkdir()
    block = os.urandom(chunk)

    def one(f: Path) -> None:
        size = f.stat().st_size
        fd = os.open(out / f.name, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for a in range(0, size, chunk):
                os.pwrite(fd, block[: min(chunk, size - a)], a)
            os.fsync(fd)
        finally:
            os.close(fd)

    _threads(one, files, len(files))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--threads", default="4,8,16")
    ap.add_argument("--chunk-mb", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    files = _shards(args.checkpoint)
    total = sum(f.stat().st_size for f in files)
    chunk = args.chunk_mb << 20
    out = args.checkpoint.parent / "probe-out"
    ns = [int(x) for x in args.threads.split(",") if x]
    probes: list[tuple[str, object]] = [
        ("read-seq", lambda: read_seq(files, chunk)),
        ("read-files", lambda: read_files(files, chunk)),
        *[(f"read-ranges-{n}", lambda n=n: read_ranges(files, chunk, n)) for n in ns],
        ("fadvise", lambda: fadvise(files, chunk)),
        ("mmap-hash", lambda: mmap_hash(files, chunk)),
        ("copy", lambda: copy(files, out)),
        *[(f"copy-ranges-{n}", lambda n=n: copy_ranges(files, out, chunk, n)) for n in ns],
        ("write-only", lambda: write_only(files, out, chunk)),
    ]
    uname = platform.uname()
    fs = subprocess.run(["df", "-T", str(args.checkpoint)], capture_output=True, text=True).stdout
    report: dict = {"kernel": f"{uname.system} {uname.release}", "cpus": os.cpu_count(), "bytes": total,
                    "shards": len(files), "df": fs, "probes": {}}
    print(report["kernel"], f"{os.cpu_count()} cpus;", f"{total / 1e9:.2f} GB in {len(files)} shards\n{fs}")
    for _ in range(args.repeats):
        for name, fn in probes:
            shutil.rmtree(out, ignore_errors=True)
            dropped = drop_all()
            t = time.perf_counter()
            extra = fn()
            sec = time.perf_counter() - t
            report["probes"].setdefault(name, []).append(
                {"s": round(sec, 2), "gb_s": round(total / sec / 1e9, 2), "dropped": dropped,
                 **({"issue_s": round(extra, 2)} if isinstance(extra, float) else {})})
            print(f"{name:<16} {sec:6.2f} s  {total / sec / 1e9:5.2f} GB/s  (cache dropped: {dropped})"
                  + (f"  [fadvise returned after {extra:.2f} s]" if isinstance(extra, float) else ""), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
