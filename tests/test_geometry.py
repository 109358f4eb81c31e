"""Geometry against a reference written here from the formulas (plain loops and math.fsum), not the module's
helpers. The bootstrap reference follows the documented recipe: default_rng(seed).integers(0, n, (B, n)),
mean over ordered position pairs with distinct members, linear percentile interval."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hubkit.run import geometry as g

# --------------------------------------------------------------------------- reference implementation


def ref_cos(x: np.ndarray) -> list[list[float]]:
    rows = [[float(v) for v in r] for r in x]
    norm = [math.sqrt(math.fsum(v * v for v in r)) for r in rows]
    n = len(rows)
    return [[math.fsum(a * b for a, b in zip(rows[i], rows[j], strict=True)) / (norm[i] * norm[j])
             for j in range(n)] for i in range(n)]


def ref_mean_offdiag(c: list[list[float]]) -> float:
    n = len(c)
    return math.fsum(c[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))


def ref_draw_mean(c: list[list[float]], idx: list[int]) -> float | None:
    vals = [c[idx[a]][idx[b]] for a in range(len(idx)) for b in range(len(idx)) if idx[a] != idx[b]]
    return math.fsum(vals) / len(vals) if vals else None


def ref_quantiles(values: list[float], conf: float) -> tuple[float, float]:
    """Linear interpolation between order statistics (numpy's default 'linear' method), by hand."""
    v = sorted(values)

    def q(p: float) -> float:
        h = (len(v) - 1) * p
        lo = math.floor(h)
        return v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])

    a = (1 - conf) / 2
    return q(a), q(1 - a)


def ref_bootstrap(c: list[list[float]], seed: int, b: int, conf: float = 0.95) -> tuple[float, float, int]:
    idx = np.random.default_rng(seed).integers(0, len(c), size=(b, len(c)))
    draws = [ref_draw_mean(c, [int(i) for i in row]) for row in idx]
    kept = [d for d in draws if d is not None]
    lo, hi = ref_quantiles(kept, conf)
    return lo, hi, len(draws) - len(kept)


def ref_change_bootstrap(cb, ca, seed: int, b: int, conf: float = 0.95) -> tuple[float, float]:
    idx = np.random.default_rng(seed).integers(0, len(cb), size=(b, len(cb)))
    vals = []
    for row in idx:
        r = [int(i) for i in row]
        mb, ma = ref_draw_mean(cb, r), ref_draw_mean(ca, r)
        if mb is not None:
            vals.append(ma - mb)
    return ref_quantiles(vals, conf)


@pytest.fixture
def x() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.standard_normal((6, 10)) + 0.8  # positive shared component: cosines mostly > 0


# --------------------------------------------------------------------------- elementary


def test_cosine_matrix_matches_reference(x):
    c = g.cosine_matrix(x)
    np.testing.assert_allclose(c, ref_cos(x), rtol=0, atol=1e-14)
    assert c.dtype == np.float64
    assert (c == c.T).all() and (np.diag(c) == 1.0).all()


def test_cosine_of_float32_is_computed_in_float64():
    x32 = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_allclose(g.cosine_matrix(x32), ref_cos(x32.astype(np.float64)), rtol=0, atol=1e-14)


def test_zero_row_and_bad_shapes_refused():
    with pytest.raises(ValueError, match="row 1 is the zero vector"):
        g.cosine_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="2-D"):
        g.cosine_matrix(np.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        g.cosine_matrix(np.array([[1.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        g.mean_offdiag(np.ones((1, 1)))


def test_mean_offdiag_and_norms(x):
    c = ref_cos(x)
    assert g.mean_offdiag(np.array(c)) == pytest.approx(ref_mean_offdiag(c), abs=1e-15)
    np.testing.assert_allclose(g.norms(x), [math.sqrt(math.fsum(v * v for v in r)) for r in x], atol=1e-13)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 6), st.integers(1, 8)),
              elements=st.floats(-1e3, 1e3, allow_nan=False).filter(lambda v: abs(v) > 1e-3)),
       st.floats(0.01, 100))
def test_cosine_properties(x, scale):
    c = g.cosine_matrix(x)
    assert np.all(c <= 1.0) and np.all(c >= -1.0)
    np.testing.assert_allclose(c, ref_cos(x), atol=1e-12)
    # a vector's length never changes a cosine: scaling rows is invisible
    np.testing.assert_allclose(g.cosine_matrix(x * scale), c, atol=1e-12)
    assert g.mean_offdiag(c) == pytest.approx(ref_mean_offdiag(ref_cos(x)), abs=1e-12)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_matches_reference(x):
    c = g.cosine_matrix(x)
    iv = g.bootstrap_mean_offdiag(c, seed=3, n_resamples=300)
    lo, hi, degenerate = ref_bootstrap(ref_cos(x), 3, 300)
    assert iv.lo == pytest.approx(lo, abs=1e-13) and iv.hi == pytest.approx(hi, abs=1e-13)
    assert (iv.seed, iv.n_resamples, iv.n_degenerate, iv.confidence) == (3, 300, degenerate, 0.95)
    assert iv.lo <= g.mean_offdiag(c) <= iv.hi


def test_bootstrap_is_seeded(x):
    c = g.cosine_matrix(x)
    a = g.bootstrap_mean_offdiag(c, seed=11, n_resamples=200)
    assert a == g.bootstrap_mean_offdiag(c, seed=11, n_resamples=200)
    assert a != g.bootstrap_mean_offdiag(c, seed=12, n_resamples=200)


def test_bootstrap_two_members_counts_degenerate_draws():
    c = g.cosine_matrix(np.array([[1.0, 0.0], [1.0, 1.0]]))
    iv = g.bootstrap_mean_offdiag(c, seed=0, n_resamples=400)
    idx = np.random.default_rng(0).integers(0, 2, size=(400, 2))
    assert iv.n_degenerate == int((idx[:, 0] == idx[:, 1]).sum()) > 0
    assert iv.lo == pytest.approx(c[0, 1]) and iv.hi == pytest.approx(c[0, 1])  # only one distinct pair


def test_bootstrap_argument_checks(x):
    c = g.cosine_matrix(x)
    with pytest.raises(ValueError, match="n_resamples"):
        g.bootstrap_mean_offdiag(c, n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        g.bootstrap_mean_offdiag(c, confidence=1.0)


# --------------------------------------------------------------------------- sets and pairs


def _members(arr: np.ndarray) -> dict[str, np.ndarray]:
    return {f"p{i}": arr[i] for i in range(arr.shape[0])}


def test_set_geometry_per_layer():
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((5, 3, 16)) + 0.5).astype(np.float32)
    geo = g.set_geometry("s", _members(data), [7, 14, 20], seed=2, n_resamples=150)
    assert geo.members == ["p0", "p1", "p2", "p3", "p4"] and geo.layer_ids == [7, 14, 20]
    for k, layer in enumerate([7, 14, 20]):
        lg = geo.at(layer)
        c = ref_cos(data[:, k, :].astype(np.float64))
        np.testing.assert_allclose(lg.cosine, c, atol=1e-14)
        assert lg.mean_offdiag == pytest.approx(ref_mean_offdiag(c), abs=1e-14)
        lo, hi, _ = ref_bootstrap(c, 2, 150)
        assert lg.interval.lo == pytest.approx(lo, abs=1e-13)
        assert lg.interval.hi == pytest.approx(hi, abs=1e-13)
        np.testing.assert_allclose(lg.norms, [math.sqrt(math.fsum(float(v) ** 2 for v in r))
                                              for r in data[:, k, :]], rtol=1e-14)
    with pytest.raises(KeyError):
        geo.at(8)


def test_set_geometry_refuses_wrong_rows_and_single_member():
    with pytest.raises(ValueError, match="expected \\[2, 4\\]"):
        g.set_geometry("s", {"a": np.ones((2, 4)), "b": np.ones((3, 4))}, [1, 2])
    with pytest.raises(ValueError, match="at least 2 members"):
        g.set_geometry("s", {"a": np.ones((2, 4))}, [1, 2])


def test_compare_sets_matches_reference():
    rng = np.random.default_rng(9)
    before = rng.standard_normal((6, 2, 12)) + 0.3
    after = before + 0.4 * rng.standard_normal((6, 2, 12)) + 0.5
    cmp = g.compare_sets(_members(before), _members(after), [14, 21], before_name="base", after_name="em",
                         seed=4, n_resamples=120)
    assert (cmp.before, cmp.after, cmp.layer_ids) == ("base", "em", [14, 21])
    for k, layer in enumerate([14, 21]):
        cl = cmp.at(layer)
        cb, ca = ref_cos(before[:, k]), ref_cos(after[:, k])
        assert cl.before == pytest.approx(ref_mean_offdiag(cb), abs=1e-14)
        assert cl.after == pytest.approx(ref_mean_offdiag(ca), abs=1e-14)
        assert cl.change == pytest.approx(ref_mean_offdiag(ca) - ref_mean_offdiag(cb), abs=1e-14)
        np.testing.assert_allclose(cl.delta, np.array(ca) - np.array(cb), atol=1e-14)
        for i in range(6):
            b, a = before[i, k], after[i, k]
            ref = math.fsum(b * a) / math.sqrt(math.fsum(b * b) * math.fsum(a * a))
            assert cl.member_cos[i] == pytest.approx(ref, abs=1e-14)
            ratio = math.sqrt(math.fsum(a * a) / math.fsum(b * b))
            assert cl.norm_ratio[i] == pytest.approx(ratio, rel=1e-13)
        lo, hi = ref_change_bootstrap(cb, ca, 4, 120)
        assert cl.change_interval.lo == pytest.approx(lo, abs=1e-13)
        assert cl.change_interval.hi == pytest.approx(hi, abs=1e-13)


def test_compare_matches_members_by_name_and_refuses_different_members():
    rng = np.random.default_rng(2)
    before = _members(rng.standard_normal((4, 1, 8)))
    after = _members(rng.standard_normal((4, 1, 8)))
    shuffled = {k: after[k] for k in reversed(list(after))}
    a = g.compare_sets(before, after, [3], n_resamples=50)
    b = g.compare_sets(before, shuffled, [3], n_resamples=50)
    assert a.to_json() == b.to_json()
    with pytest.raises(ValueError, match="only in after: p9"):
        g.compare_sets(before, {**after, "p9": after["p0"]}, [3])


def test_to_json_is_plain_and_strict():
    rng = np.random.default_rng(3)
    data = _members(rng.standard_normal((3, 2, 5)))
    geo = g.set_geometry("s", data, [1, 2], n_resamples=20)
    cmp = g.compare_sets(data, {k: v * 2 + 0.1 for k, v in data.items()}, [1, 2], n_resamples=20)
    for obj in (geo.to_json(), cmp.to_json()):
        text = json.dumps(obj, allow_nan=False, sort_keys=True)
        assert json.loads(text) == obj
    j = geo.to_json()
    assert j["bootstrap"]["seed"] == 0 and j["bootstrap"]["n_resamples"] == 20
    assert j["layers"][0]["cosine"][0][0] == 1.0
    # 12 significant digits: stable across BLAS kernels, far finer than float32 inputs
    lg = geo.layers[1]
    assert j["layers"][1]["mean_offdiag_cos"] == float(f"{lg.mean_offdiag:.12g}")
    assert j["layers"][1]["cosine"][0][2] == float(f"{lg.cosine[0, 2]:.12g}")
    assert j["layers"][1]["mean_offdiag_cos_ci"]["lo"] == float(f"{lg.interval.lo:.12g}")


# --------------------------------------------------------------------------- across runs


def test_cross_run_cosines_shared_layers():
    rng = np.random.default_rng(4)
    this = {7: rng.standard_normal(8), 14: rng.standard_normal(8), 20: rng.standard_normal(8)}
    theirs = {14: -this[14], 20: this[20] * 3, 27: rng.standard_normal(8)}
    out = g.cross_run_cosines(this, theirs)
    assert list(out) == [14, 20]
    assert out[14] == pytest.approx(-1.0) and out[20] == pytest.approx(1.0)
    assert g.cross_run_cosines(this, {1: this[7]}) == {}


def test_cross_run_cosines_renumbers_conventions():
    v = np.arange(1.0, 9.0)
    # hidden_states 21 is the output of block 20
    assert g.cross_run_cosines({21: v}, {20: v}, this_convention="hidden_states",
                               theirs_convention="block") == {21: pytest.approx(1.0)}
    assert g.cross_run_cosines({20: v}, {21: v}, this_convention="block",
                               theirs_convention="hidden_states") == {20: pytest.approx(1.0)}
    with pytest.raises(ValueError, match="both layer conventions"):
        g.cross_run_cosines({1: v}, {1: v}, this_convention="block")
    with pytest.raises(ValueError, match="d differs"):
        g.cross_run_cosines({1: v}, {1: v[:4]})


# --------------------------------------------------------------------------- shift axis (seed 004's "EM axis")


def ref_axis_rows(before: np.ndarray, after: np.ndarray, e: list[float]) -> list[tuple[float, float, float, float]]:
    """Per member, from the definitions with fsum: cos(before, e), cos(after, e), shift·e, and the orthogonal
    share ‖shift − (shift·e) e‖² / ‖shift‖²."""
    out = []
    for b, a in zip(before.tolist(), after.tolist(), strict=True):
        shift = [y - x for x, y in zip(b, a, strict=True)]
        along = math.fsum(s * v for s, v in zip(shift, e, strict=True))
        rest = [s - along * v for s, v in zip(shift, e, strict=True)]
        moved = math.fsum(s * s for s in shift)
        cb = math.fsum(x * v for x, v in zip(b, e, strict=True)) / math.sqrt(math.fsum(x * x for x in b))
        ca = math.fsum(y * v for y, v in zip(a, e, strict=True)) / math.sqrt(math.fsum(y * y for y in a))
        out.append((cb, ca, along, math.fsum(r * r for r in rest) / moved if moved else math.nan))
    return out


def _check_axis(ax: g.AxisLayer, before: np.ndarray, after: np.ndarray, e: list[float]) -> None:
    for i, (cb, ca, along, orth) in enumerate(ref_axis_rows(before, after, e)):
        assert ax.cos_before[i] == pytest.approx(cb, abs=1e-12)
        assert ax.cos_after[i] == pytest.approx(ca, abs=1e-12)
        assert ax.along[i] == pytest.approx(along, abs=1e-12)
        if math.isnan(orth):
            assert math.isnan(ax.orthogonal_share[i])
        else:
            assert ax.orthogonal_share[i] == pytest.approx(orth, abs=1e-9)


def test_member_shift_axis_matches_reference():
    rng = np.random.default_rng(21)
    before = rng.standard_normal((5, 9))
    after = before + 0.3 * rng.standard_normal((5, 9))
    after[3] = before[3]  # a member that did not move: no orthogonal share
    members = ["assistant", "villain", "doctor", "still", "poet"]
    ax = g.shift_axis(before, after, members, "villain")
    shift = (after[1] - before[1]).tolist()
    size = math.sqrt(math.fsum(s * s for s in shift))
    _check_axis(ax, before, after, [s / size for s in shift])
    assert ax.orthogonal_share[1] == pytest.approx(0.0, abs=1e-12) and ax.along[1] == pytest.approx(size)
    assert ax.explained is None and ax.axis == "villain"
    assert json.loads(json.dumps(ax.to_json(), allow_nan=False))["orthogonal_share"][3] is None


def test_principal_shift_axis_matches_reference():
    rng = np.random.default_rng(22)
    before = rng.standard_normal((8, 6))
    common = rng.standard_normal(6)
    after = before + np.outer(rng.uniform(0.5, 1.5, 8), common) + 0.2 * rng.standard_normal((8, 6))
    ax = g.shift_axis(before, after, [f"p{i}" for i in range(8)], g.PRINCIPAL)
    d = after - before
    vals, vecs = np.linalg.eigh(d.T @ d)  # the top eigenvector of DᵀD: D's first right singular vector
    e = vecs[:, -1] * (1.0 if d.sum(axis=0) @ vecs[:, -1] >= 0 else -1.0)
    _check_axis(ax, before, after, e.tolist())
    assert ax.explained == pytest.approx(vals[-1] / vals.sum(), abs=1e-12)
    assert ax.along.sum() > 0  # signed so that the shifts' sum projects positively
    assert abs(float(np.dot(e, common / np.linalg.norm(common)))) > 0.9  # it finds the planted common shift


def test_shift_axis_refusals_and_compare_carries_it():
    x = np.eye(3) + 0.1
    with pytest.raises(ValueError, match="'a' did not move"):
        g.shift_axis(x, x.copy(), ["a", "b", "c"], "a")
    with pytest.raises(ValueError, match="no member moved"):
        g.shift_axis(x, x.copy(), ["a", "b", "c"], g.PRINCIPAL)
    with pytest.raises(ValueError, match="'z' is not a member"):
        g.shift_axis(x, x + 1, ["a", "b", "c"], "z")
    rng = np.random.default_rng(5)
    before = _members(rng.standard_normal((4, 2, 7)))
    after = {k: v + 0.5 for k, v in before.items()}
    cmp = g.compare_sets(before, after, [3, 4], n_resamples=20, axis="p2")
    assert cmp.axis == "p2" and all(cl.axis is not None and cl.axis.axis == "p2" for cl in cmp.layers)
    j = cmp.to_json()
    assert j["shift_axis"] == "p2" and "shift_axis" in j["layers"][0]
    assert "shift_axis" not in g.compare_sets(before, after, [3, 4], n_resamples=20).to_json()
