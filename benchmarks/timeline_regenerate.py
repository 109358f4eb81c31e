"""A timeline of one whole ``hubkit regenerate`` (or of a plain copy): when each stage and stream started and
ended, and what the disk did meanwhile, sampled from ``/proc/diskstats``.

    python benchmarks/timeline_regenerate.py [--cold-checkpoint DIR] [--interval 0.25] [--json F] \\
        -- regenerate RECIPE --base-model DIR --out OUT
    python benchmarks/timeline_regenerate.py --copy SRC DST [--cold-checkpoint SRC]

``profile_regenerate.py`` times the executor in-process; this one runs the CLI's own entry point in this process
(imports included: the clock starts before ``hubkit.cli`` is imported), so what a user waits for outside the
byte streams shows too. Each sample row gives the disk's read and write MB/s over the last interval, the
requests in flight and the kernel's dirty + writeback memory: a run at the disk's floor keeps read + write at
the device's ceiling from its first sample to its last.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: --baseline-style A/B

from pagecache import drop_checkpoint  # noqa: E402

EVENTS: list[tuple[float, str, str]] = []
SAMPLES: list[dict] = []
EXECUTOR = ["_copy_stream", "_compute_ops", "_write_stream", "_hash_into", "_load_fused"]
REGENERATE = ["prepare", "execute_plan", "render_card"]


def stamp(what: str) -> None:
    EVENTS.append((time.perf_counter() - T0, threading.current_thread().name, what))


def _wrap(mod, name: str) -> None:
    f = getattr(mod, name)

    @functools.wraps(f)
    def timed(*a, **k):
        stamp(f"{name} start")
        try:
            return f(*a, **k)
        finally:
            stamp(f"{name} end")

    setattr(mod, name, timed)


def _device_of(path: Path) -> str | None:
    """The /proc/diskstats name of the device holding ``path``."""
    st = os.stat(path)
    want = (os.major(st.st_dev), os.minor(st.st_dev))
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if (int(f[0]), int(f[1])) == want:
            return f[2]
    return None


def _read_disk(dev: str) -> tuple[int, int, int]:
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if f[2] == dev:
            return int(f[5]) * 512, int(f[9]) * 512, int(f[11])
    return 0, 0, 0


def _dirty_mb() -> float:
    kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(("Dirty:", "Writeback:")):
            kb += int(line.split()[1])
    return kb / 1024


def _sampler(dev: str, interval: float, stop: threading.Event) -> None:
    r0, w0, _ = _read_disk(dev)
    t0 = time.perf_counter()
    while not stop.wait(interval):
        r, w, inflight = _read_disk(dev)
        t = time.perf_counter()
        SAMPLES.append({
            "t": round(t - T0, 3),
            "read_mb_s": round((r - r0) / (t - t0) / 1e6),
            "write_mb_s": round((w - w0) / (t - t0) / 1e6),
            "in_flight": inflight,
            "dirty_mb": round(_dirty_mb()),
        })
        r0, w0, t0 = r, w, t


def _busy(samples: list[dict], interval: float, idle_mb_s: int = 100) -> dict:
    """The intervals where the disk moved more than ``idle_mb_s``, and its mean read and write rates over them: a
    run bound by the disk keeps busy_s close to its wall time at the device's ceiling."""
    busy = [s for s in samples if s["read_mb_s"] + s["write_mb_s"] > idle_mb_s]
    n = max(1, len(busy))
    return {
        "busy_s": len(busy) * interval,
        "read_mb_s": round(sum(s["read_mb_s"] for s in busy) / n),
        "write_mb_s": round(sum(s["write_mb_s"] for s in busy) / n),
        "read_gb": sum(s["read_mb_s"] for s in samples) * interval / 1e3,
        "write_gb": sum(s["write_mb_s"] for s in samples) * interval / 1e3,
    }


def _copy(src: Path, dst: Path) -> None:
    """The benchmark's floor: shutil.copyfile of every file, then fsync (as bench_regenerate.py's copy)."""
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        shutil.copyfile(f, dst / f.name)
    for f in sorted(dst.iterdir()):
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def main() -> None:
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold-checkpoint", type=Path, help="drop this checkpoint's pages from the page cache first")
    ap.add_argument("--copy", nargs=2, type=Path, metavar=("SRC", "DST"), help="time a plain copy instead")
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                    help="override a constant of hubkit.weights.executor for this run (an experiment)")
    args = ap.parse_args(argv)
    if args.cold_checkpoint:
        drop_checkpoint(args.cold_checkpoint)
    where = args.copy[1].parent if args.copy else Path.cwd()
    dev = _device_of(where)
    stop = threading.Event()
    sampler = threading.Thread(target=_sampler, args=(dev, args.interval, stop), daemon=True) if dev else None
    global T0
    T0 = time.perf_counter()
    if sampler:
        sampler.start()
    rc = 0
    if args.copy:
        stamp("copy start")
        _copy(*args.copy)
        stamp("copy end")
    else:
        import hubkit.cli as cli

        stamp("imported hubkit.cli")
        from hubkit.weights import executor, regenerate

        for name in EXECUTOR:
            _wrap(executor, name)
        for item in args.set:
            name, _, value = item.partition("=")
            if not hasattr(executor, name):
                raise SystemExit(f"--set {item}: hubkit.weights.executor has no {name}")
            setattr(executor, name, int(value))
            stamp(f"set {name}={value}")
        for name in REGENERATE:
            _wrap(regenerate, name)
        try:
            cli.main(rest, standalone_mode=False)
        except SystemExit as e:
            rc = int(e.code or 0)
        stamp("cli returned")
    stop.set()
    if sampler:
        sampler.join()
    wall = time.perf_counter() - T0
    rows = [(t, f"{th[:24]:24} {what}") for t, th, what in EVENTS]
    rows += [(s["t"], f"{'disk':24} read {s['read_mb_s']:5} MB/s  write {s['write_mb_s']:5} MB/s  "
                      f"in flight {s['in_flight']:3}  dirty+wb {s['dirty_mb']:5} MB") for s in SAMPLES]
    for t, text in sorted(rows, key=lambda r: r[0]):
        print(f"{t:7.3f}  {text}")
    busy = _busy(SAMPLES, args.interval)
    print(f"wall {wall:.2f} s, disk {dev}: busy {busy['busy_s']:.2f} s at read {busy['read_mb_s']} + write "
          f"{busy['write_mb_s']} MB/s on average, {busy['read_gb']:.2f} GB read, {busy['write_gb']:.2f} GB written")
    if args.json:
        args.json.write_text(json.dumps({"wall_s": wall, "device": dev, "busy": busy, "events": EVENTS,
                                         "samples": SAMPLES}, indent=1))
    sys.exit(rc)


if __name__ == "__main__":
    main()
