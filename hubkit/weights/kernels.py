"""The edit arithmetic, written once against a small array vocabulary (:class:`Kernels`) that numpy (CPU)
and torch (CUDA) both implement, with fixed-order reductions so every library and device gives the same bytes.

16-bit tensors are computed in float32 (exact upcast), 32/64-bit ones in float64; the cast back rounds to
nearest-even; r is normalized with an exactly rounded norm (``math.fsum``)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from hubkit.errors import HubkitError
from hubkit.formats.safetensors_io import NP_DTYPES, bf16_to_float32, torch_dtype

if TYPE_CHECKING:
    import torch


#: elements per compute chunk. Part of the output's definition (the cross-chunk summation order of ``cols``
#: ops depends on it), so it is a constant, the same on every device.
CHUNK_ELEMS = 1 << 16
#: compute chunks per block: on CPU 16 (1M elements: few enough Python-level calls that the streams' threads
#: don't queue for the GIL; 2 was 30 % slower on a 16-core machine), on CUDA 64 (4M elements, enough to keep
#: the device busy); the bytes are the same as one chunk at a time
CPU_GROUP = 16
CUDA_GROUP = 64


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
    where = "cpu"  # the device the arithmetic runs on
    group = 1  # compute chunks per block: few on CPU (cache-sized), many on CUDA (to fill the device)

    def up(self, x: Any) -> Any:  # storage → compute dtype (exact)
        raise NotImplementedError

    def down(self, y: Any) -> Any:  # compute → storage dtype, round to nearest-even
        raise NotImplementedError

    def cat(self, parts: list[Any], axis: int) -> Any:
        raise NotImplementedError

    def matvec(self, a: Any, b: Any) -> Any:  # a @ b with a vector, for the checks only
        return a @ b

    def sqrt(self, x: Any) -> Any:  # correctly rounded in IEEE, so the same on every library and device
        return x.sqrt()

    def select(self, cond: Any, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def load(self, x: Any) -> Any:  # a block of the memory-mapped tensor, onto the compute device
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

        self.np, self.code, self.group = np, code, CPU_GROUP
        self.storage = NP_DTYPES[code]
        self.r = r64.astype(np.float32 if code in ("BF16", "F16") else np.float64)

    def up(self, x: Any) -> Any:
        return bf16_to_float32(x) if self.code == "BF16" else x.astype(self.r.dtype)

    def down(self, y: Any) -> Any:
        np = self.np
        if self.code != "BF16":
            with np.errstate(over="ignore"):  # beyond the storage range rounds to ±inf, as in torch
                return y.astype(self.storage)
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

    def matvec(self, a: Any, b: Any) -> Any:
        # einsum's own loop: numpy's BLAS would start a thread per core for each block (on a 16-core machine
        # that made a CPU run 3x slower, 278 s of CPU time spinning)
        return self.np.einsum("ij,j->i" if a.ndim == 2 else "i,ij->j", a, b)

    def as_bytes(self, y: Any) -> memoryview:
        return memoryview(self.np.ascontiguousarray(y)).cast("B")



class TorchKernels(Kernels):
    """torch arithmetic on ``device`` (CUDA, or the CPU for :func:`orthogonalize` on tensors)."""

    def __init__(self, code: str, r64: Any, device: str = "cpu", group: int | None = None):
        import torch

        self.torch = torch
        self.storage, self.device, self.where = torch_dtype(code), device, device
        self.group = group or CPU_GROUP
        self.r = torch.from_numpy(r64).to(compute_dtype(code)).to(device)

    def up(self, x: Any) -> Any:
        return x.to(self.r.dtype)

    def down(self, y: Any) -> Any:
        return y.to(self.storage)

    def cat(self, parts: list[Any], axis: int) -> Any:
        return self.torch.cat(parts, axis)

    def select(self, cond: Any, a: Any, b: Any) -> Any:
        return self.torch.where(cond, a, b).to(self.r.dtype)

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
    gives the same bytes. (``w = 1`` skips the multiply: the seed recipe's bytes, as ever.)"""
    xc = k.up(x)
    s = tree_sum(xc * k.r, 1, k)
    y = k.down(xc - (s if w == 1.0 else s * w)[:, None] * k.r)
    if acc is not None:
        yc = k.up(y)
        acc.before = acc.before + (s * s).sum()
        acc.after = acc.after + (k.matvec(yc, k.r) ** 2).sum()
        acc.norm = acc.norm + (yc * yc).sum()
    return y


def row_norms(x: Any, k: Kernels) -> Any:
    """‖W_i‖ of each row of a block ``[n, m]`` (fixed-order sum, correctly rounded sqrt); a zero row's norm is
    replaced by 1, so dividing by it keeps the row zero (heretic's ``F.normalize`` does the same)."""
    xc = k.up(x)
    n = k.sqrt(tree_sum(xc * xc, 1, k))
    return k.select(n == 0, 1.0, n)


def cols_partials(x: Any, r_rows: Any, step: int, k: Kernels, n_rows: Any = None) -> Any:
    """Per-chunk partial sums of rᵀW over consecutive ``step``-row chunks of ``x [n, m]``: ``[ceil(n/step), m]``.

    With ``n_rows`` (the rows' norms: the ``pre`` / ``preserve`` modes) the sums are of rᵀŴ, Ŵ = W / n row-wise.
    A block holding several chunks (the GPU path) gives bit-for-bit the partials of one chunk at a time.
    """
    n, m = x.shape
    xc = k.up(x)
    if n_rows is not None:
        xc = xc / n_rows[:, None]
    prod = xc * r_rows[:, None]
    full = n - n % step
    parts = []
    if full:
        parts.append(tree_sum(prod[:full].reshape(full // step, step, m), 1, k))
    if n > full:
        parts.append(tree_sum(prod[full:], 0, k)[None])
    return parts[0] if len(parts) == 1 else k.cat(parts, 0)


def cols_block(x: Any, r_rows: Any, s: Any, k: Kernels, acc: Acc | None = None, w: float = 1.0,
               norm: str = "none", n_rows: Any = None) -> Any:
    """A block of rows of a ``[d, in]`` writer, rewritten and cast back to the storage dtype:

    * ``none``: ``W − w r s`` with ``s = rᵀW`` of the whole matrix;
    * ``pre``: ``W − w (n ⊙ r) s`` with ``s = rᵀŴ``, n the rows' norms;
    * ``preserve``: ``M = Ŵ − w r s``, each row of M rescaled to its original norm ``n_i`` (exactly).
    """
    xc = k.up(x)
    coef = r_rows if w == 1.0 else r_rows * w
    if norm == "none":
        yc = xc - coef[:, None] * s[None, :]
    elif norm == "pre":
        yc = xc - (n_rows * coef)[:, None] * s[None, :]
    else:
        mat = xc / n_rows[:, None] - coef[:, None] * s[None, :]
        mn = k.sqrt(tree_sum(mat * mat, 1, k))
        yc = mat * (n_rows / k.select(mn == 0, 1.0, mn))[:, None]
    y = k.down(yc)
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


# ====================================================================== streaming executor

