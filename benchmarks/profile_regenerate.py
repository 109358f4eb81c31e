"""Where a regeneration's time goes: busy seconds per stream and per kernel of hubkit.abliterate.

    python benchmarks/profile_regenerate.py CHECKPOINT_DIR [--device cpu|cuda] [--pipelines N] [--group G]
        [--prefetch BYTES] [--library numpy|torch] [--gpu-helpers] [--light-cpu] [--cold] [--processes N]

Wraps the executor's functions with timers (no change to hubkit itself) and prints wall, user and sys time,
peak RSS and the busy time of each stream (compute, write, hash) and of the heavy functions inside them.
Streams overlap, so busy times add up to more than the wall time; the timeline shows when each stream thread
started and ended, from the script's start (with ``--device cuda``, ``_start_gpu`` is torch's import and
the device coming up while the CPU computes). ``--processes N`` is an experiment: the
shard groups run in N forked processes (one pipeline each) instead of threads of one process, to see what the
GIL costs; ``--cold`` drops the page cache first (root).
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

T0 = time.perf_counter()
STREAMS = ["_copy_stream", "_compute_ops", "_write_stream", "_hash_into", "_start_gpu"]  # busy, timeline
WRAPPED = [
    *STREAMS,
    "_hash_stream",
    "_copy_range",
    "_pwrite_buf",
    "_put",
    "_get",
    "rows_block",
    "cols_partials",
    "cols_block",
    "_accumulate",
]


def _drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _in_processes(ab, wplan, checkpoint: Path, out: Path, device: str, n: int) -> float:
    """Fork one process per shard group before torch is imported; each streams its shards with one pipeline."""
    import dataclasses

    plan = wplan.plan_checkpoint(checkpoint)
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
                import torch

                names = {s.name for s in g}
                sub = dataclasses.replace(plan, shards=g, ops=[op for op in plan.ops if op.shard in names])
                ab.parallel_pipelines = lambda: 1
                r = torch.randn(plan.hidden_size, generator=torch.Generator().manual_seed(0))
                ab.execute_plan(sub, checkpoint, out, r, device=device, progress=False)
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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pipelines", type=int, default=None)
    ap.add_argument("--processes", type=int, default=0)
    ap.add_argument("--group", type=int, default=None, help="compute chunks per block (CPU_GROUP/CUDA_GROUP)")
    ap.add_argument("--prefetch", type=int, default=None, help="PREFETCH_BYTES (0: off)")
    ap.add_argument("--helpers", type=int, default=None, help="threads computing blocks on CPU (1: none)")
    ap.add_argument("--library", default=None, help="CPU_LIBRARY: numpy (default) or torch")
    ap.add_argument("--gpu-helpers", action="store_true", help="experiment: GPU blocks on the helper threads too")
    ap.add_argument("--light-cpu", action="store_true", help="experiment: no CPU helpers until the GPU is up")
    ap.add_argument("--cold", action="store_true")
    args = ap.parse_args()
    if args.library:
        ab.CPU_LIBRARY = args.library
    if args.gpu_helpers or args.light_cpu:
        ab._Compute.for_op = lambda self, op: (
            (self.gpu[op.dtype], self.helpers if args.gpu_helpers else None)
            if self.gpu is not None
            else (self.cpu[op.dtype], None if args.light_cpu else self.helpers)
        )
    if args.group:
        kernels.CPU_GROUP = kernels.CUDA_GROUP = args.group
    if args.prefetch is not None:
        ab.PREFETCH_BYTES = args.prefetch
    if args.helpers is not None:
        ab.compute_helpers = lambda: args.helpers
    if args.cold:
        _drop_caches()
    if args.processes:
        out = Path(tempfile.mkdtemp(dir=args.checkpoint.parent)) / "out"
        try:
            wall = _in_processes(ab, wplan, args.checkpoint, out, args.device, args.processes)
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)
        print(f"{args.device}, {args.processes} process(es): wall {wall:.1f} s")
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
    if args.pipelines:
        ab.parallel_pipelines = lambda: args.pipelines
    plan = wplan.plan_checkpoint(args.checkpoint)

    def direction():
        """Torch-free, as ``regenerate`` reads a canonical file; with ``--library torch`` torch is imported here
        (a CUDA run imports it on its own thread, ``_start_gpu``, shown in the timeline)."""
        if ab.CPU_LIBRARY == "numpy":
            import numpy as np

            return np.random.default_rng(0).standard_normal(plan.hidden_size)
        import torch

        return torch.randn(plan.hidden_size, generator=torch.Generator().manual_seed(0))

    r = timed("direction", direction, span=True)
    out = Path(tempfile.mkdtemp(dir=args.checkpoint.parent)) / "out"
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    try:
        _, result = ab.abliterate_checkpoint(args.checkpoint, out, r, device=args.device, progress=False)
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
    print(f"timeline (s from the script's start; the run started at {t - T0:.2f}, ended at {t + wall - T0:.2f}):")
    for name, a, b in sorted(spans, key=lambda x: x[1]):
        print(f"  {a:6.2f} → {b:6.2f}  {name}")
    print("  sha256:", " ".join(h[:12] for h in result.shards_sha256.values()))
    print("  tensors computed:", result.devices)


if __name__ == "__main__":
    main()
