"""The streaming executor: every shard read once, untouched bytes copied in the kernel, planned tensors
rewritten block by block, every output byte hashed on the way. It knows nothing recipe-specific: each
:class:`~hubkit.weights.plan.TensorOp` carries its vector and weight."""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import queue
import shutil
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from hubkit.errors import HubkitError, PlanError
from hubkit.formats.atomic import staging_dir
from hubkit.formats.safetensors_io import DTYPE_EPS, INDEX_NAME, NP_DTYPES, ShardInfo, torch_dtype
from hubkit.weights import kernels
from hubkit.weights.families import DEFAULT_TARGETS
from hubkit.weights.kernels import (
    Acc,
    Kernels,
    NumpyKernels,
    TorchKernels,
    accumulate,
    chunk_rows,
    cols_block,
    cols_coefficient,
    cols_partials,
    normed_coefficients,
    row_norms,
    rows_block,
    unit_vector,
)
from hubkit.weights.plan import TensorOp, TensorPlan, plan_checkpoint

if TYPE_CHECKING:
    from types import ModuleType

#: largest piece of untouched bytes handed to the writer at once
COPY_BLOCK = 64 << 20
#: source pages a stream has read are unmapped (MADV_DONTNEED) every RELEASE_BYTES: mapped file pages count in
#: the resident set, and each pipeline's compute and hash streams hold up to this much each
RELEASE_BYTES = 16 << 20
#: computed bytes the compute stream may run ahead, per queue (16-bit; twice that for 32-bit tensors)
QUEUE_BYTES = 32 << 20
#: at most this many shards stream at once (see :func:`parallel_pipelines`)
MAX_PIPELINES = 8
#: how far ahead of the compute stream the kernel is asked to read a targeted tensor (0: no read-ahead); from a
#: cold cache the compute stream would otherwise fault the tensor in with the kernel's small default window
PREFETCH_BYTES = 256 << 20
#: written bytes after which the writer asks the kernel to start writing a shard's pages out (see _flush_stream)
FLUSH_BYTES = 64 << 20
#: at most this many helper threads compute blocks on CPU, when cores are to spare (see compute_helpers), and
#: at most IN_FLIGHT blocks of one tensor are out on them at once
HELPERS_MAX = 16
IN_FLIGHT = 16
#: the arithmetic: "fused", the numba kernels of :mod:`hubkit.weights.fused` (8-20x numpy's throughput, the
#: same bytes); "numpy", the whole-array kernels of :mod:`hubkit.weights.kernels` (the reference, and the
#: fallback when numba can't be imported); "torch", the same kernels on torch (tests). Never torch by default:
#: a GPU machine's CUDA build takes 4-6 s to import, longer than the rest of a warm run.
CPU_LIBRARY = "fused"
#: free output blocks kept for reuse, at most (see :class:`_Blocks`)
SPARE_BYTES = 128 << 20
_PAGE = mmap.PAGESIZE
#: shown above the progress bar when numba starts compiling (once per machine; later runs load the kernels)
COMPILING = "numba is compiling the kernels for this machine (once: later runs load them from its cache) ..."

@dataclass
class TensorCheck:
    """Orthogonality of one written tensor: ‖rᵀW‖/‖W‖ (‖W r‖/‖W‖ for rows ops), before and after."""

    name: str
    target: str
    dtype: str
    before: float
    after: float
    #: the edit removes r entirely (weight 1, norm none): ``after`` must be at rounding level. Other edits keep
    #: part of r by design (a weight below 1, row norms restored), so their ``after`` is reported, not judged.
    checked: bool = True
    finite: bool = True  # ‖W'‖² of the written tensor is finite: no NaN or inf was written

    @property
    def threshold(self) -> float:
        return DTYPE_EPS[self.dtype]

    @property
    def ok(self) -> bool:
        return not self.checked or self.after <= self.threshold


@dataclass
class ExecutionResult:
    shards_sha256: dict[str, str]
    checks: list[TensorCheck]
    compiled: int = 0  # kernel specializations numba compiled in this process (a first run on a machine)
    kernel_cache: str | None = None  # where numba keeps them
    library: str = ""  # what computed: "fused" (numba), "numpy" or "torch"
    numba_missing: bool = False  # "fused" was asked for, numba could not be imported: numpy computed instead

    @property
    def worst(self) -> TensorCheck | None:
        return max((c for c in self.checks if c.checked), key=lambda c: c.after / c.threshold, default=None)

    @property
    def all_orthogonal(self) -> bool:
        return all(c.ok for c in self.checks)

    def refuse_non_finite(self, where: str) -> None:
        """A written tensor holding NaN or inf is an error, never a result: named, with its likely cause."""
        bad = [c for c in self.checks if not c.finite]
        if bad:
            c = bad[0]
            cause = ("the base tensor already holds NaN or inf" if not math.isfinite(c.before) else
                     "the recipe's weight or vector overflows the storage dtype")
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise PlanError(f"{where}: {c.name}{more}: the edit would write NaN or inf ({cause}); nothing written")


class _Stop(Exception):
    """Another stream failed or the run was interrupted; this one winds down quietly."""


@dataclass
class _Shared:
    """What the three streams of a run share: the error that stops them all, the progress bar."""

    bar: Any
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    flush: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # (fd, begin, end) for _flush_stream

    def fail(self, e: BaseException) -> None:
        if self.error is None and not isinstance(e, _Stop):
            self.error = e
        self.stop.set()

    def check(self) -> None:
        if self.stop.is_set():
            raise _Stop


class _Shard:
    """One shard's open source (fd + read-only map) and output fd."""

    def __init__(self, info: ShardInfo, ops: list[TensorOp], src_dir: Path, dst_dir: Path | None):
        self.info, self.ops = info, ops
        path = src_dir / info.name
        self.src = open(path, "rb")  # noqa: SIM115 - closed in close()
        size = os.fstat(self.src.fileno()).st_size
        if size != info.size:
            self.src.close()
            raise PlanError(f"{path}: changed size since it was planned ({info.size} → {size} bytes)")
        self.mm = mmap.mmap(self.src.fileno(), 0, access=mmap.ACCESS_READ)
        self.dst: int | None = None
        if dst_dir is not None:
            self.dst = os.open(dst_dir / info.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:  # a view is still referenced somewhere; the GC unmaps it
            pass
        if self.dst is not None:
            os.close(self.dst)
        self.src.close()


class _WriteOut:
    """One writer's written ranges of one output file, handed to the flusher every FLUSH_BYTES."""

    def __init__(self, fd: int, shared: _Shared):
        self.fd, self.shared = fd, shared
        self.begin = self.end = 0

    def wrote(self, a: int, b: int) -> None:
        if a != self.end:
            self.done()
            self.begin = a
        self.end = b
        if self.end - self.begin >= FLUSH_BYTES:
            self.done()

    def done(self) -> None:
        if self.end > self.begin:
            self.shared.flush.put((self.fd, self.begin, self.end))
        self.begin = self.end


def _copy_stream(shards: list[_Shard], shared: _Shared) -> None:
    """Stream 1a: every untouched byte range of the output shards, in file order, source → output inside the
    kernel (``copy_file_range``: never through Python, the GIL released).

    Needs neither torch nor the direction, so it starts before either is loaded and never waits for compute.
    """
    try:
        for sh in shards:
            assert sh.dst is not None
            out = _WriteOut(sh.dst, shared)
            for seg in _segments(sh):
                if seg.op is None:
                    shared.check()
                    _copy_range(sh, seg.begin, seg.end)
                    shared.bar.update(seg.end - seg.begin)
                    out.wrote(seg.begin, seg.end)
            out.done()
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        shared.fail(e)


def _write_stream(shards: list[_Shard], computed: queue.Queue, to_hash: queue.Queue, shared: _Shared) -> None:
    """Stream 1b: the computed chunks of the output shards, in file order, passed on to the hasher.

    Writes at disjoint offsets of one file need no ordering against :func:`_copy_stream`'s.
    """
    try:
        for sh in shards:
            assert sh.dst is not None
            out = _WriteOut(sh.dst, shared)
            for op in sh.ops:
                pos = op.begin
                while pos < op.end:
                    at, buf, done = _get(computed, shared)
                    assert at == pos, (op.name, at, pos)
                    _pwrite_buf(sh.dst, buf, at)
                    shared.bar.update(len(buf))
                    _put(to_hash, (at, buf, done), shared)
                    out.wrote(pos, pos + len(buf))
                    pos += len(buf)
            out.done()
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        shared.fail(e)


def _flush_stream(shared: _Shared) -> None:
    """Start the kernel's write-out of each written range at once (``POSIX_FADV_DONTNEED`` writes dirty pages back
    asynchronously, then drops the clean ones): the disk writes while the run goes on, instead of the closing
    fsync waiting for all of it (on the H100 machine that fsync was over half of a warm run). A thread of its
    own, because starting write-out can block on a busy device queue."""
    while (item := shared.flush.get()) is not None:
        fd, begin, end = item
        try:
            os.posix_fadvise(fd, begin, end - begin, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


class _Segment(NamedTuple):
    """A piece of a shard in file order: an untouched block (``op`` None) or one rewritten tensor."""

    begin: int
    end: int
    op: TensorOp | None
    run_end: int  # for an untouched block: where its run of untouched bytes ends (the next op, or EOF)


def _segments(sh: _Shard) -> Iterator[_Segment]:
    """The one walk over a shard that the copier and the hasher both follow: untouched bytes in blocks of at
    most COPY_BLOCK, each rewritten tensor whole (its bytes arrive in chunks from the compute stream)."""
    pos = 0
    for op in [*sh.ops, None]:
        stop = sh.info.size if op is None else op.begin
        while pos < stop:
            end = min(stop, pos + COPY_BLOCK)
            yield _Segment(pos, end, None, stop)
            pos = end
        if op is not None:
            yield _Segment(op.begin, op.end, op, op.end)
            pos = op.end


def _copy_range(sh: _Shard, a: int, b: int) -> None:
    src, dst = sh.src.fileno(), sh.dst
    assert dst is not None
    pos = a
    try:
        while pos < b:
            n = os.copy_file_range(src, dst, b - pos, pos, pos)
            if n == 0:
                raise OSError(f"{sh.info.name}: copy_file_range copied nothing at byte {pos}")
            pos += n
    except OSError:
        if pos != a:
            raise
        _pwrite_all(dst, sh.mm, a, b)  # copy_file_range not supported here (EXDEV, ENOSYS, ...)


def _pwrite_all(fd: int, mm: mmap.mmap, a: int, b: int) -> None:
    pos = a
    while pos < b:
        pos += os.pwrite(fd, memoryview(mm)[pos : min(b, pos + COPY_BLOCK)], pos)


class _FusedKernels:
    """The fused (numba) kernels for one storage dtype and one direction: ``u`` is the unit direction in the
    compute dtype. They write into output blocks from ``blocks``, reused once hashed."""

    def __init__(self, fused: ModuleType, code: str, r64: Any, blocks: _Blocks):
        self.fused, self.code, self.blocks = fused, code, blocks
        self.u = r64.astype(fused.compute_dtype(NP_DTYPES[code]))

    def mode(self) -> Any:
        return nullcontext()


class _Blocks:
    """Output blocks of the fused kernels, handed back by the hasher once hashed and reused: a fresh array per
    block would fault in fresh pages for every block written (a page fault per 4 KiB, at these speeds a cost
    of the order of the compute itself). Sizes are rounded up to MiB, so that a tensor's blocks share one size;
    at most SPARE_BYTES of free blocks are kept."""

    def __init__(self) -> None:
        self._free: dict[int, list[Any]] = {}
        self._spare = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int, dtype: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """``(array, done)``: an uninitialized array of ``shape`` over a pooled buffer, and the call that gives
        the buffer back."""
        import numpy as np

        size = -(-max(nbytes, 1) // (1 << 20)) << 20
        with self._lock:
            free = self._free.get(size)
            raw = free.pop() if free else None
            if raw is not None:
                self._spare -= size
        if raw is None:
            raw = np.empty(size, np.uint8)
        return raw[:nbytes].view(dtype).reshape(shape), lambda: self._give(raw)

    def _give(self, raw: Any) -> None:
        with self._lock:
            if self._spare + raw.nbytes <= SPARE_BYTES:
                self._free.setdefault(raw.nbytes, []).append(raw)
                self._spare += raw.nbytes


def _load_fused() -> ModuleType | None:
    """:mod:`hubkit.weights.fused`, or None when numba can't be imported (the numpy kernels then compute: the
    same bytes, 8-20x slower)."""
    try:
        from hubkit.weights import fused
    except ImportError:
        return None
    return fused


def _cpu_kernels(code: str, r64: Any, library: str, fused: ModuleType | None, blocks: _Blocks) -> Any:
    if library == "fused" and fused is not None:
        return _FusedKernels(fused, code, r64, blocks)
    if library == "torch":
        return TorchKernels(code, r64)
    return NumpyKernels(code, r64)


def _compute_ops(
    shards: list[_Shard],
    cpu: dict[tuple[str, str], Any],
    helpers: ThreadPoolExecutor | None,
    out: queue.Queue,
    checks: list[TensorCheck],
    shared: _Shared,
) -> None:
    """Stream 2: every op of every shard in file order; output chunks go on through ``out`` (to the writer, or
    straight to the hasher when nothing is written). The queue is deep, so compute runs well ahead."""
    try:
        for sh in shards:
            for op in sh.ops:
                k = cpu[(op.dtype, op.vector)]
                with k.mode():
                    sink = lambda at, buf, done: _put(out, (at, buf, done), shared)  # noqa: E731
                    checks.append(_compute_op(op, sh.mm, k, sink, shared, helpers))
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        shared.fail(e)


def _get(q: queue.Queue, shared: _Shared) -> Any:
    while True:
        shared.check()
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            pass


def _put(q: queue.Queue, item: Any, shared: _Shared) -> None:
    while True:
        shared.check()
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            pass


def _compute_op(
    op: TensorOp,
    mm: mmap.mmap,
    k: Any,
    sink: Any,
    shared: _Shared,
    helpers: ThreadPoolExecutor | None = None,
) -> TensorCheck:
    """Orthogonalize one tensor block by block; each output block is handed on with its byte offset.

    ``CPU_GROUP`` chunks are computed per block (cache-sized); chunk boundaries themselves depend on the shape
    only, so the bytes don't depend on the blocking. ``helpers`` (many cores) compute the blocks side by side:
    with one thread per shard the compute was the critical path on a 16-core machine while most cores idled.
    """
    t = _tensor_over(mm, op, isinstance(k, TorchKernels))
    pos = op.begin
    asked = released = op.begin  # read-ahead requested up to here; source pages dropped up to here

    def emit(buf: memoryview, done: Any = None) -> None:
        nonlocal pos, asked, released
        shared.check()
        sink(pos, buf, done)
        pos += len(buf)
        if pos - released >= RELEASE_BYTES or pos == op.end:  # the source rows behind pos are read for good
            _advise(mm, mmap.MADV_DONTNEED, released, pos)
            released = pos
        if PREFETCH_BYTES and asked < op.end and asked - pos < PREFETCH_BYTES // 2:
            _advise(mm, mmap.MADV_WILLNEED, asked, asked := min(op.end, pos + PREFETCH_BYTES))

    if PREFETCH_BYTES:  # the window ahead of the chunk being computed (a matrix's second pass finds it cached)
        _advise(mm, mmap.MADV_WILLNEED, op.begin, asked := min(op.end, op.begin + PREFETCH_BYTES))

    def on_helpers(fn: Any, starts: range) -> Iterator[Any]:
        return _in_order(helpers, fn, starts, k)

    if isinstance(k, _FusedKernels):
        acc = _fused_op(op, t, k, emit, on_helpers, helpers is not None)
    else:
        acc = _kernels_op(op, t, k, emit, on_helpers)
    assert pos == op.end, (op.name, pos, op.end)
    del t
    before, after = acc.ratios()
    return TensorCheck(op.name, op.target, op.dtype, before, after, checked=op.weight == 1.0 and op.norm == "none",
                       finite=math.isfinite(float(acc.norm)))


def _fused_op(op: TensorOp, t: Any, k: _FusedKernels, emit: Any, on_helpers: Any, helped: bool) -> Acc:
    """One tensor through :mod:`hubkit.weights.fused`: each block's output is written into a pooled buffer, and
    its checks into float64 sums of its own (added in block order: the same totals with or without helpers)."""
    import numpy as np

    fz, u, blocks = k.fused, k.u, k.blocks
    acc = Acc()
    if op.kind == "rows":
        d = op.shape[-1]
        flat = t.reshape(-1, d)
        rows = chunk_rows(d) * kernels.CPU_GROUP

        def rows_at(a: int) -> tuple[Any, Any, Any]:
            x = flat[a : a + rows]
            y, done = blocks.take(x.nbytes, x.dtype, x.shape)
            sums = np.zeros(3)
            fz.rows(x, u, y, w=op.weight, acc=sums)
            return y, done, sums

        for y, done, sums in on_helpers(rows_at, range(0, flat.shape[0], rows)):
            emit(memoryview(y).cast("B"), done)
            acc.before += sums[0]
            acc.after += sums[1]
            acc.norm += sums[2]
        return acc

    d, m = op.shape[-2], op.shape[-1]
    step = chunk_rows(m)
    rows = step * kernels.CPU_GROUP
    ct = fz.compute_dtype(t.dtype)
    for mat in t.reshape(-1, d, m):
        s = fz.new_sum(m, mat.dtype)
        norms = np.empty(d, ct) if op.norm != "none" else None

        def norms_at(a: int, norms: Any = norms) -> Any:
            return None if norms is None else norms[a : a + rows]

        if not helped:  # pass 1: s = aᵀW in the fixed order, block after block
            for a in range(0, d, rows):
                fz.cols_reduce(mat[a : a + rows], u[a : a + rows], step, s, norms=norms_at(a))
        else:  # the blocks' chunk partials side by side, summed in order: the same bytes

            def partials_at(a: int, mat: Any = mat, norms_at: Any = norms_at) -> Any:
                return fz.cols_partials(mat[a : a + rows], u[a : a + rows], step, norms=norms_at(a))

            for part in on_helpers(partials_at, range(0, d, rows)):
                fz.add_partials(part, s)
        b, c = fz.coefficients(u, s, op.weight, op.norm, norms)
        with np.errstate(over="ignore", invalid="ignore"):
            s64 = s.astype(np.float64)
            acc.before += float((s64 * s64).sum())
        keep = norms if op.norm == "preserve" else None

        def block_at(a: int, mat: Any = mat, b: Any = b, c: Any = c, keep: Any = keep) -> tuple[Any, Any, Any, Any]:
            x = mat[a : a + rows]
            y, done = blocks.take(x.nbytes, x.dtype, x.shape)
            after, nrm = np.zeros(m), np.zeros(1)
            fz.cols_update(x, b[a : a + rows], c, y, target=None if keep is None else keep[a : a + rows],
                           weights=u[a : a + rows], after=after, norm=nrm)
            return y, done, after, nrm

        after_vec = np.zeros(m)
        for y, done, after, nrm in on_helpers(block_at, range(0, d, rows)):  # pass 2: rows independent
            emit(memoryview(y).cast("B"), done)
            after_vec += after
            acc.norm += float(nrm[0])
        with np.errstate(over="ignore", invalid="ignore"):
            acc.after += float((after_vec * after_vec).sum())
    return acc


def _kernels_op(op: TensorOp, t: Any, k: Kernels, emit: Any, on_helpers: Any) -> Acc:
    """One tensor through :mod:`hubkit.weights.kernels` (numpy, or torch): the reference, and the fallback."""
    acc = Acc()
    if op.kind == "rows":
        d = op.shape[-1]
        flat = t.reshape(-1, d)
        rows = chunk_rows(d) * kernels.CPU_GROUP

        def rows_at(a: int) -> tuple[Any, Acc]:
            sub = Acc()
            return rows_block(k.load(flat[a : a + rows]), k, sub, op.weight), sub

        for y, sub in on_helpers(rows_at, range(0, flat.shape[0], rows)):
            emit(k.as_bytes(y))
            acc.add(sub)
        return acc

    d, m = op.shape[-2], op.shape[-1]
    step = chunk_rows(m)
    rows = step * kernels.CPU_GROUP
    normed, keep = op.norm != "none", op.norm == "preserve"
    for mat in t.reshape(-1, d, m):

        def partials_at(a: int, mat: Any = mat) -> Any:
            x = k.load(mat[a : a + rows])
            r = k.r[a : a + rows]
            if not normed:
                return cols_partials(x, r, step, k), r, None
            n_rows = row_norms(x, k)  # the rows are whole here: norms in the same pass
            a_rows, b_rows = normed_coefficients(r, n_rows, k)
            return cols_partials(x, a_rows, step, k), b_rows, n_rows

        s, coef, norms = None, [], []
        for part, b_rows, n_rows in on_helpers(partials_at, range(0, d, rows)):  # pass 1: s = aᵀW, fixed order
            s = accumulate(part, s)
            coef.append(b_rows)
            norms.append(n_rows)
        assert s is not None
        acc.before = acc.before + (s * s).sum()
        c = cols_coefficient(s, op.weight, k)

        def block_at(a: int, mat: Any = mat, c: Any = c, coef: list = coef, norms: list = norms) -> tuple[Any, Acc]:
            sub, i = Acc(), a // rows
            y = cols_block(k.load(mat[a : a + rows]), k.r[a : a + rows], coef[i], c, k, sub,
                           norms[i] if keep else None)
            return y, sub

        after_vec: Any = 0.0
        for y, sub in on_helpers(block_at, range(0, d, rows)):  # pass 2
            emit(k.as_bytes(y))
            after_vec = after_vec + sub.after
            acc.norm = acc.norm + sub.norm
        acc.after = acc.after + (after_vec * after_vec).sum()
    return acc


def _in_order(helpers: ThreadPoolExecutor | None, fn: Any, starts: range, k: Any) -> Iterator[Any]:
    """``fn(a)`` for each block start, in order: on the helper threads when there are some (blocks are
    independent, so the results are the ones one thread would give; a bounded number is in flight)."""
    if helpers is None:
        yield from map(fn, starts)
        return

    def run(a: int) -> Any:
        with k.mode():  # torch's inference mode is per thread
            return fn(a)

    pending: deque[Future] = deque()
    try:
        for a in starts:
            pending.append(helpers.submit(run, a))
            while pending and (len(pending) > IN_FLIGHT or pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


def _hash_stream(shards: list[_Shard], ops_out: queue.Queue, shared: _Shared) -> dict[str, str]:
    """Stream 3: each shard's output bytes in file order through sha256.

    Untouched bytes are hashed from the source map (they are the output's bytes), computed chunks as the compute
    stream hands them over. Untouched source pages are dropped once hashed, in batches (each drop flushes TLBs),
    so resident memory stays bounded whatever the model's size.
    """
    hashes: dict[str, str] = {}
    for sh in shards:
        sha = hashlib.sha256()
        for seg in _segments(sh):
            if seg.op is None:
                shared.check()
                _advise(sh.mm, mmap.MADV_WILLNEED, seg.end, min(seg.run_end, seg.end + COPY_BLOCK))
                for a in range(seg.begin, seg.end, RELEASE_BYTES):
                    b = min(seg.end, a + RELEASE_BYTES)
                    with memoryview(sh.mm) as view:
                        sha.update(view[a:b])
                    _advise(sh.mm, mmap.MADV_DONTNEED, a, b)
                continue
            pos = seg.begin  # a rewritten tensor: its source pages are the compute stream's to drop
            while pos < seg.end:
                at, buf, done = _get(ops_out, shared)
                assert at == pos, (seg.op.name, at, pos)
                sha.update(buf)
                pos += len(buf)
                if done is not None:  # the block's last reader: its buffer may be reused
                    done()
        hashes[sh.info.name] = sha.hexdigest()
    return hashes


def _pwrite_buf(fd: int, buf: memoryview, at: int) -> None:
    view = buf
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def _advise(mm: mmap.mmap, advice: int, begin: int, end: int) -> None:
    """``madvise`` over the pages of ``[begin, end)`` of a source map; a hint, so a refusal is ignored.

    ``MADV_WILLNEED`` asks the kernel to read ahead (a no-op when cached; not MADV_POPULATE_READ: mapping pages
    ahead of use made the kernel-side copy and the hashing contend). ``MADV_DONTNEED`` drops our mapping of pages
    already consumed (the page cache keeps them), which bounds resident memory whatever the model's size.
    """
    start = begin - begin % _PAGE
    if end > start:
        try:
            mm.madvise(advice, start, end - start)
        except (OSError, ValueError):
            pass


def _tensor_over(mm: mmap.mmap, op: TensorOp, torch_view: bool) -> Any:
    """The op's tensor as a zero-copy view of the memory-mapped shard: a torch tensor or a numpy array."""
    if not torch_view:
        import numpy as np

        dtype = np.dtype(NP_DTYPES[op.dtype])
        return np.frombuffer(mm, dtype, op.nbytes // dtype.itemsize, op.begin).reshape(op.shape)
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only buffer: we never write through it
        raw = torch.frombuffer(mm, dtype=torch.uint8, count=op.nbytes, offset=op.begin)
    return raw.view(torch_dtype(op.dtype)).reshape(op.shape)


def execute_plan(
    plan: TensorPlan,
    src_dir: str | Path,
    dst_dir: str | Path | None,
    vectors: Any,
    *,
    progress: bool = True,
) -> ExecutionResult:
    """Stream every shard of ``src_dir`` into ``dst_dir`` (same names), rewriting the plan's tensors.

    Each group of shards (one per three cores, see :func:`parallel_pipelines`) gets four streams: a copier
    moves the untouched ranges inside the kernel (``copy_file_range``), a compute thread orthogonalizes the
    targeted tensors block by block (on helper threads when cores are to spare), a writer writes the computed
    blocks, and a hasher hashes each shard in file order (untouched bytes from the source map, computed blocks
    passed on by the writer). The copiers and hashers start first; ``direction`` may be a callable, called
    while they already move bytes. The compute runs the fused numba kernels (:mod:`hubkit.weights.fused`),
    or numpy's when numba can't be imported (the same bytes); torch is never imported. ``dst_dir=None`` only
    hashes (what ``publish --record-regeneration`` needs). Shards are fsynced at the end; the caller makes
    ``dst_dir`` appear atomically (see :func:`staging_dir`).
    """
    from tqdm.auto import tqdm

    src_dir = Path(src_dir)
    dst = None if dst_dir is None else Path(dst_dir)
    bar = tqdm(
        total=plan.total_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="regenerate",
        disable=not progress or dst is None,
    )
    shared = _Shared(bar)
    shards: list[_Shard] = []
    checks: list[TensorCheck] = []
    hashes: dict[str, str] = {}
    workers: list[threading.Thread] = []
    flusher = threading.Thread(target=_flush_stream, args=(shared,), daemon=True, name="hubkit-flush")
    helpers: ThreadPoolExecutor | None = None
    threads_before: int | None = None
    stop_listening: Any = None

    def start(target: Any, *args: Any) -> None:
        workers.append(threading.Thread(target=target, args=(*args, shared), daemon=True, name=f"hubkit{target.__name__}"))
        workers[-1].start()

    try:
        for info in plan.shards:
            shards.append(_Shard(info, plan.ops_in(info.name), src_dir, dst))
        depth = max(4, QUEUE_BYTES // (2 * kernels.CHUNK_ELEMS * kernels.CPU_GROUP))
        parts = [(part, queue.Queue(maxsize=depth), queue.Queue(maxsize=depth))
                 for part in _partition(shards, parallel_pipelines())]
        flusher.start()
        for part, to_hash, _ in parts:  # torch-free: bytes move before the direction is even read
            if dst is not None:
                start(_copy_stream, part)
            start(_hash_into, part, to_hash, hashes)

        library = CPU_LIBRARY
        fused = _load_fused() if library == "fused" else None  # numba's import (~0.2 s) while bytes move
        compiled_before = fused.compiled_here()[0] if fused is not None else 0
        if fused is not None and not bar.disable:  # a first run on a machine: say why the compute waits
            stop_listening = fused.on_first_compile(lambda: bar.write(COMPILING, file=sys.stderr))
        given = vectors() if callable(vectors) else vectors
        if not isinstance(given, dict):  # one direction for every op (the seed recipe's form)
            given = {op.vector: given for op in plan.ops}
        r64 = {key: unit_vector(v) for key, v in given.items()}
        for key, r in r64.items():
            if r.size != plan.hidden_size:
                raise HubkitError(f"direction {key} has d={r.size}, the checkpoint's hidden size is "
                                  f"{plan.hidden_size}")
        missing = sorted({op.vector for op in plan.ops} - set(r64))
        if missing:
            raise HubkitError(f"the plan needs vector(s) {', '.join(missing)}, which the recipe did not give")
        if library == "torch":
            import torch

            # One intra-op thread: the chunks are cache-sized, where OpenMP fan-out costs more than it gives
            # (and collapses on a busy machine); the other streams use the other cores.
            threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        blocks = _Blocks()
        cpu = {(code, v): _cpu_kernels(code, r64[v], library, fused, blocks)
               for code, v in {(op.dtype, op.vector) for op in plan.ops}}
        n_helpers = compute_helpers()
        helpers = ThreadPoolExecutor(n_helpers, thread_name_prefix="hubkit-blocks") if n_helpers > 1 else None
        for part, to_hash, computed in parts:
            start(_compute_ops, part, cpu, helpers, to_hash if dst is None else computed, checks)
            if dst is not None:
                start(_write_stream, part, computed, to_hash)
        while any(w.is_alive() for w in workers):  # a timed join, so Ctrl-C reaches this thread
            for w in workers:
                w.join(0.2)
        if shared.error is not None:
            raise shared.error
        if dst is not None:  # durable before the caller renames the folder into place; side by side
            with ThreadPoolExecutor(len(shards), thread_name_prefix="hubkit-fsync") as ex:
                list(ex.map(os.fsync, [sh.dst for sh in shards]))
    except BaseException as e:
        shared.fail(e)
        for w in workers:
            w.join()
        raise
    finally:
        if flusher.is_alive():  # stopped before the shards' descriptors close
            shared.flush.put(None)
            flusher.join()
        if helpers is not None:
            helpers.shutdown(cancel_futures=True)
        if stop_listening is not None:
            stop_listening()
        if threads_before is not None:
            __import__("torch").set_num_threads(threads_before)
        for sh in shards:
            sh.close()
        bar.close()
    compiled, cache = fused.compiled_here() if fused is not None else (0, None)
    missing = library == "fused" and fused is None
    return ExecutionResult(dict(sorted(hashes.items())), sorted(checks, key=lambda c: c.name),
                           compiled - compiled_before, cache, "numpy" if missing else library, missing)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallel_pipelines() -> int:
    """How many shards stream at once: one pipeline (compute, write and hash threads) per three cores, and at
    least two from two cores on.

    sha256 runs at about 1-2 GB/s on one core (1.2-1.3 GB/s on the 2-core test VM), so hashing shards side by
    side is what brings the run down to the disk's speed. With the fused kernels a pipeline's compute is light:
    on 2 cores two pipelines took an in-process seed run of the 3.96 GB checkpoint from 3.7-3.9 s to 3.3-3.5 s
    (preserve 3.3-3.6 → 2.9-3.3 s; the numpy fallback 6.0 → 5.5-5.9 s).
    """
    cpus = _cpus()
    return max(min(2, cpus), min(MAX_PIPELINES, cpus // 3))


def compute_helpers() -> int:
    """Threads that compute blocks on CPU: half the cores (at most HELPERS_MAX), none below eight cores, where
    the pipelines already keep every core busy. The array library releases the GIL inside each operation."""
    cpus = _cpus()
    return min(HELPERS_MAX, cpus // 2) if cpus >= 8 else 1


def _partition(shards: list[_Shard], n: int) -> list[list[_Shard]]:
    """Split shards into ``n`` groups of about equal bytes (largest first), each kept in file-name order."""
    groups: list[list[_Shard]] = [[] for _ in range(max(1, min(n, len(shards))))]
    sizes = [0] * len(groups)
    for sh in sorted(shards, key=lambda s: -s.info.size):
        i = sizes.index(min(sizes))
        groups[i].append(sh)
        sizes[i] += sh.info.size
    return [sorted(g, key=lambda s: s.info.name) for g in groups if g]


def _hash_into(shards: list[_Shard], q: queue.Queue, out: dict[str, str], shared: _Shared) -> None:
    try:
        out.update(_hash_stream(shards, q, shared))
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        shared.fail(e)


# ====================================================================== output folder handling



def abliterate_checkpoint(
    src_dir: str | Path,
    out_dir: str | Path,
    direction: Any,
    targets: Iterable[str] = DEFAULT_TARGETS,
    *,
    progress: bool = True,
    copy_files: Iterable[str] = (),
) -> tuple[TensorPlan, ExecutionResult]:
    """Plan and stream a checkpoint folder into ``out_dir`` atomically (no card, no provenance checks).

    The index file (if any) and ``copy_files`` present in ``src_dir`` are copied as they are.
    """
    src_dir = Path(src_dir)
    plan = plan_checkpoint(src_dir, targets)
    with staging_dir(out_dir) as tmp:
        result = execute_plan(plan, src_dir, tmp, direction, progress=progress)
        for name in (INDEX_NAME, *copy_files):
            if (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, tmp / name)
    return plan, result
