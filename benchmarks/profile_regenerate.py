"""Where a regeneration's time goes: busy seconds per stream and per kernel of hubkit.weights.executor.

    python benchmarks/profile_regenerate.py CHECKPOINT_DIR [--recipe seed|weighted|pre|preserve]
        [--library fused|numpy|torch] [--pipelines N] [--group G] [--prefetch BYTES] [--helpers N] [--cold]
        [--processes N]

Wraps the executor's functions (and the fused kernels') with timers (no change to hubkit itself) and prints
wall, user and sys time, peak RSS and the busy time of each stream (compute, write, hash) and of the heavy
functions inside them. Streams overlap, so busy times add up to more than the wall time; the timeline shows
when each stream thread started and ended, from the script's start. ``--processes N`` is an experiment: the
shard groups run in N forked processes (one pipeline each) instead of threads of one process, to see what the
GIL costs; ``--cold`` drops the page cache first (root). The first run after fused.py changed includes
numba's compilation (the cache is then warm).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pagecache import drop_all  # noqa: E402

T0 = time.perf_counter()
STREAMS = ["_copy_stream", "_compute_ops", "_write_stream", "_hash_into"]  # busy, timeline
WRAPPED = [
    *STREAMS,
    "_hash_stream",
    "_copy_range",
    "_pwrite_buf",
    "_put",
    "_get",
    "_load_fused",
    "rows_block",
    "cols_partials",
    "cols_block",
    "accumulate",
]
FUSED = ["rows", "cols_reduce", "cols_partials", "cols_update"]  # hubkit.weights.fused, as fused.NAME
#: what --recipe edits: (targets, weight, norm of the [d, m] writers)
RECIPES = {
    "seed": (("embed_tokens", "attn_out", "mlp_down"), 1.0, "none"),
    "weighted": (("embed_tokens", "attn_out", "mlp_down"), 0.7, "none"),
    "pre": (("attn_out", "mlp_down"), 1.0, "pre"),
    "preserve": (("attn_out", "mlp_down"), 1.0, "preserve"),
}


def _plan(wplan, checkpoint: Path, recipe: str):
    import dataclasses

    targets, weight, norm = RECIPES[recipe]
    plan = wplan.plan_checkpoint(checkpoint, targets)
    ops = [dataclasses.replace(op, weight=weight, norm=norm if op.kind == "cols" and op.how != "bias" else "none")
           for op in plan.ops]
    return dataclasses.replace(plan, ops=ops)


def _in_processes(ab, plan, checkpoint: Path, out: Path, n: int) -> float:
    """Fork one process per shard group; each streams its shards with one pipeline."""
    import dataclasses

    # the executor's own split of shards into pipelines (it reads only ``.info`` of what it is given)
    groups = [[x.info for x in g] for g in ab._partition([SimpleNamespace(info=s) for s in plan.shards], n)]
    out.mkdir(parents=True)
    t = time.perf_counter()
    pids = []
    for g in groups:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                import numpy as np

                names = {s.name for s in g}
                sub = dataclasses.replace(plan, shards=g, ops=[op for op in plan.ops if op.shard in names])
                ab.parallel_pipelines = lambda: 1
                r = np.random.default_rng(0).standard_normal(plan.hidden_size)
                ab.execute_plan(sub, checkpoint, out, r, progress=False)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if status:
            raise SystemExit(f"a pipeline process failed ({status})")
    return time.perf_counter() - t


def main() -> None:
    import hubkit.weights.executor as ab
    from hubkit.weights import kernels
    from hubkit.weights import plan as wplan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--recipe", default="seed", choices=list(RECIPES))
    ap.add_argument("--pipelines", type=int, default=None)
    ap.add_argument("--processes", type=int, default=0)
    ap.add_argument("--group", type=int, default=None, help="compute chunks per block (CPU_GROUP)")
    ap.add_argument("--prefetch", type=int, default=None, help="PREFETCH_BYTES (0: off)")
    ap.add_argument("--helpers", type=int, default=None, help="threads computing blocks on CPU (1: none)")
    ap.add_argument("--library", default=None, help="CPU_LIBRARY: fused (default), numpy or torch")
    ap.add_argument("--cold", action="store_true")
    args = ap.parse_args()
    if args.library:
        ab.CPU_LIBRARY = args.library
    if args.group:
        kernels.CPU_GROUP = args.group
    if args.prefetch is not None:
        ab.PREFETCH_BYTES = args.prefetch
    if args.helpers is not None:
        ab.compute_helpers = lambda: args.helpers
    if args.cold:
        if not drop_all():
            raise SystemExit("--cold: dropping the page cache needs root (/proc/sys/vm/drop_caches)")
    if args.processes:
        out = Path(tempfile.mkdtemp(dir=args.checkpoint.parent)) / "out"
        try:
            wall = _in_processes(ab, _plan(wplan, args.checkpoint, args.recipe), args.checkpoint, out,
                                 args.processes)
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)
        print(f"{args.recipe}, {args.processes} process(es): wall {wall:.1f} s")
        return
    busy: dict[str, float] = {}
    spans: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def timed(name, fn, span=False):
        """Add each call's seconds to ``busy[name]``; with ``span``, also record when it ran (the timeline)."""

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                end = time.perf_counter()
                with lock:
                    busy[name] = busy.get(name, 0.0) + end - t
                    if span:
                        spans.append((name, t - T0, end - T0))

        return wrapper

    for name in WRAPPED:
        setattr(ab, name, timed(name, getattr(ab, name), span=name in STREAMS))
    fused = ab._load_fused()
    if fused is not None:
        for name in FUSED:
            setattr(fused, name, timed(f"fused.{name}", getattr(fused, name)))
    if args.pipelines:
        ab.parallel_pipelines = lambda: args.pipelines
    plan = _plan(wplan, args.checkpoint, args.recipe)

    def direction():
        """Torch-free, as ``regenerate`` reads a canonical file."""
        import numpy as np

        return np.random.default_rng(0).standard_normal(plan.hidden_size)

    r = timed("direction", direction, span=True)
    out = Path(tempfile.mkdtemp(dir=args.checkpoint.parent)) / "out"
    out.mkdir()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    try:
        result = ab.execute_plan(plan, args.checkpoint, out, r, progress=False)
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{args.recipe}, {ab.CPU_LIBRARY}, {ab.parallel_pipelines()} pipeline(s): wall {wall:.1f} s, user "
        f"{ru.ru_utime - ru0.ru_utime:.1f} s, sys {ru.ru_stime - ru0.ru_stime:.1f} s, peak RSS "
        f"{ru.ru_maxrss / 1024:.0f} MiB"
    )
    for name, sec in sorted(busy.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16} {sec:7.2f} s")
    print(f"timeline (s from the script's start; the run started at {t - T0:.2f}, ended at {t + wall - T0:.2f}):")
    for name, a, b in sorted(spans, key=lambda x: x[1]):
        print(f"  {a:6.2f} → {b:6.2f}  {name}")
    print("  sha256:", " ".join(h[:12] for h in result.shards_sha256.values()))


if __name__ == "__main__":
    main()
