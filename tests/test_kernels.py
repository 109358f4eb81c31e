"""hubkit.weights.kernels: the edit arithmetic in fixed order.

The tree sum's pairwise order, the numpy kernels (the CPU fallback) against the torch kernels byte for byte in
every norm mode and weight, and bfloat16's round-to-nearest-even.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hubkit.weights import kernels


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_tree_sum_is_a_fixed_pairwise_order(lib: str) -> None:
    k = kernels.NumpyKernels("F32", np.ones(1)) if lib == "numpy" else kernels.TorchKernels("F32", np.ones(1))
    x = torch.tensor([[1e8, 1.0, -1e8, 1.0, 3.0]], dtype=torch.float32)
    # ((x0 + x2) + (x1 + x3)) + x4, as the halving defines it
    want = float((x[0, 0] + x[0, 2]) + (x[0, 1] + x[0, 3]) + x[0, 4])
    y = torch.randn(37, 5, dtype=torch.float64)
    if lib == "numpy":
        x, y = x.numpy(), y.numpy()
    assert float(kernels.tree_sum(x, 1, k)[0]) == want != float(x.sum())
    assert np.allclose(np.asarray(kernels.tree_sum(y, 0, k)), np.asarray(y.sum(0)))


def _awkward(code: str, n: int = 4096) -> torch.Tensor:
    """Storage values that stress the rounding: ties, subnormals, near-overflow, both signs."""
    dtype = kernels.torch_dtype(code)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, generator=g, dtype=torch.float64) * torch.logspace(-30, 30, n, dtype=torch.float64)
    info = torch.finfo(dtype)
    x[:8] = torch.tensor([info.tiny / 3, -info.tiny / 5, info.max / 2, -info.max / 3, 0.0, -0.0, 1.0, 3.0])
    return x.clamp(-info.max, info.max).to(dtype)


@pytest.mark.parametrize("code", ["BF16", "F16", "F32", "F64"])
def test_numpy_and_torch_kernels_give_the_same_bytes(code: str) -> None:
    """The reference math on numpy (the CPU fallback) and on torch (``orthogonalize``): casts and results agree,
    in every norm mode and with a weight (torch's sqrt goes through numpy on the CPU: its own is not exact)."""
    r64 = kernels.unit_vector(torch.randn(64, generator=torch.Generator().manual_seed(9)))
    kn, kt = kernels.NumpyKernels(code, r64), kernels.TorchKernels(code, r64)
    assert np.array_equal(kn.r, kt.r.numpy())
    w = _awkward(code).reshape(64, 64)
    w[5] = 0.0  # a zero row: its norm is 0 (pre: a_i = 0; preserve: it stays zero)
    wn = w.view(torch.int16).numpy().view("<u2") if code == "BF16" else w.numpy()

    def same(a: object, b: torch.Tensor) -> bool:
        return bytes(kn.as_bytes(a)) == bytes(kt.as_bytes(b))

    compute = kt.up(w) * 1.000001  # values between storage steps: every rounding case of the downcast
    assert np.array_equal(kn.up(wn), kt.up(w).numpy())
    assert same(kn.down(compute.numpy()), kt.down(compute))
    squares = compute.abs().ravel()
    assert np.array_equal(kn.sqrt(squares.numpy()), kt.sqrt(squares).numpy())
    for weight in (1.0, 0.7):
        assert same(kernels.rows_block(wn, kn, w=weight), kernels.rows_block(w, kt, w=weight))
        for norm in ("none", "pre", "preserve"):
            got = []
            for k, x in ((kn, wn), (kt, w)):
                a = b = k.r
                n = None
                if norm != "none":
                    n = kernels.row_norms(x, k)
                    a, b = kernels.normed_coefficients(k.r, n, k)
                s = kernels.accumulate(kernels.cols_partials(x, a, 5, k), None)
                c = kernels.cols_coefficient(s, weight, k)
                got.append(kernels.cols_block(x, k.r, b, c, k, target=n if norm == "preserve" else None))
            assert same(*got), (weight, norm)
            if norm == "preserve":
                assert not np.asarray(kn.up(got[0]))[5].any()  # the zero row stayed zero


def test_bf16_rounding_is_to_nearest_even() -> None:
    k = kernels.NumpyKernels("BF16", np.ones(1))
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF, 0x00000001, 0x7FC00001], dtype=np.uint32)
    # tie → even (down), tie → even (up), above the tie → up, overflow → inf, subnormal → 0, NaN → 0x7FC0
    assert k.down(bits.view(np.float32)).tolist() == [0x3F80, 0x3F82, 0x3F81, 0x7F80, 0x0000, 0x7FC0]
