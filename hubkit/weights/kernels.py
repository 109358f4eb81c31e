"""The edit arithmetic, written once against a small array vocabulary (:class:`Kernels`) that numpy and torch
both implement, with fixed-order reductions so every library gives the same bytes.

16-bit tensors are computed in float32 (exact upcast), 32/64-bit ones in float64; the cast back rounds to
nearest-even; r is normalized with an exactly rounded norm (``math.fsum``). These whole-array passes are the
reference: the executor's CPU path runs :mod:`hubkit.weights.fused` (numba), which gives the same bytes at
memory speed, and falls back to them when numba is missing.

The order, which defines the bytes (every step one IEEE op in the compute dtype; ``tree`` is :func:`tree_sum`,
w is rounded to the compute dtype first, sqrt is correctly rounded):

* ``rows`` (x [n, d], unit r [d]; the embedding, an untied lm_head, biases): s_i = tree_j(x_ij r_j),
  c_i = s_i w (skipped when w = 1), y_ij = x_ij − c_i r_j.
* ``cols`` (W [d, m]; attention out, MLP down): s_j = the in-order sum over chunks of ``chunk_rows(m)`` rows of
  tree_i(W_ij a_i), c_j = s_j w (skipped when w = 1), y_ij = W_ij − b_i c_j, with

  - norm ``none``: a = b = r;
  - ``pre``: n_i = sqrt(tree_j W_ij²), a_i = r_i / n_i (0 when n_i = 0), b_i = n_i r_i;
  - ``preserve``: as ``pre``, then M = W − b cᵀ (not rounded), q_i = sqrt(tree_j M_ij²), g_i = n_i / q_i
    (1 when q_i = 0), y = M g: Ŵ − w r rᵀŴ with each row put back at its norm n_i (M = n ⊙ that), and a zero
    row stays zero.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from hubkit.errors import HubkitError
from hubkit.formats.safetensors_io import NP_DTYPES, bf16_to_float32, torch_dtype

if TYPE_CHECKING:
    import torch


#: each storage dtype's positive quiet NaN, as (unsigned view, bits): every path writes this one for any NaN
CANONICAL_NAN = {"BF16": ("u2", 0x7FC0), "F16": ("u2", 0x7E00), "F32": ("u4", 0x7FC00000),
                 "F64": ("u8", 0x7FF8000000000000)}
#: elements per compute chunk. Part of the output's definition (the cross-chunk summation order of ``cols``
#: ops depends on it), so it is a constant, the same on every device.
CHUNK_ELEMS = 1 << 16
#: compute chunks per block (1M elements: few enough Python-level calls that the streams' threads don't queue
#: for the GIL; 2 was 30 % slower on a 16-core machine); the bytes are the same as one chunk at a time
CPU_GROUP = 16


def compute_dtype(code: str) -> torch.dtype:
    """float32 for 16-bit storage (exact upcast), float64 for 32/64-bit storage."""
    import torch

    return torch.float32 if code in ("BF16", "F16") else torch.float64


class Kernels:
    """The few array operations the math needs beyond ``+ - * @``, slicing and ``reshape`` (which numpy arrays
    and torch tensors share), for one storage dtype on one array library; ``r`` is the unit direction in the
    compute dtype there. The math below is written once against this, so both libraries give the same bytes.
    """

    r: Any

    def up(self, x: Any) -> Any:  # storage → compute dtype (exact)
        raise NotImplementedError

    def down(self, y: Any) -> Any:  # compute → storage dtype, round to nearest-even
        raise NotImplementedError

    def cat(self, parts: list[Any], axis: int) -> Any:
        raise NotImplementedError

    def matvec(self, a: Any, b: Any) -> Any:  # a @ b with a vector, for the checks only
        return a @ b

    def sqrt(self, x: Any) -> Any:  # must be correctly rounded (IEEE), so the same on every library
        raise NotImplementedError

    def select(self, cond: Any, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def scalar(self, v: float) -> Any:  # v rounded to the compute dtype
        raise NotImplementedError

    def load(self, x: Any) -> Any:  # a block of the memory-mapped tensor, ready to compute on
        return x

    def as_bytes(self, y: Any) -> memoryview:
        return memoryview(y).cast("B")

    def mode(self) -> Any:
        return nullcontext()


class NumpyKernels(Kernels):
    """CPU arithmetic with numpy, so a CPU run never imports torch (seconds of a run on a GPU machine's CUDA
    build). bfloat16, which numpy lacks, is kept as its uint16 bits: the upcast is a shift, the downcast the
    integer round-to-nearest-even of torch's conversions (NaN becomes 0x7FC0, the canonical quiet NaN)."""

    def __init__(self, code: str, r64: Any):
        import numpy as np

        self.np, self.code = np, code
        self.storage = NP_DTYPES[code]
        self.r = r64.astype(np.float32 if code in ("BF16", "F16") else np.float64)

    def up(self, x: Any) -> Any:
        return bf16_to_float32(x) if self.code == "BF16" else x.astype(self.r.dtype)

    def down(self, y: Any) -> Any:
        np = self.np
        if self.code != "BF16":
            with np.errstate(over="ignore"):  # beyond the storage range rounds to ±inf, as in torch
                out = y.astype(self.storage)
            nan = np.isnan(y)
            if nan.any():  # the arithmetic's NaN sign/payload depends on operand order: one NaN for all paths
                out.view(CANONICAL_NAN[self.code][0])[nan] = CANONICAL_NAN[self.code][1]
            return out
        bits = y.view(np.uint32)
        t = bits >> 16
        t &= 1  # the lowest kept bit: ties go to even
        t += 0x7FFF
        t += bits
        t >>= 16
        out = t.astype(np.uint16)
        nan = np.isnan(y)
        if nan.any():
            out[nan] = 0x7FC0
        return out

    def cat(self, parts: list[Any], axis: int) -> Any:
        return self.np.concatenate(parts, axis)

    def sqrt(self, x: Any) -> Any:
        return self.np.sqrt(x)

    def select(self, cond: Any, a: Any, b: Any) -> Any:
        return self.np.where(cond, a, b).astype(self.r.dtype)

    def scalar(self, v: float) -> Any:
        return self.r.dtype.type(v)

    def matvec(self, a: Any, b: Any) -> Any:
        # einsum's own loop: numpy's BLAS would start a thread per core for each block (on a 16-core machine
        # that made a CPU run 3x slower, 278 s of CPU time spinning)
        return self.np.einsum("ij,j->i" if a.ndim == 2 else "i,ij->j", a, b)

    def as_bytes(self, y: Any) -> memoryview:
        return memoryview(self.np.ascontiguousarray(y)).cast("B")


class TorchKernels(Kernels):
    """torch arithmetic on ``device`` (the CPU, or the tensor's device for :func:`orthogonalize`)."""

    def __init__(self, code: str, r64: Any, device: str = "cpu"):
        import torch

        self.torch = torch
        self.storage, self.device = torch_dtype(code), device
        self.r = torch.from_numpy(r64).to(compute_dtype(code)).to(device)

    def up(self, x: Any) -> Any:
        return x.to(self.r.dtype)

    def down(self, y: Any) -> Any:
        # torch's CPU cast keeps a NaN's sign and payload (BF16 0xFFFF); the fill writes the positive quiet NaN,
        # as numpy's and the fused kernels' cast (no host sync: a device tensor stays on its device)
        return y.to(self.storage).masked_fill_(y.isnan(), float("nan"))

    def cat(self, parts: list[Any], axis: int) -> Any:
        return self.torch.cat(parts, axis)

    def sqrt(self, x: Any) -> Any:
        # torch's CPU sqrt is not correctly rounded (torch 2.13: 0.6-0.7 % of float32 and float64 inputs are one
        # ulp off, a vectorized approximation); numpy's is, as is CUDA's default sqrt. The norm vectors are short.
        if x.device.type != "cpu":
            return x.sqrt()
        import numpy as np

        return self.torch.from_numpy(np.sqrt(x.contiguous().numpy()))

    def select(self, cond: Any, a: Any, b: Any) -> Any:
        return self.torch.where(cond, a, b).to(self.r.dtype)

    def scalar(self, v: float) -> Any:
        return self.torch.tensor(v, dtype=self.r.dtype, device=self.r.device)

    def load(self, x: Any) -> Any:
        return x.to(self.device)

    def as_bytes(self, y: Any) -> memoryview:
        y = y.detach().to("cpu").contiguous()
        return memoryview(y.view(self.torch.uint8).numpy()).cast("B")

    def mode(self) -> Any:
        return self.torch.inference_mode()


def tree_sum(x: Any, dim: int, k: Kernels) -> Any:
    """Sum along ``dim`` by repeated halving.

    Each step is one elementwise add, so the summation order is fixed by the shape alone and the result is
    bit-identical on every IEEE device and array library (unlike BLAS or a library's sum, whose order depends
    on the hardware).
    """
    n = x.shape[dim]
    if n == 0:
        return x.sum(dim)
    lead = (slice(None),) * dim
    while n > 1:
        h = n // 2
        y = x[(*lead, slice(0, h))] + x[(*lead, slice(h, 2 * h))]
        if n % 2:
            y = k.cat([y, x[(*lead, slice(2 * h, n))]], dim)
        x, n = y, y.shape[dim]
    return x[(*lead, 0)]


class Acc:
    """Orthogonality measures of one tensor, summed on its device (no sync per chunk)."""

    def __init__(self) -> None:
        self.before: Any = 0.0  # Σ (rᵀw)² over the input
        self.after: Any = 0.0  # Σ (rᵀw)² over the rounded output
        self.norm: Any = 0.0  # ‖W‖² of the rounded output

    def add(self, other: Acc) -> None:
        self.before, self.after, self.norm = (
            self.before + other.before,
            self.after + other.after,
            self.norm + other.norm,
        )

    def ratios(self) -> tuple[float, float]:
        norm = float(self.norm)
        denom = math.sqrt(norm) if norm > 0 else 1.0
        return math.sqrt(float(self.before)) / denom, math.sqrt(float(self.after)) / denom


def rows_block(x: Any, k: Kernels, acc: Acc | None = None, w: float = 1.0) -> Any:
    """``x − w (x r) rᵀ`` for rows ``x [n, d]`` (storage dtype); each row is independent, so any blocking
    gives the same bytes. w multiplies the coefficient after the reduction (``w = 1`` skips the multiply: the
    seed recipe's bytes, as ever)."""
    xc = k.up(x)
    s = tree_sum(xc * k.r, 1, k)
    c = s if w == 1.0 else s * k.scalar(w)
    y = k.down(xc - c[:, None] * k.r)
    if acc is not None:
        yc = k.up(y)
        acc.before = acc.before + (s * s).sum()
        acc.after = acc.after + (k.matvec(yc, k.r) ** 2).sum()
        acc.norm = acc.norm + (yc * yc).sum()
    return y


def row_norms(x: Any, k: Kernels) -> Any:
    """n_i = ‖W_i‖ of each row of a block ``[n, m]``: sqrt(tree_j W_ij²), correctly rounded sqrt (0 for a zero
    row)."""
    xc = k.up(x)
    return k.sqrt(tree_sum(xc * xc, 1, k))


def normed_coefficients(r_rows: Any, n_rows: Any, k: Kernels) -> tuple[Any, Any]:
    """``(a, b)`` of the ``pre`` / ``preserve`` modes for the rows' norms n: a_i = r_i / n_i (0 where n_i = 0:
    a zero row adds nothing to s), the weights of the reduction s = aᵀW = rᵀŴ; b_i = n_i r_i, the rows'
    coefficients of the update W − b cᵀ."""
    zero = n_rows == 0
    a = k.select(zero, 0.0, r_rows / k.select(zero, 1.0, n_rows))
    return a, n_rows * r_rows


def cols_partials(x: Any, a_rows: Any, step: int, k: Kernels) -> Any:
    """Per-chunk partial sums of aᵀW over consecutive ``step``-row chunks of ``x [n, m]``: ``[ceil(n/step), m]``.

    ``a_rows``: the rows' weights (r, or r / n for the row-norm modes: :func:`normed_coefficients`). A block
    holding several chunks gives bit-for-bit the partials of one chunk at a time.
    """
    n, m = x.shape
    prod = k.up(x) * a_rows[:, None]
    full = n - n % step
    parts = []
    if full:
        parts.append(tree_sum(prod[:full].reshape(full // step, step, m), 1, k))
    if n > full:
        parts.append(tree_sum(prod[full:], 0, k)[None])
    return parts[0] if len(parts) == 1 else k.cat(parts, 0)


def cols_coefficient(s: Any, w: float, k: Kernels) -> Any:
    """c = s w, the columns' coefficients of the update (s itself when w = 1)."""
    return s if w == 1.0 else s * k.scalar(w)


def cols_block(x: Any, r_rows: Any, b_rows: Any, c: Any, k: Kernels, acc: Acc | None = None,
               target: Any = None) -> Any:
    """A block of rows of a ``[d, m]`` writer, rewritten and cast back to the storage dtype: ``W − b cᵀ``
    (b = r for norm ``none``, n r for ``pre``); with ``target`` (the rows' norms n: ``preserve``) each row of
    M = W − b cᵀ is rescaled to its norm n_i. ``acc`` gets ‖rᵀW'‖ (``r_rows``: the rows' entries of r) and
    ‖W'‖ of the rounded output."""
    mat = k.up(x) - b_rows[:, None] * c[None, :]
    if target is not None:
        q = k.sqrt(tree_sum(mat * mat, 1, k))
        zero = q == 0
        mat = mat * k.select(zero, 1.0, target / k.select(zero, 1.0, q))[:, None]
    y = k.down(mat)
    if acc is not None:
        yc = k.up(y)
        acc.after = acc.after + k.matvec(r_rows, yc)  # a vector [m], squared when the matrix is done
        acc.norm = acc.norm + (yc * yc).sum()
    return y


def chunk_rows(width: int) -> int:
    return max(1, CHUNK_ELEMS // max(width, 1))


def accumulate(partials: Any, s: Any) -> Any:
    """Add chunk partials one after another, in order: the cross-chunk part of the fixed summation order.
    (Nothing is updated in place, so ``s`` may start as the first partial itself.)"""
    for p in partials:
        s = p if s is None else s + p
    assert s is not None
    return s


def unit_vector(r: Any) -> Any:
    """``r / ‖r‖`` in float64 numpy, the norm an exactly rounded sum (``math.fsum``): the same on every machine
    and library, whatever their reduction order. ``r``: a numpy array or a torch tensor, any float dtype."""
    import numpy as np

    if hasattr(r, "detach"):
        r = r.detach().to("cpu").double().numpy()
    r64 = np.asarray(r, dtype=np.float64).reshape(-1)
    norm = math.sqrt(math.fsum((r64 * r64).tolist())) if np.isfinite(r64).all() else math.nan
    if not math.isfinite(norm) or norm == 0.0:
        raise HubkitError("direction: zero or non-finite vector, can't orthogonalize against it")
    return r64 / norm


