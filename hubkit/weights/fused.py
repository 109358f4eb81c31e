"""Fused CPU kernels for the weight edits (numba): the bytes of :mod:`hubkit.weights.kernels` at close to
memory speed, one core.

Why: the numpy kernels make a full pass over each block per step (upcast, product, every tree level, update,
rounding), ~0.25-0.6 GB/s on one core. These numba loops read each element once per pass (``rows``: one
pass; ``cols``: the reduction pass, then the update pass), keep per-row / per-chunk intermediates in L1/L2,
and prefetch the next rows so reads overlap writes as in a copy: 8-20x the numpy kernels' throughput
(benchmarks/RESULTS-regenerate.md). They give **the same bytes** as the numpy kernels, which stay the
reference and the fallback when numba is missing: every floating-point op is the same IEEE op on the same
operands in the same order (``fastmath`` off: no reassociation, no FMA contraction; tests/test_fused.py
checks the bytes). Vectorization never reorders a sum here: every loop is elementwise, the reductions are
trees of elementwise adds, so the bytes don't depend on the vector width or the CPU.

Compilation: each kernel is compiled on its first call, for the storage dtype it is called with (a BF16
checkpoint compiles the BF16 kernels only, ~6 s on a 2-core machine; all four dtypes ~20 s), and cached on
disk (``cache=True``): in ``__pycache__`` next to this file, or numba's per-user cache dir when that folder is
read-only, or ``NUMBA_CACHE_DIR``. Later processes load the machine code in ~0.3 s. Inputs are always passed
read-only and C-contiguous (see :func:`_src`), so that there is one specialization per dtype.

Storage and compute dtypes (as hubkit): BF16 (its uint16 bits) and F16 compute in float32, F32 and F64 in
float64. Upcasts are exact; downcasts round to nearest-even, overflow → ±inf; every NaN becomes the storage
dtype's positive quiet NaN (BF16 0x7FC0, F16 0x7E00, F32 0x7FC00000, F64 0x7FF8000000000000).

Fixed orders (the definition; :mod:`hubkit.weights.kernels` writes the same with whole-array ops, for numpy
and torch):

* ``tree(v)`` over n values: while n > 1: h = n // 2, v[k] ← v[k] + v[k + h] for k < h, and when n is odd
  the last value v[n-1] moves to position h; n ← h + n % 2. (hubkit's ``tree_sum``.)
* ``rows`` (x [n, d], unit u [d]): s_i = tree_j(x_ij · u_j); c_i = s_i ⊗ w (skipped when w == 1);
  y_ij = x_ij − c_i · u_j.
* ``cols`` (W [d, m], rows are residual dims): rows are cut into chunks of ``step = chunk_rows(m)`` rows
  from the matrix's first row; each chunk gives p_j = tree_i(W_ij · a_i) over its rows; s_j is the in-order
  sum of the chunks' p_j from −0.0 (the additive identity: the bits of hubkit's ``s = p0; s = s + p1 …``).
  c_j = s_j ⊗ w (skipped when w == 1); y_ij = W_ij − b_i · c_j. Per mode:
  - ``none``: a = b = u (w == 1: the seed recipe's bytes, as ever).
  - ``pre``: n_i = sqrt(tree_j(W_ij · W_ij)); a_i = u_i / n_i (0 when n_i == 0); b_i = n_i · u_i.
  - ``preserve``: as ``pre``, then M_ij = W_ij − b_i · c_j (compute dtype, not rounded),
    q_i = sqrt(tree_j(M_ij · M_ij)), g_i = n_i / q_i (1 when q_i == 0: a zero row stays zero),
    y_ij = M_ij · g_i. This is the formula's Ŵ − w u uᵀŴ rescaled to norm n_i, since M = n ⊙ that.
* bias b [d]: the ``rows`` op on one row.

Each step is one IEEE-rounded op in the compute dtype (w is rounded to it first; sqrt is correctly rounded,
which torch's CPU sqrt is not: see ``TorchKernels.sqrt``); the final cast rounds to the storage dtype. NaN
outputs are canonical in every dtype: when a sum meets two different NaNs the result keeps one operand's sign
and payload (x86), and which operand is first is the compiler's choice, so the bytes would otherwise differ
between numpy, LLVM and machines.

The checks (hubkit's ``before``/``after``/``norm``) are diagnostics: float64 totals of compute-dtype partial
sums in fixed orders of their own (lanes of ``_SEG`` columns, flushed every ``_FLUSH`` rows), equal to the
numpy kernels' to rounding, not bit for bit (numpy's pairwise ``sum`` and ``einsum`` orders are its own).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from hubkit.weights.kernels import chunk_rows  # rows per cols chunk: part of the bytes' definition

MODES = ("none", "pre", "preserve")

_I16, _I32 = ir.IntType(16), ir.IntType(32)
_JIT = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy", "boundscheck": False}
_JIT_INLINE = {**_JIT, "inline": "always"}


# ---------------------------------------------------------------- scalar conversions (LLVM IR, vectorizable)


@intrinsic
def _bf16_up(typingctx: Any, v: Any) -> Any:
    """bfloat16 bits (uint16) → float32: zero-extend, shift left 16, reinterpret (exact)."""
    if v != types.uint16:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        wide = builder.shl(builder.zext(args[0], _I32), ir.Constant(_I32, 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(v), codegen


@intrinsic
def _f16_up(typingctx: Any, v: Any) -> Any:
    """float16 bits (held as int16, see :func:`_kernel_view`) → float32: LLVM ``fpext`` (exact)."""
    if v != types.int16:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(v), codegen


def _bf16_bits(builder: Any, y: Any) -> Any:
    """float32 → bfloat16 bits, nearest-even by an integer add (as hubkit's numpy ``down``)."""
    bits = builder.bitcast(y, _I32)
    lsb = builder.and_(builder.lshr(bits, ir.Constant(_I32, 16)), ir.Constant(_I32, 1))
    t = builder.add(builder.add(bits, ir.Constant(_I32, 0x7FFF)), lsb)
    return builder.trunc(builder.lshr(t, ir.Constant(_I32, 16)), _I16)


def _f16_bits(builder: Any, y: Any) -> Any:
    """float32 → float16 bits: LLVM ``fptrunc`` (vcvtps2ph: nearest-even, overflow → ±inf)."""
    return builder.bitcast(builder.fptrunc(y, ir.HalfType()), _I16)


def _down_intrinsic(bits: Any, result: Any, nan: int | None, doc: str) -> Any:
    """A float32 → 16-bit storage cast: ``bits`` builds the rounding; with ``nan`` every NaN input gives that
    one bit pattern (the dtype's positive quiet NaN), without it the input is known not to be NaN (two
    instructions fewer, the same bits otherwise)."""

    def typer(typingctx: Any, y: Any) -> Any:
        if y != types.float32:
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            res = bits(builder, args[0])
            if nan is None:
                return res
            is_nan = builder.fcmp_unordered("uno", args[0], args[0])
            return builder.select(is_nan, ir.Constant(_I16, nan), res)

        return result(y), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


_bf16_down = _down_intrinsic(_bf16_bits, types.uint16, 0x7FC0, "float32 → bfloat16 bits; NaN → 0x7FC0")
_bf16_down_finite = _down_intrinsic(_bf16_bits, types.uint16, None, "float32 (not NaN) → bfloat16 bits")
_f16_down = _down_intrinsic(_f16_bits, types.int16, 0x7E00, "float32 → float16 bits; NaN → 0x7E00")
_f16_down_finite = _down_intrinsic(_f16_bits, types.int16, None, "float32 (not NaN) → float16 bits")


@intrinsic
def _canonical_nan(typingctx: Any, y: Any) -> Any:
    """``y``, or the positive quiet NaN (0x7FC00000, 0x7FF8000000000000) when ``y`` is any NaN: the sign and
    payload of a NaN made by arithmetic depend on operand order, which compilers choose."""
    if y not in (types.float32, types.float64):
        return None
    width = 32 if y == types.float32 else 64
    bits = 0x7FC00000 if width == 32 else 0x7FF8000000000000

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        canonical = builder.bitcast(ir.Constant(ir.IntType(width), bits), args[0].type)
        nan = builder.fcmp_unordered("uno", args[0], args[0])
        return builder.select(nan, canonical, args[0])

    return y(y), codegen


def _up(v):  # storage scalar → compute scalar (typed dispatch below)
    raise NotImplementedError


def _down(y, like):  # compute scalar → storage scalar of the array ``like``
    raise NotImplementedError


def _down_finite(y, like):  # _down for a y known not to be NaN
    raise NotImplementedError


@overload(_up, inline="always")
def _up_ov(v):  # unannotated: numba compares its signature with the lambdas'
    if v == types.uint16:
        return lambda v: _bf16_up(v)
    if v == types.int16:
        return lambda v: _f16_up(v)
    if v == types.float32:
        return lambda v: np.float64(v)
    if v == types.float64:
        return lambda v: v
    return None


@overload(_down, inline="always")
def _down_ov(y, like):  # unannotated, as _up_ov
    dt = like.dtype
    if dt == types.uint16:
        return lambda y, like: _bf16_down(y)
    if dt == types.int16:
        return lambda y, like: _f16_down(y)
    if dt == types.float32:
        return lambda y, like: _canonical_nan(np.float32(y))
    if dt == types.float64:
        return lambda y, like: _canonical_nan(y)
    return None


@overload(_down_finite, inline="always")
def _down_finite_ov(y, like):  # unannotated, as _up_ov
    dt = like.dtype
    if dt == types.uint16:
        return lambda y, like: _bf16_down_finite(y)
    if dt == types.int16:
        return lambda y, like: _f16_down_finite(y)
    if dt == types.float32:
        return lambda y, like: np.float32(y)
    if dt == types.float64:
        return lambda y, like: y
    return None


# ---------------------------------------------------------------- prefetch (the kernels run at memory speed)


def _prefetch_intrinsic(rw: int, locality: int, doc: str) -> Any:
    def typer(typingctx: Any, arr: Any, idx: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            i8p = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            ptr = builder.bitcast(builder.gep(data, [args[1]]), i8p)
            builder.call(fn, [ptr, ir.Constant(_I32, rw), ir.Constant(_I32, locality), ir.Constant(_I32, 1)])
            return context.get_dummy_value()

        return types.none(arr, types.intp), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


#: ask for x's element idx (a row further on) to be brought into L2 (prefetcht1): a row's dot product then
#: finds it there, so reads overlap the writes of the row before (without: ~60 % of a copy's speed)
_prefetch_r = _prefetch_intrinsic(0, 2, "read prefetch into L2")
#: the same for the output row written next (prefetchw: the line is fetched for ownership ahead of the stores)
_prefetch_w = _prefetch_intrinsic(1, 3, "write prefetch")
#: elements per segment of an update loop: prefetches are issued per segment, outside the vectorized loop
_SEG = 256
#: how far ahead the prefetches reach (bytes of storage): rows ≥ this far ahead (reads), half that (writes)
_AHEAD = 8192


@njit(**_JIT)
def _ahead(row_bytes: int, n: int) -> tuple[int, int]:
    r = max(1, -(-_AHEAD // max(row_bytes, 1)))
    w = max(1, -(-(_AHEAD // 2) // max(row_bytes, 1)))
    return min(r, max(n - 1, 0)), min(w, max(n - 1, 0))


@njit(**_JIT_INLINE)
def _prefetch_seg(xn: Any, on: Any, j0: int, j1: int, per: int) -> None:
    for p in range(j0, j1, per):
        _prefetch_r(xn, p)
        _prefetch_w(on, p)


# ---------------------------------------------------------------- fixed-order reductions


@njit(**_JIT)
def _tree_finish(buf: Any, n: int) -> Any:
    """Levels 2.. of ``tree`` on buf[:n] (level 1 is fused into the caller's pass over the data)."""
    while n > 1:
        h = n // 2
        for k in range(h):
            buf[k] = buf[k] + buf[k + h]
        if n % 2:
            buf[h] = buf[n - 1]
        n = h + n % 2
    return buf[0]


@njit(**_JIT)
def _dot_tree(xi: Any, u: Any, buf: Any) -> Any:
    """tree_j(up(x_j) · u_j) over one row; buf holds ≥ ceil(d/2) compute values."""
    d = xi.shape[0]
    if d == 0:
        return u.dtype.type(0.0)
    h = d // 2
    for k in range(h):
        buf[k] = _up(xi[k]) * u[k] + _up(xi[k + h]) * u[k + h]
    if d % 2:
        buf[h] = _up(xi[d - 1]) * u[d - 1]
    return _tree_finish(buf, h + d % 2)


@njit(**_JIT)
def _sq_tree(xi: Any, buf: Any) -> Any:
    """tree_j(up(x_j) · up(x_j)) over one row (the squared row norm in the compute dtype)."""
    d = xi.shape[0]
    if d == 0:
        return buf.dtype.type(0.0)
    h = d // 2
    for k in range(h):
        p = _up(xi[k])
        q = _up(xi[k + h])
        buf[k] = p * p + q * q
    if d % 2:
        p = _up(xi[d - 1])
        buf[h] = p * p
    return _tree_finish(buf, h + d % 2)


# ---------------------------------------------------------------- elementwise segments (vectorized loops)
# Each takes slices starting at the segment and a count k: loops from 0 with a constant count (k = _SEG after
# inlining) vectorize cleanly; branches stay outside the loops. ``finite``: no NaN can occur, so the BF16 cast
# skips its NaN test (the same bits otherwise).


@njit(**_JIT_INLINE)
def _seg_axpy(xs: Any, alpha: Any, vs: Any, os: Any, finite: bool, k: int) -> None:
    """os_j = down(up(xs_j) − alpha · vs_j)."""
    if finite:
        for j in range(k):
            os[j] = _down_finite(_up(xs[j]) - alpha * vs[j], os)
    else:
        for j in range(k):
            os[j] = _down(_up(xs[j]) - alpha * vs[j], os)


@njit(**_JIT_INLINE)
def _seg_axpy_rowchk(xs: Any, alpha: Any, vs: Any, os: Any, finite: bool, ps: Any, nl: Any, k: int) -> None:
    """:func:`_seg_axpy` plus the rows checks: ps_j += yc_j · vs_j and nl_j += yc_j² (ps, nl: one segment of
    lanes; ps is summed by a tree at the end of each row); yc is the written value, upcast."""
    if finite:
        for j in range(k):
            o = _down_finite(_up(xs[j]) - alpha * vs[j], os)
            os[j] = o
            yc = _up(o)
            ps[j] += yc * vs[j]
            nl[j] += yc * yc
    else:
        for j in range(k):
            o = _down(_up(xs[j]) - alpha * vs[j], os)
            os[j] = o
            yc = _up(o)
            ps[j] += yc * vs[j]
            nl[j] += yc * yc


@njit(**_JIT_INLINE)
def _seg_axpy_colchk(
    xs: Any, alpha: Any, vs: Any, os: Any, finite: bool, ui: Any, av: Any, nl: Any, k: int
) -> None:
    """:func:`_seg_axpy` plus the cols checks: av_j += ui · yc_j and nl_j += yc_j²."""
    if finite:
        for j in range(k):
            o = _down_finite(_up(xs[j]) - alpha * vs[j], os)
            os[j] = o
            yc = _up(o)
            av[j] += ui * yc
            nl[j] += yc * yc
    else:
        for j in range(k):
            o = _down(_up(xs[j]) - alpha * vs[j], os)
            os[j] = o
            yc = _up(o)
            av[j] += ui * yc
            nl[j] += yc * yc


@njit(**_JIT_INLINE)
def _seg_scale(ms: Any, g: Any, os: Any, finite: bool, k: int) -> None:
    """os_j = down(ms_j · g) (the ``preserve`` rescale)."""
    if finite:
        for j in range(k):
            os[j] = _down_finite(ms[j] * g, os)
    else:
        for j in range(k):
            os[j] = _down(ms[j] * g, os)


@njit(**_JIT_INLINE)
def _seg_chk(os: Any, ui: Any, av: Any, nl: Any, k: int) -> None:
    """The cols checks of written values: av_j += ui · yc_j, nl_j += yc_j²."""
    for j in range(k):
        yc = _up(os[j])
        av[j] += ui * yc
        nl[j] += yc * yc


# ---------------------------------------------------------------- rows: x − (w·(x u)) uᵀ


@njit(**_JIT)
def _rows_kernel(x: Any, u: Any, w: Any, out: Any, acc: Any) -> None:
    n, d = x.shape
    buf = np.empty(d // 2 + 1, u.dtype)
    checks = acc.shape[0] > 0
    plan = np.zeros(_SEG, u.dtype)  # per-row lanes of yc·u
    lanes = np.zeros(_SEG, u.dtype)
    scale = w != 1.0
    before = 0.0
    after = 0.0
    nrm = 0.0
    per = max(1, 64 // x.itemsize)
    ra, wa = _ahead(d * x.itemsize, n)
    full = d - d % _SEG
    for i in range(n):
        xi = x[i]
        oi = out[i]
        s = _dot_tree(xi, u, buf)
        c = s * w if scale else s
        # c finite ⇒ the row holds no NaN/inf (either makes s non-finite) ⇒ no output NaN
        finite = np.isfinite(c)
        xn = x[min(i + ra, n - 1)]
        on = out[min(i + wa, n - 1)]
        if not checks:
            for j0 in range(0, full, _SEG):
                _prefetch_seg(xn, on, j0, j0 + _SEG, per)
                sl = slice(j0, j0 + _SEG)
                _seg_axpy(xi[sl], c, u[sl], oi[sl], finite, _SEG)
            sl = slice(full, d)
            _seg_axpy(xi[sl], c, u[sl], oi[sl], finite, d - full)
            continue
        for j0 in range(0, full, _SEG):
            _prefetch_seg(xn, on, j0, j0 + _SEG, per)
            sl = slice(j0, j0 + _SEG)
            _seg_axpy_rowchk(xi[sl], c, u[sl], oi[sl], finite, plan, lanes, _SEG)
        sl = slice(full, d)
        _seg_axpy_rowchk(xi[sl], c, u[sl], oi[sl], finite, plan, lanes, d - full)
        if i % _FLUSH == _FLUSH - 1:
            nrm += _flush(lanes)
        before += np.float64(s) * np.float64(s)
        t = np.float64(_tree_finish(plan, _SEG))
        plan[:] = 0.0
        after += t * t
    if checks:
        acc[0] += before
        acc[1] += after
        acc[2] += nrm + _flush(lanes)


#: rows after which the checks' compute-dtype lanes are added into float64 (and cleared): a float32 lane then
#: sums a bounded number of terms whatever the shape (a [400000, 1] matrix put 400000 into one lane)
_FLUSH = 16


@njit(**_JIT)
def _flush(lanes: Any) -> float:
    """Σ lanes in float64, in order; the lanes are cleared."""
    tot = 0.0
    for j in range(lanes.shape[0]):
        tot += np.float64(lanes[j])
        lanes[j] = 0.0
    return tot


@njit(**_JIT)
def _flush_vec(vec: Any, into: Any) -> None:
    for j in range(vec.shape[0]):
        into[j] += np.float64(vec[j])
        vec[j] = 0.0


# ---------------------------------------------------------------- cols pass 1: s = aᵀW by chunks


@njit(**_JIT)
def _coefs(x: Any, u: Any, c0: int, nc: int, norms: Any, a: Any, nbuf: Any) -> None:
    """a[k] for the chunk's rows: u (mode none, norms empty) or u / ‖W_i‖ with the norm written to norms."""
    if norms.shape[0] == 0:
        for k in range(nc):
            a[k] = u[c0 + k]
        return
    for k in range(nc):
        nk = np.sqrt(_sq_tree(x[c0 + k], nbuf))
        norms[c0 + k] = nk
        a[k] = u[c0 + k] / nk if nk != 0.0 else u.dtype.type(0.0)


@njit(**_JIT)
def _chunk_tree(x: Any, c0: int, nc: int, a: Any, buf: Any) -> None:
    """tree_i(up(W_ij) · a_i) over rows c0..c0+nc of x, for every column j; the result is left in buf[0]."""
    m = x.shape[1]
    h = nc // 2
    for k in range(h):
        xa = x[c0 + k]
        xb = x[c0 + k + h]
        ak = a[k]
        bk = a[k + h]
        bufk = buf[k]
        for j in range(m):
            bufk[j] = _up(xa[j]) * ak + _up(xb[j]) * bk
    if nc % 2:
        xa = x[c0 + nc - 1]
        ak = a[nc - 1]
        bufk = buf[h]
        for j in range(m):
            bufk[j] = _up(xa[j]) * ak
    n = h + nc % 2
    while n > 1:
        h = n // 2
        for k in range(h):
            bk = buf[k]
            bh = buf[k + h]
            for j in range(m):
                bk[j] = bk[j] + bh[j]
        if n % 2:
            buf[h, :] = buf[n - 1]
        n = h + n % 2


@njit(**_JIT)
def _cols_reduce_kernel(x: Any, u: Any, step: int, s: Any, norms: Any, parts: Any) -> None:
    """Chunks of x in order: s += p (s given) or parts[c] = p (parts given, for out-of-order helpers)."""
    n, m = x.shape
    buf = np.empty(((step + 1) // 2, m), u.dtype)
    nbuf = np.empty(m // 2 + 1, u.dtype)
    a = np.empty(step, u.dtype)
    into_s = parts.shape[0] == 0
    for c in range(-(-n // step)):
        c0 = c * step
        nc = min(step, n - c0)
        _coefs(x, u, c0, nc, norms, a, nbuf)
        _chunk_tree(x, c0, nc, a, buf)
        b0 = buf[0]
        if into_s:
            for j in range(m):
                s[j] = s[j] + b0[j]
        else:
            parts[c, :] = b0


@njit(**_JIT)
def _row_norms_kernel(x: Any, norms: Any) -> None:
    n, m = x.shape
    nbuf = np.empty(m // 2 + 1, norms.dtype)
    for i in range(n):
        norms[i] = np.sqrt(_sq_tree(x[i], nbuf))


# ---------------------------------------------------------------- cols pass 2: W − b cᵀ (and the rescale)


@njit(**_JIT)
def _cols_update_kernel(
    x: Any, b: Any, c: Any, target: Any, out: Any, u: Any, after: Any, norm: Any, unscale: bool
) -> None:
    """y_ij = W_ij − b_i c_j; with ``target`` (preserve) each row rescaled to norm target_i.

    Checks (``after`` [m] float64, ``norm`` [1] float64, both empty to skip): after_j += Σ_i u_i · yc_ij and
    norm += Σ yc², summed in the compute dtype over groups of _FLUSH rows, in row order, then as float64.
    """
    n, m = x.shape
    checks = after.shape[0] > 0
    avec = np.zeros(m if checks else 0, u.dtype)
    lanes = np.zeros(_SEG, u.dtype)
    keep = target.shape[0] > 0
    mrow = np.empty(m if keep else 0, u.dtype)
    qbuf = np.empty(m // 2 + 1 if keep else 0, u.dtype)
    cfin = True
    for j in range(m):
        cfin = cfin and np.isfinite(c[j])
    per = max(1, 64 // x.itemsize)
    ra, wa = _ahead(m * x.itemsize, n)
    full = m - m % _SEG
    h = m // 2
    nrm = 0.0
    for i in range(n):
        if checks and i % _FLUSH == 0 and i:
            _flush_vec(avec, after)
            nrm += _flush(lanes)
        xi = x[i]
        oi = out[i]
        bi = b[i]
        ui = u[i] if checks else bi
        xn = x[min(i + ra, n - 1)]
        on = out[min(i + wa, n - 1)]
        if keep:
            # M row and level 1 of its squared-norm tree (pairs k, k + h), then the rescaled output
            for k in range(h):
                p = _up(xi[k]) - bi * c[k]
                q = _up(xi[k + h]) - bi * c[k + h]
                mrow[k] = p
                mrow[k + h] = q
                qbuf[k] = p * p + q * q
            if m % 2:
                p = _up(xi[m - 1]) - bi * c[m - 1]
                mrow[m - 1] = p
                qbuf[h] = p * p
            qi = np.sqrt(_tree_finish(qbuf, h + m % 2)) if m else u.dtype.type(0.0)
            g = target[i] / qi if qi != 0.0 else u.dtype.type(1.0)
            if checks and unscale and g != 0.0:
                ui = ui / g  # weights the check by 1 / g_i: measures the rows before their rescale
            # q finite ⇒ M holds no NaN/inf; g finite too ⇒ M·g holds no NaN
            finite = np.isfinite(qi) and np.isfinite(g)
            for j0 in range(0, full, _SEG):
                _prefetch_seg(xn, on, j0, j0 + _SEG, per)
                sl = slice(j0, j0 + _SEG)
                _seg_scale(mrow[sl], g, oi[sl], finite, _SEG)
                if checks:
                    _seg_chk(oi[sl], ui, avec[sl], lanes, _SEG)
            sl = slice(full, m)
            _seg_scale(mrow[sl], g, oi[sl], finite, m - full)
            if checks:
                _seg_chk(oi[sl], ui, avec[sl], lanes, m - full)
            continue
        # b_i and every c_j finite ⇒ no NaN: a NaN or inf in W makes its column's c_j non-finite (or b_i, via
        # the row norm), and finite − finite·finite can overflow but not give NaN
        finite = cfin and np.isfinite(bi)
        for j0 in range(0, full, _SEG):
            _prefetch_seg(xn, on, j0, j0 + _SEG, per)
            sl = slice(j0, j0 + _SEG)
            if checks:
                _seg_axpy_colchk(xi[sl], bi, c[sl], oi[sl], finite, ui, avec[sl], lanes, _SEG)
            else:
                _seg_axpy(xi[sl], bi, c[sl], oi[sl], finite, _SEG)
        sl = slice(full, m)
        if checks:
            _seg_axpy_colchk(xi[sl], bi, c[sl], oi[sl], finite, ui, avec[sl], lanes, m - full)
        else:
            _seg_axpy(xi[sl], bi, c[sl], oi[sl], finite, m - full)
    if checks:
        _flush_vec(avec, after)
        norm[0] += nrm + _flush(lanes)


@njit(**_JIT)
def _coef_b(u: Any, norms: Any, b: Any) -> None:
    for i in range(u.shape[0]):
        b[i] = norms[i] * u[i]


@njit(**_JIT)
def _up_kernel(x: Any, y: Any) -> None:
    for i in range(x.shape[0]):
        y[i] = _up(x[i])


@njit(**_JIT)
def _down_kernel(y: Any, o: Any) -> None:
    for i in range(y.shape[0]):
        o[i] = _down(y[i], o)


# ---------------------------------------------------------------- the Python API

_EMPTY64 = np.empty(0, np.float64)


def compute_dtype(storage: Any) -> np.dtype:
    """float32 for 16-bit storage (BF16 bits as uint16, F16), float64 for F32/F64."""
    return np.dtype(np.float32 if np.dtype(storage).itemsize == 2 else np.float64)


def _kernel_view(a: np.ndarray) -> np.ndarray:
    """The array as the kernels take it: float16 as int16 bits (numba has no float16; the dtype picks the
    conversion)."""
    if a.dtype == np.float16:
        a = a.view(np.int16)
    elif a.dtype not in (np.uint16, np.float32, np.float64):
        raise TypeError(f"storage dtype {a.dtype}: expected uint16 (BF16 bits), float16, float32 or float64")
    return a


def _src(x: np.ndarray) -> np.ndarray:
    """An input block as the kernels take it, always read-only: numba compiles one specialization per array
    type, and read-only is part of the type. The executor's inputs are read-only maps, so a writable input
    (tests, small tensors) would compile every kernel a second time; a read-only view of it does not."""
    v = _kernel_view(x)
    if v.flags.writeable:
        v = v.view()
        v.flags.writeable = False
    return v


def upcast(x: np.ndarray) -> np.ndarray:
    """Storage values → the compute dtype, exactly (the kernels' conversion, for tests and small tensors)."""
    x = np.asarray(x)
    y = np.empty(x.shape, compute_dtype(x.dtype))
    _up_kernel(_src(np.ascontiguousarray(x).reshape(-1)), y.reshape(-1))
    return y


def downcast(y: np.ndarray, storage: Any) -> np.ndarray:
    """Compute-dtype values → ``storage`` (uint16 for BF16 bits, float16, float32, float64), rounding to
    nearest-even as the kernels do (every NaN → the dtype's positive quiet NaN)."""
    ct = compute_dtype(storage)
    y = np.ascontiguousarray(y, dtype=ct)
    o = np.empty(y.shape, np.dtype(storage))
    _down_kernel(y.reshape(-1), _kernel_view(o).reshape(-1))
    return o


def _vec(v: Any, dtype: np.dtype, n: int, what: str) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=dtype)
    if not v.flags.writeable:  # one array type per dtype (see _src)
        v = v.copy()
    if v.shape != (n,):
        raise ValueError(f"{what}: shape {v.shape}, expected ({n},)")
    return v


def _rows2d(x: np.ndarray) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D block, got shape {x.shape}")
    if not x.flags.c_contiguous:  # the kernels are compiled for C-contiguous arrays only (see _src)
        x = np.ascontiguousarray(x)
    return x


def _out_for(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.empty(x.shape, x.dtype)
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"out: {out.shape} {out.dtype}, expected {x.shape} {x.dtype}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out: must be a writable C-contiguous array")
    return out


def rows(
    x: np.ndarray,
    u: np.ndarray,
    out: np.ndarray | None = None,
    *,
    w: float = 1.0,
    acc: np.ndarray | None = None,
) -> np.ndarray:
    """``x − w (x u) uᵀ`` on a block of rows ``x [n, d]`` (storage dtype; BF16 as uint16 bits), into ``out``.

    Rows are independent: any blocking gives the same bytes. ``u``: the unit direction ``[d]`` (cast to the
    compute dtype unless it already is). ``out``: the output block (a slice of a buffer; allocated when None;
    may be ``x`` itself, must not partly overlap it). ``acc``: float64 ``[3]``, += (Σ s_i², Σ (yc_i·u)²,
    Σ yc²): hubkit's ``before``, ``after``, ``norm``. A bias ``[d]`` is ``rows(b[None], u, w=w)``.
    """
    x = _rows2d(x)
    out = _out_for(x, out)
    ct = compute_dtype(x.dtype)
    u = _vec(u, ct, x.shape[1], "u")
    _rows_kernel(_src(x), u, ct.type(w), _kernel_view(out), _EMPTY64 if acc is None else acc)
    return out


def new_sum(m: int, storage: Any) -> np.ndarray:
    """The running ``s [m]`` of one ``cols`` matrix, in the compute dtype of ``storage``: −0.0, the additive
    identity, so the first chunk's partial lands with its exact bits (as hubkit's ``s = p0``)."""
    return np.full(m, -0.0, compute_dtype(storage))


def cols_reduce(
    x: np.ndarray,
    u: np.ndarray,
    step: int,
    s: np.ndarray,
    *,
    norms: np.ndarray | None = None,
) -> np.ndarray:
    """Pass 1 of a ``cols`` op, one block of rows ``x [n, m]`` of a matrix: s += each chunk's tree(W a).

    The block starts at a chunk boundary (a multiple of ``step = chunk_rows(m)`` rows into the matrix) and
    blocks come in matrix order (else use :func:`cols_partials`). ``u``: the direction's entries for the rows.
    ``s``: from :func:`new_sum`, the same array for every block. ``norms``: for ``pre`` / ``preserve``, a
    compute-dtype ``[n]`` array that receives the rows' norms (then a = u / norm); None for ``none`` (a = u).
    Returns ``s``.
    """
    x = _rows2d(x)
    ct = compute_dtype(x.dtype)
    n, m = x.shape
    u = _vec(u, ct, n, "u")
    if s.dtype != ct or s.shape != (m,):
        raise ValueError(f"s: {s.shape} {s.dtype}, expected ({m},) {ct}")
    _cols_reduce_kernel(_src(x), u, step, s, _norms_arg(norms, n, ct), np.empty((0, m), ct))
    return s


def cols_partials(
    x: np.ndarray,
    u: np.ndarray,
    step: int,
    out: np.ndarray | None = None,
    *,
    norms: np.ndarray | None = None,
) -> np.ndarray:
    """Pass 1 for helpers that compute blocks out of order: the block's per-chunk partials
    ``[ceil(n/step), m]`` (hubkit's ``cols_partials`` values); :func:`add_partials` sums them in order."""
    x = _rows2d(x)
    ct = compute_dtype(x.dtype)
    n, m = x.shape
    u = _vec(u, ct, n, "u")
    if out is None:
        out = np.empty((-(-n // step), m), ct)
    _cols_reduce_kernel(_src(x), u, step, np.empty(0, ct), _norms_arg(norms, n, ct), out)
    return out


def add_partials(parts: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``s += parts[0]; s += parts[1]; …`` in order (hubkit's ``accumulate``), in place; returns ``s``."""
    for p in parts:
        np.add(s, p, out=s)
    return s


def _norms_arg(norms: np.ndarray | None, n: int, ct: np.dtype) -> np.ndarray:
    if norms is None:
        return np.empty(0, ct)
    if norms.dtype != ct or norms.shape[0] < n or not norms.flags.c_contiguous:
        raise ValueError(f"norms: {norms.shape} {norms.dtype}, expected a contiguous ({n},) {ct}")
    return norms


def row_norms(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """‖x_i‖ = sqrt(tree_j(x_ij²)) in the compute dtype for each row of ``x [n, m]`` (what ``cols_reduce``
    writes to ``norms``, for a caller that wants them alone)."""
    x = _rows2d(x)
    ct = compute_dtype(x.dtype)
    if out is None:
        out = np.empty(x.shape[0], ct)
    _row_norms_kernel(_src(x), out)
    return out


def coefficients(
    u: np.ndarray, s: np.ndarray, w: float, mode: str, norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(b [d], c [m])`` of a matrix's update ``W − b cᵀ``: c = w ⊗ s (s itself when w == 1), b = u
    (``none``) or norms ⊗ u (``pre``, ``preserve``), all in s's dtype."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    ct = s.dtype
    c = s if w == 1.0 else s * ct.type(w)
    u = np.ascontiguousarray(u, dtype=ct)
    if mode == "none":
        return u, c
    if norms is None:
        raise ValueError(f"mode {mode}: needs the row norms (cols_reduce's norms)")
    b = np.empty_like(u)
    _coef_b(u, np.ascontiguousarray(norms, dtype=ct), b)
    return b, c


def cols_update(
    x: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    out: np.ndarray | None = None,
    *,
    target: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    after: np.ndarray | None = None,
    norm: np.ndarray | None = None,
    unscale: bool = False,
) -> np.ndarray:
    """Pass 2 of a ``cols`` op on a block of rows: ``y = W − b cᵀ``, rounded to the storage dtype, into out.

    Rows are independent: any blocking gives the same bytes. ``b``: the block's entries of the row
    coefficients, ``c``: the whole ``[m]`` vector (:func:`coefficients`). ``target``: the block's row norms
    for ``preserve`` (each row rescaled to its norm), else None. Checks, when ``after`` (float64 ``[m]``) and
    ``norm`` (float64 ``[1]``) are given: after_j += Σ_i weights_i · yc_ij and norm += Σ yc², yc the written
    values. ``weights``: the block's u gives hubkit's check (uᵀW'); u / norms measures uᵀŴ' (``pre``); with
    ``unscale`` (``preserve``) each weight is divided by the row's rescale factor, so u / norms measures the
    pre-rescale uᵀM (≈ 0 when w = 1: a rescaled row no longer is orthogonal to u).
    """
    x = _rows2d(x)
    out = _out_for(x, out)
    ct = compute_dtype(x.dtype)
    n, m = x.shape
    b = _vec(b, ct, n, "b")
    c = _vec(c, ct, m, "c")
    tg = np.empty(0, ct) if target is None else _vec(target, ct, n, "target")
    if after is None:
        cw, av, nv = np.empty(0, ct), _EMPTY64, _EMPTY64
    else:
        if norm is None or weights is None:
            raise ValueError("after: needs weights and norm too")
        cw, av, nv = _vec(weights, ct, n, "weights"), after, norm
    _cols_update_kernel(_src(x), b, c, tg, _kernel_view(out), cw, av, nv, unscale)
    return out


def cols(
    mat: np.ndarray,
    u: np.ndarray,
    *,
    w: float = 1.0,
    mode: str = "none",
    out: np.ndarray | None = None,
    block_rows: int | None = None,
    acc: np.ndarray | None = None,
) -> np.ndarray:
    """A whole ``cols`` op on one matrix ``[d, m]``: both passes, block by block, as an executor would call
    them (``block_rows``, a multiple of ``chunk_rows(m)``, changes the blocking, never the bytes).

    ``acc``: float64 ``[3]`` += (Σ s_j², Σ_j (Σ_i u_i yc_ij)², Σ yc²), with s = aᵀW (uᵀW for ``none``,
    uᵀŴ otherwise): hubkit's ``before``, ``after``, ``norm`` for ``none``.
    """
    mat = _rows2d(mat)
    d, m = mat.shape
    ct = compute_dtype(mat.dtype)
    u = _vec(u, ct, d, "u")
    step = chunk_rows(m)
    per = block_rows or step * 16
    if per % step:
        raise ValueError(f"block_rows {per}: not a multiple of the chunk ({step} rows)")
    out = _out_for(mat, out)
    s = new_sum(m, mat.dtype)
    norms = np.empty(d, ct) if mode != "none" else None
    for a in range(0, d, per):
        cols_reduce(
            mat[a : a + per], u[a : a + per], step, s, norms=None if norms is None else norms[a : a + per]
        )
    b, c = coefficients(u, s, w, mode, norms)
    after = np.zeros(m) if acc is not None else None
    nrm = np.zeros(1) if acc is not None else None
    for a in range(0, d, per):
        sl = slice(a, a + per)
        target = norms[sl] if mode == "preserve" and norms is not None else None
        cols_update(mat[sl], b[sl], c, out[sl], target=target, weights=u[sl], after=after, norm=nrm)
    if acc is not None and after is not None and nrm is not None:
        s64 = s.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            acc[0] += math.fsum((s64 * s64).tolist())
            acc[1] += math.fsum((after * after).tolist())
        acc[2] += nrm[0]
    return out


def compiled_here() -> tuple[int, str | None]:
    """``(n, cache)``: how many kernel specializations this process compiled (numba cache misses) rather than
    loaded, and where numba caches them; what a first run on a machine tells its user."""
    from numba.core.registry import CPUDispatcher

    n, where = 0, None
    for obj in list(globals().values()):
        if isinstance(obj, CPUDispatcher):
            stats = obj.stats
            n += sum(stats.cache_misses.values())
            where = where or stats.cache_path
    return n, where


def on_first_compile(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` once, when numba starts compiling a kernel in this process (a cache miss: the first
    run on a machine, seconds to tens of seconds), so that the wait is explained while it happens. Returns the
    call that stops listening."""
    from numba.core import event

    fired = threading.Event()

    class _First(event.Listener):
        def on_start(self, ev: Any) -> None:
            dispatcher = (ev.data or {}).get("dispatcher")
            if fired.is_set() or getattr(getattr(dispatcher, "py_func", None), "__module__", None) != __name__:
                return  # numba compiling another library's code, or already said
            fired.set()
            try:
                callback()
            except Exception:  # noqa: BLE001 - inside numba's compile: a failed message must not fail the kernel
                pass

        def on_end(self, ev: Any) -> None:
            pass

    listener = _First()
    event.register("numba:compile", listener)
    return lambda: event.unregister("numba:compile", listener)
