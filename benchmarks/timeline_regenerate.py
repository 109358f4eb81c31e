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


def _disks(names: list[str]) -> list[str]:
    """The devices to watch: those named, or every physical whole disk (``/sys/block/*/device``: no loop, ram,
    zram or device-mapper devices, whose I/O would be counted twice or is not the disk's)."""
    if names:
        known = {line.split()[2] for line in Path("/proc/diskstats").read_text().splitlines()}
        missing = sorted(set(names) - known)
        if missing:
            raise SystemExit(f"--device: not in /proc/diskstats: {', '.join(missing)}")
        return names
    return sorted(p.parent.name for p in Path("/sys/block").glob("*/device"))


def _read_disks(devs: list[str]) -> tuple[int, int, int]:
    """Bytes read, bytes written (512-byte sectors: fields 6 and 10) and requests in flight (field 12), summed."""
    r = w = inflight = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if f[2] in devs:
            r, w, inflight = r + int(f[5]) * 512, w + int(f[9]) * 512, inflight + int(f[11])
    return r, w, inflight


def _dirty_mb() -> float:
    kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(("Dirty:", "Writeback:")):
            kb += int(line.split()[1])
    return kb / 1024


def _sample(devs: list[str], last: tuple[float, int, int]) -> tuple[dict, tuple[float, int, int]]:
    r, w, inflight = _read_disks(devs)
    t = time.perf_counter()
    t0, r0, w0 = last
    dt = max(t - t0, 1e-9)
    row = {"t": round(t - T0, 3), "dt": round(dt, 4), "read_bytes": r - r0, "write_bytes": w - w0,
           "read_mb_s": round((r - r0) / dt / 1e6), "write_mb_s": round((w - w0) / dt / 1e6),
           "in_flight": inflight, "dirty_mb": round(_dirty_mb())}
    return row, (t, r, w)


def _sampler(devs: list[str], interval: float, stop: threading.Event) -> None:
    """A row every ``interval``, and one more when stopped (the last partial interval holds the closing fsync)."""
    r, w, _ = _read_disks(devs)
    last = (time.perf_counter(), r, w)
    while True:
        stopped = stop.wait(interval)
        row, last = _sample(devs, last)
        SAMPLES.append(row)
        if stopped:
            return


def _busy(samples: list[dict], idle_mb_s: int = 100) -> dict:
    """The intervals where the disk moved more than ``idle_mb_s``, and its read and write rates over them (bytes
    over measured seconds): a run bound by the disk keeps busy_s close to its wall time at the device's ceiling.
    The totals are the counters' differences over the whole run."""
    busy = [s for s in samples if s["read_mb_s"] + s["write_mb_s"] > idle_mb_s]
    secs = sum(s["dt"] for s in busy) or 1e-9
    return {
        "busy_s": round(sum(s["dt"] for s in busy), 2),
        "read_mb_s": round(sum(s["read_bytes"] for s in busy) / secs / 1e6),
        "write_mb_s": round(sum(s["write_bytes"] for s in busy) / secs / 1e6),
        "read_gb": sum(s["read_bytes"] for s in samples) / 1e9,
        "write_gb": sum(s["write_bytes"] for s in samples) / 1e9,
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
    ap.add_argument("--device", action="append", default=[], metavar="NAME",
                    help="a /proc/diskstats device to watch (repeatable); default: every physical disk")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                    help="override a constant of hubkit.weights.executor for this run (an experiment)")
    args = ap.parse_args(argv)
    if args.cold_checkpoint:
        drop_checkpoint(args.cold_checkpoint)
    devs = _disks(args.device)
    if not devs:
        print("no physical disk found under /sys/block: no disk samples (name one with --device)", file=sys.stderr)
    stop = threading.Event()
    sampler = threading.Thread(target=_sampler, args=(devs, args.interval, stop), daemon=True) if devs else None
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
    busy = _busy(SAMPLES)
    dev = "+".join(devs) or "none"
    print(f"wall {wall:.2f} s, disk {dev}: busy {busy['busy_s']:.2f} s at read {busy['read_mb_s']} + write "
          f"{busy['write_mb_s']} MB/s on average, {busy['read_gb']:.2f} GB read, {busy['write_gb']:.2f} GB written")
    if args.json:
        args.json.write_text(json.dumps({"wall_s": wall, "device": dev, "busy": busy, "events": EVENTS,
                                         "samples": SAMPLES}, indent=1))
    sys.exit(rc)


if __name__ == "__main__":
    main()
