"""Where a regeneration's time goes: busy seconds per stream and per kernel of hubkit.abliterate.

    python benchmarks/profile_regenerate.py CHECKPOINT_DIR [--device cpu|cuda] [--pipelines N]

Wraps the executor's functions with timers (no change to hubkit itself) and prints wall, user and sys time,
peak RSS and the busy time of each stream (compute, write, hash) and of the heavy functions inside them.
Streams overlap, so busy times add up to more than the wall time.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WRAPPED = [
    "_compute_ops",
    "_write_stream",
    "_hash_stream",
    "_copy_range",
    "_pwrite_buf",
    "_put",
    "_get",
    "rows_block",
    "cols_partials",
    "cols_block",
    "_as_bytes",
    "_accumulate",
]


def main() -> None:
    import torch

    from hubkit import abliterate as ab

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pipelines", type=int, default=None)
    args = ap.parse_args()
    busy: dict[str, float] = {}
    lock = threading.Lock()

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    busy[name] = busy.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    for name in WRAPPED:
        setattr(ab, name, timed(name, getattr(ab, name)))
    if args.pipelines:
        ab.parallel_pipelines = lambda: args.pipelines
    plan = ab.plan_checkpoint(args.checkpoint)
    r = torch.randn(plan.hidden_size, generator=torch.Generator().manual_seed(0))
    out = Path(tempfile.mkdtemp(dir=args.checkpoint.parent)) / "out"
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    try:
        ab.abliterate_checkpoint(args.checkpoint, out, r, device=args.device, progress=False)
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{args.device}, {ab.parallel_pipelines()} pipeline(s): wall {wall:.1f} s, user "
        f"{ru.ru_utime - ru0.ru_utime:.1f} s, sys {ru.ru_stime - ru0.ru_stime:.1f} s, peak RSS "
        f"{ru.ru_maxrss / 1024:.0f} MiB"
    )
    for name, sec in sorted(busy.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16} {sec:7.2f} s")


if __name__ == "__main__":
    main()
