"""hubkit.weights.fused (numba) against hubkit.weights.kernels (numpy): the same bytes for every storage dtype,
norm mode and weight, on inputs that reach the corners; its values against the float64 formulas; and the
executor's fallback to the numpy kernels when numba can't be imported (the same shard bytes).

The first run on a machine compiles the kernels (~20 s for the four dtypes); later runs load them from the
cache. ``FUSED_EXAMPLES=500 pytest tests/test_fused.py`` searches deeper (25 examples per property by default).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubkit.weights import executor as ab
from hubkit.weights import fused
from hubkit.weights import kernels as kn
from hubkit.weights import plan as wplan
from tests import tiny_models as tm
from tests.helpers import without_numba

CODES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "F64": np.float64}
EPS = {"BF16": 2.0**-8, "F16": 2.0**-10, "F32": 2.0**-23, "F64": 2.0**-52}  # storage: hubkit's thresholds
CEPS = {"BF16": 2.0**-24, "F16": 2.0**-24, "F32": 2.0**-53, "F64": 2.0**-53}  # compute dtype
TINY = {"BF16": 2.0**-133, "F16": 2.0**-24, "F32": 2.0**-149, "F64": 2.0**-1074}  # storage subnormal spacing
KINDS = ("normal", "wide", "special", "zero_rows", "tiny")
MODES = ("none", "pre", "preserve")
QUICK = settings(
    max_examples=int(os.environ.get("FUSED_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ---------------------------------------------------------------- inputs and the reference


def to_storage(v: np.ndarray, code: str) -> np.ndarray:
    """float64 values → the storage array (BF16 as its bits, rounded as hubkit rounds)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if code == "BF16":
            return kn.NumpyKernels("BF16", np.ones(1)).down(v.astype(np.float32))
        return v.astype(CODES[code])


def values(rng: np.random.Generator, shape: tuple[int, int], code: str, kind: str) -> np.ndarray:
    """Storage arrays that reach the corners: ties come from the arithmetic (millions of roundings), the rest
    from ``kind``: wide (every binade incl. subnormals and overflow), special (±0, ±inf, NaN, extremes),
    zero rows (+0 and −0), tiny (results in the subnormal range)."""
    finfo = np.finfo(np.float32 if code == "BF16" else CODES[code])
    v = rng.standard_normal(shape) * 0.02
    if kind == "wide":
        lo, hi = math.log2(float(finfo.smallest_subnormal)), math.log2(float(finfo.max))
        with np.errstate(over="ignore"):  # the top binade's upper end overflows: inf, on purpose
            v = np.sign(rng.standard_normal(shape)) * np.exp2(rng.uniform(lo, hi + 0.99, shape))
    elif kind == "special":
        specials = [0.0, -0.0, np.inf, -np.inf, np.nan, float(finfo.max), -float(finfo.max)]
        specials += [float(finfo.smallest_subnormal), float(finfo.tiny)]
        mask = rng.random(shape) < 0.02
        v[mask] = rng.choice(specials, int(mask.sum()))
    elif kind == "zero_rows" and shape[0]:
        v[rng.random(shape[0]) < 0.3] = 0.0
        v[rng.random(shape[0]) < 0.2] = -0.0
    elif kind == "tiny":
        v *= float(finfo.tiny) * 64
    return to_storage(v, code)


def direction(rng: np.random.Generator, d: int, sparse: bool = False) -> np.ndarray:
    r = rng.standard_normal(d)
    if sparse:  # exact zeros: 0·inf = NaN paths
        r[rng.random(d) < 0.5] = 0.0
        r[0] = 1.0
    return kn.unit_vector(r)


def ref_rows(x: np.ndarray, code: str, r64: np.ndarray, w: float = 1.0, group: int = 16) -> tuple:
    """The numpy kernels' rows op on a whole ``[n, d]`` array, block by block as the executor runs them."""
    k = kn.NumpyKernels(code, r64)
    rows = kn.chunk_rows(x.shape[1]) * group
    acc, out = kn.Acc(), []
    with np.errstate(all="ignore"):
        for a in range(0, x.shape[0], rows):
            sub = kn.Acc()
            out.append(kn.rows_block(x[a : a + rows], k, sub, w))
            acc.add(sub)
    return (np.concatenate(out) if out else x.copy()), acc


def ref_cols(x: np.ndarray, code: str, r64: np.ndarray, w: float = 1.0, mode: str = "none",
             group: int = 16) -> tuple:
    """The numpy kernels' cols op on one ``[d, m]`` matrix, both passes as the executor runs them."""
    k = kn.NumpyKernels(code, r64)
    d, m = x.shape
    step = kn.chunk_rows(m)
    rows = step * group
    s, coef, norms = None, [], []
    acc, out = kn.Acc(), []
    with np.errstate(all="ignore"):
        for a in range(0, d, rows):
            xb, r = x[a : a + rows], k.r[a : a + rows]
            n = kn.row_norms(xb, k) if mode != "none" else None
            ab_, b = kn.normed_coefficients(r, n, k) if n is not None else (r, r)
            s = kn.accumulate(kn.cols_partials(xb, ab_, step, k), s)
            coef.append(b)
            norms.append(n)
        c = kn.cols_coefficient(s, w, k)
        acc.before = (s * s).sum()
        after = 0.0
        for i, a in enumerate(range(0, d, rows)):
            sub = kn.Acc()
            out.append(kn.cols_block(x[a : a + rows], k.r[a : a + rows], coef[i], c, k, sub,
                                     norms[i] if mode == "preserve" else None))
            after = after + sub.after
            acc.norm = acc.norm + sub.norm
        acc.after = (after * after).sum()
    return np.concatenate(out), acc


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


CANONICAL = {np.dtype(np.uint16): 0x7FC0, np.dtype(np.float16): 0x7E00, np.dtype(np.float32): 0x7FC00000,
             np.dtype(np.float64): 0x7FF8000000000000}  # each storage dtype's positive quiet NaN, from IEEE 754


def canonical_nans(y: np.ndarray) -> bool:
    """Every NaN of ``y`` has its dtype's canonical bits (BF16 bits held as uint16)."""
    f = fused.upcast(y) if y.dtype == np.uint16 else y
    nan = np.isnan(f)
    bits = y.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[y.dtype.itemsize])
    return bool((bits[nan] == CANONICAL[y.dtype]).all())


def same_output(a: np.ndarray, b: np.ndarray) -> bool:
    """The same bytes, NaNs included (both paths write the canonical NaN, whatever NaN the arithmetic made)."""
    return same_bytes(a, b) and canonical_nans(a)


def as_f64(y: np.ndarray) -> np.ndarray:
    return fused.upcast(y).astype(np.float64)


def check_acc(acc: np.ndarray, a0: kn.Acc, code: str, seed: bool) -> None:
    """The checks agree with the numpy kernels' to rounding (different, library-independent summation orders)."""
    mine = np.array(acc)
    theirs = np.array([float(a0.before), float(a0.after), float(a0.norm)])
    if not (np.isfinite(mine).all() and np.isfinite(theirs).all()):
        return  # NaN/inf inputs: the checks are NaN/inf either way
    tol = 1e-4 if code in ("BF16", "F16") else 1e-9
    assert mine[0] == pytest.approx(theirs[0], rel=tol, abs=1e-30)
    assert mine[2] == pytest.approx(theirs[2], rel=tol, abs=1e-30)
    denom = math.sqrt(theirs[2]) or 1.0
    # after: for the seed recipe a sum of near-cancelling terms (for F64 storage pure reduction noise): compare
    # the ratio ‖·‖/‖W‖ at the granularity hubkit judges it (ok: ≤ the storage epsilon)
    gap = abs(math.sqrt(mine[1]) - math.sqrt(theirs[1])) / denom
    assert gap <= (0.5 * EPS[code] if seed else tol)


def check_rows(x: np.ndarray, code: str, r64: np.ndarray, w: float = 1.0) -> None:
    acc = np.zeros(3)
    y = fused.rows(x, r64, w=w, acc=acc)
    y0, a0 = ref_rows(x, code, r64, w)
    assert same_output(y, y0)
    check_acc(acc, a0, code, w == 1.0)


def check_cols(x: np.ndarray, code: str, r64: np.ndarray, w: float = 1.0, mode: str = "none") -> None:
    acc = np.zeros(3)
    y = fused.cols(x, r64, w=w, mode=mode, acc=acc)
    y0, a0 = ref_cols(x, code, r64, w, mode)
    assert same_output(y, y0), (w, mode)
    check_acc(acc, a0, code, w == 1.0 and mode == "none")


# ---------------------------------------------------------------- conversions


def test_bf16_conversions_exhaustive_up_and_corner_down() -> None:
    k = kn.NumpyKernels("BF16", np.ones(1))
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ref_up = k.up(bits)
    assert same_bytes(fused.upcast(bits), ref_up)
    # every bf16 value with every low half of interest: exact, ties both ways, just below/above, NaN payloads
    lows = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x4000, 0xC000], np.uint32)
    f = ((ref_up.view(np.uint32)[:, None] | lows[None, :]).reshape(-1)).view(np.float32)
    assert same_bytes(fused.downcast(f, np.uint16), k.down(f))


def test_f16_and_f32_conversions_match_numpy() -> None:
    rng = np.random.default_rng(1)
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    with np.errstate(invalid="ignore"):
        want = h.astype(np.float32).view(np.uint32)
    # signalling NaNs come out quiet here (the hardware conversion), signalling from numpy's: the same bytes
    # in the kernels, where every value goes through arithmetic (which quiets) before it is stored
    want = np.where(np.isnan(want.view(np.float32)), want | 0x00400000, want)
    assert same_bytes(fused.upcast(h), want)
    f = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    f[: 1 << 16] = (h.astype(np.float32).view(np.uint32) & 0xFFFFE000) | 0x1000  # f16 ties (subnormals too)
    f32 = f.view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        want16 = f32.astype(np.float16)
        want16.view(np.uint16)[np.isnan(f32)] = 0x7E00  # any NaN, either sign, any payload: the canonical one
        assert same_bytes(fused.downcast(f32, np.float16), want16)
        d = rng.standard_normal(1 << 16) * np.exp2(rng.integers(-160, 140, 1 << 16))
        d[:4] = [np.nan, -np.nan, np.frombuffer(b"\x01\x00\x00\x00\x00\x00\xf0\xff", np.float64)[0], np.inf]
        want32 = d.astype(np.float32)
        want32.view(np.uint32)[np.isnan(d)] = 0x7FC00000
        assert same_bytes(fused.downcast(d, np.float32), want32)
        want64 = d.copy()
        want64.view(np.uint64)[np.isnan(d)] = 0x7FF8000000000000
        assert same_bytes(fused.downcast(d, np.float64), want64)
        assert same_bytes(fused.upcast(d.astype(np.float32)), d.astype(np.float32).astype(np.float64))


# ---------------------------------------------------------------- the numpy kernels' bytes


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("kind", KINDS)
def test_bytes_as_numpy_fixed_shapes(code: str, kind: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{code}{kind}".encode()))
    for shape in [(300, 1000), (37, 129), (5, 1), (1, 7)]:
        x = values(rng, shape, code, kind)
        check_rows(x, code, direction(rng, shape[1], sparse=kind == "special"))
        check_cols(x, code, direction(rng, shape[0], sparse=kind == "special"))
    x = values(rng, (64, 700), code, kind)
    u = direction(rng, 64, sparse=kind == "special")
    for w in (0.5, 1.7):
        check_rows(x, code, direction(rng, 700), w)
        check_cols(x, code, u, w)
    for mode in ("pre", "preserve"):
        for w in (1.0, 0.7):
            check_cols(x, code, u, w, mode)


def test_bytes_as_numpy_many_ties() -> None:
    """2.6M roundings per call: ties (and their even/odd cases) occur by the dozen; count them."""
    rng = np.random.default_rng(7)
    x = values(rng, (1024, 2560), "BF16", "normal")
    r64 = direction(rng, 2560)
    check_rows(x, "BF16", r64)
    k = kn.NumpyKernels("BF16", r64)
    xc = k.up(x)
    yc = xc - kn.tree_sum(xc * k.r, 1, k)[:, None] * k.r
    assert ((yc.view(np.uint32) & 0xFFFF) == 0x8000).sum() >= 10


@QUICK
@given(
    code=st.sampled_from(list(CODES)),
    kind=st.sampled_from(KINDS),
    mode=st.sampled_from(MODES),
    w=st.sampled_from([1.0, 1.0, 0.3, 1.0 / 3.0, 2.5]),
    n=st.integers(1, 70),
    d=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_bytes_as_numpy_random(code: str, kind: str, mode: str, w: float, n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = values(rng, (n, d), code, kind)
    check_rows(x, code, direction(rng, d, sparse=kind == "special"), w)
    check_cols(x, code, direction(rng, n, sparse=kind == "special"), w, mode)


@QUICK
@given(code=st.sampled_from(list(CODES)), mode=st.sampled_from(MODES), m=st.integers(1, 9000),
       seed=st.integers(0, 2**32 - 1))
def test_cols_chunking_as_numpy(code: str, mode: str, m: int, seed: int) -> None:
    """Wide and narrow matrices: chunks of 1..65536 rows, a ragged last chunk and block."""
    rng = np.random.default_rng(seed)
    step = kn.chunk_rows(m)
    d = int(rng.integers(1, min(3 * step * 16 + 5, max(2, 200_000 // m))))
    x = values(rng, (d, m), code, "zero_rows")
    check_cols(x, code, direction(rng, d), 0.9 if mode != "none" else 1.0, mode)


# ---------------------------------------------------------------- the bytes don't depend on the blocking


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("mode", MODES)
def test_blocking_partials_inplace_readonly(code: str, mode: str) -> None:
    rng = np.random.default_rng(3)
    d, m = 203, 1500
    step = kn.chunk_rows(m)
    x = values(rng, (d, m), code, "zero_rows")
    u = direction(rng, d)
    whole = fused.cols(x, u, w=0.75, mode=mode)
    for rows in (step, 3 * step, step * 100):
        assert same_bytes(fused.cols(x, u, w=0.75, mode=mode, block_rows=rows), whole)
    # helpers' path: per-chunk partials of blocks (any order), then summed in order
    ct = fused.compute_dtype(x.dtype)
    norms = np.empty(d, ct) if mode != "none" else None
    blk = 2 * step
    parts = [
        fused.cols_partials(x[a : a + blk], u[a : a + blk], step, norms=None if norms is None else norms[a:])
        for a in range(0, d, blk)
    ]
    s = fused.new_sum(m, x.dtype)
    for p in parts:
        fused.add_partials(p, s)
    b, c = fused.coefficients(u, s, 0.75, mode, norms)
    y = x.copy()
    ro = x.copy()
    ro.flags.writeable = False
    fused.cols_update(ro, b, c, y, target=norms if mode == "preserve" else None)  # into its own input's copy
    assert same_bytes(y, whole)
    inplace = x.copy()
    fused.cols_update(inplace, b, c, inplace, target=norms if mode == "preserve" else None)
    assert same_bytes(inplace, whole)
    r = direction(rng, m)
    rows_whole = fused.rows(x, r, w=1.5)
    split = np.concatenate([fused.rows(ro[a : a + 17], r, w=1.5) for a in range(0, d, 17)])
    assert same_bytes(split, rows_whole)
    xi = x.copy()
    fused.rows(xi, r, xi, w=1.5)
    assert same_bytes(xi, rows_whole)
    assert same_bytes(fused.rows(np.asfortranarray(x), r, w=1.5), rows_whole)  # copied to C order, same bytes


# ---------------------------------------------------------------- values: the float64 formulas


def formula(w64: np.ndarray, u: np.ndarray, w: float, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The modes as written, in float64 (no fixed order: values only); also ‖M_i‖ of ``preserve`` (1 else)."""
    n = np.sqrt((w64 * w64).sum(1))
    one = np.ones(len(n))
    if mode == "none":
        return w64 - w * np.outer(u, u @ w64), one
    wh = w64 / np.where(n == 0, 1.0, n)[:, None]
    s = u @ wh
    if mode == "pre":
        return w64 - w * np.outer(n * u, s), one
    mat = wh - w * np.outer(u, s)
    q = np.sqrt((mat * mat).sum(1))
    return mat * np.where(q == 0, 0.0, n / np.where(q == 0, 1.0, q))[:, None], q


@QUICK
@given(
    code=st.sampled_from(list(CODES)),
    mode=st.sampled_from(MODES),
    w=st.sampled_from([1.0, 0.3, 1.0 / 3.0, 2.5]),
    d=st.integers(1, 120),
    m=st.integers(1, 400),
    seed=st.integers(0, 2**32 - 1),
)
def test_modes_match_float64_formula(code: str, mode: str, w: float, d: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = values(rng, (d, m), code, "zero_rows")
    u = direction(rng, d)
    y = as_f64(fused.cols(x, u, w=w, mode=mode))
    x64 = as_f64(x)
    want, q = formula(x64, u, w, mode)
    # storage rounding of each value + compute-dtype error on the row's scale; preserve's rescale multiplies
    # the error of M_i by 1/‖M_i‖ (a row ~parallel to u is rounding noise rescaled to ‖W_i‖: ill-posed, left out)
    n = np.sqrt((x64 * x64).sum(1))
    scale = np.abs(x64).max(1) + np.abs(want).max(1) + np.abs(u) * (1 + abs(w)) * n.max()
    posed = (q > 1e-3) | (n == 0)
    gain = np.where(posed, 1.0 / np.maximum(q, 1e-3), 0.0)
    tol = EPS[code] * np.abs(want) + TINY[code] + 64 * CEPS[code] * math.sqrt(d * m) * (scale * gain)[:, None]
    assert (np.abs(y - want)[posed] <= tol[posed]).all()
    if mode == "preserve":  # each row keeps its norm (to the storage rounding); zero rows stay zero
        ny = np.sqrt((y * y).sum(1))
        rel = 2 * EPS[code] + 16 * CEPS[code] * math.sqrt(m)
        assert (np.abs(ny - n)[posed] <= rel * n[posed] + 1e-300).all()
        assert (y[n == 0] == 0).all()
    if mode == "none" and w == 1.0:  # hubkit's own check: ‖uᵀW'‖ / ‖W'‖ below the storage epsilon
        ny = math.sqrt(float((y * y).sum())) or 1.0
        assert float(np.linalg.norm(u @ y)) / ny <= EPS[code]


@pytest.mark.parametrize("code", CODES)
def test_bias_and_rows_weight(code: str) -> None:
    """bias b − w (uᵀb) u is the rows op on one row; the formula's values for w ≠ 1."""
    rng = np.random.default_rng(5)
    b = values(rng, (1, 2560), code, "normal")
    u = direction(rng, 2560)
    assert same_bytes(fused.rows(b, u), ref_rows(b, code, u)[0])
    b64 = as_f64(b)[0]
    for w in (0.5, 2.0):
        y = as_f64(fused.rows(b, u, w=w))[0]
        want = b64 - w * (u @ b64) * u
        atol = TINY[code] + 64 * CEPS[code] * 2560 * np.abs(b64).max()
        assert np.allclose(y, want, rtol=EPS[code], atol=atol)


def test_zero_and_degenerate_shapes() -> None:
    for code, dt in CODES.items():
        x = np.zeros((0, 5), dt)
        assert fused.rows(x, np.ones(5) / math.sqrt(5)).shape == (0, 5)
        one = values(np.random.default_rng(0), (4, 1), code, "normal")
        check_cols(one, code, direction(np.random.default_rng(1), 4))
        check_cols(one, code, direction(np.random.default_rng(1), 4), 0.5, "preserve")
        zero = np.zeros((3, 4), dt)
        for mode in MODES:  # a zero matrix stays zero (no 0/0 anywhere)
            assert not as_f64(fused.cols(zero, direction(np.random.default_rng(2), 3), mode=mode)).any()


# ---------------------------------------------------------------- the executor: fused, or numpy without numba


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "qwen3_5": tm.save_qwen3_5(root / "qwen3_5", max_shard_size="100KB"),  # F32, sharded, tied
        "llama_bias_bf16": tm.save_llama(root / "llama_bias", bias=True, dtype=torch.bfloat16),
        "qwen3_moe": tm.save_qwen3_moe(root / "qwen3_moe"),  # per-expert [d, i] matrices
        "gpt_oss_f16": tm.save_gpt_oss(root / "gpt_oss", dtype=torch.float16),  # fused [E, i, d] experts
    }


def _with_edit(plan: wplan.TensorPlan, weight: float, norm: str) -> wplan.TensorPlan:
    """Every op at ``weight``; the [d, m] writers (not biases, not rows ops) in mode ``norm``."""
    ops = [dataclasses.replace(op, weight=weight,
                               norm=norm if op.kind == "cols" and op.how != "bias" else "none")
           for op in plan.ops]
    return dataclasses.replace(plan, ops=ops)


@pytest.mark.parametrize("family", ["qwen3_5", "llama_bias_bf16", "qwen3_moe", "gpt_oss_f16"])
def test_executor_without_numba_gives_the_same_bytes(family: str, ckpts: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """numba missing: the executor computes with the numpy kernels, and every shard's bytes are the same, in
    every mode; the checks agree to rounding."""
    src = ckpts[family]
    r = torch.randn(tm.HIDDEN, generator=torch.Generator().manual_seed(4))
    base = wplan.plan_checkpoint(src, ("embed_tokens", "attn_out", "mlp_down", "lm_head"))
    for weight, norm in [(1.0, "none"), (0.6, "none"), (1.0, "pre"), (0.8, "preserve")]:
        plan = _with_edit(base, weight, norm)
        with_numba = ab.execute_plan(plan, src, None, r, progress=False)
        with monkeypatch.context() as m:
            without_numba(m)
            without = ab.execute_plan(plan, src, None, r, progress=False)
        assert with_numba.shards_sha256 == without.shards_sha256, (weight, norm)
        assert (with_numba.library, without.library) == ("fused", "numpy")
        assert not with_numba.numba_missing and without.numba_missing
        for a, b in zip(with_numba.checks, without.checks, strict=True):
            assert a.name == b.name and a.checked == b.checked and a.ok and b.ok
            assert a.before == pytest.approx(b.before, rel=1e-4, abs=1e-12)
            assert a.after == pytest.approx(b.after, rel=1e-4, abs=a.threshold / 2)


def test_first_compile_message_ignores_other_librarys_kernels() -> None:
    """The listener is process-wide: a numba compile of anyone else's code during a run says nothing."""
    from numba import njit

    said: list[str] = []
    stop = fused.on_first_compile(lambda: said.append("compiling"))
    try:
        njit(lambda x: x * 3 + 1)(2)  # a fresh function of this module: compiled now
    finally:
        stop()
    assert said == []


def test_a_run_says_when_it_compiled_the_kernels(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """With an empty numba cache the first process compiles: above its progress bar it says so while it happens,
    and afterwards how many kernels and where they are cached; the second loads them and says neither.
    Subprocesses: this one has its kernels loaded already."""
    import subprocess

    code = ("import sys, numpy as np; from hubkit.weights import executor as ab, plan as wp; "
            "p = wp.plan_checkpoint(sys.argv[1], ('attn_out', 'mlp_down')); "
            "r = ab.execute_plan(p, sys.argv[1], sys.argv[2], np.ones(p.hidden_size), progress=True); "
            "print(r.compiled, r.kernel_cache)")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    runs = []
    for i in range(2):
        (tmp_path / f"out{i}").mkdir()
        runs.append(subprocess.run([sys.executable, "-c", code, str(ckpts["llama_bias_bf16"]), str(tmp_path / f"out{i}")],
                                   env=env, check=True, capture_output=True, text=True))
    first, second = (r.stdout.split() for r in runs)
    assert int(first[0]) > 0 and first[1].startswith(str(tmp_path / "numba"))
    assert int(second[0]) == 0
    assert ab.COMPILING in runs[0].stderr and ab.COMPILING not in runs[1].stderr
    assert runs[0].stderr.count(ab.COMPILING) == 1
