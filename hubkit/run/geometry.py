"""Geometry of vector sets (personas, traits, features): pure numpy float64, no I/O, deterministic.

Everything is computed from the *published* float32 values upcast to float64, so a reader who downloads
``vectors/<set>.safetensors`` and redoes the arithmetic gets the card's numbers. Vectors are never
normalised before storing; cosines normalise on the fly.

Bootstrap of the mean off-diagonal cosine (the one non-obvious definition; :func:`bootstrap_mean_offdiag`):
resample the *members* with replacement, take the resampled cosine matrix ``C[idx][:, idx]``, and average it
over the ordered position pairs ``(a, b)`` whose members differ (``idx[a] != idx[b]``). A member drawn twice
contributes its cosines with every *other* drawn member twice, and never its cosine with itself (which is 1
and no pair at all). Draws with fewer than two distinct members have no pair; they are dropped and counted
(``n_degenerate``). The interval is the percentile interval of the kept draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_SEED = 0
DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
BOOTSTRAP_METHOD = "percentile; members resampled with replacement; mean over pairs of distinct members"
RNG = "numpy.random.default_rng(seed) (PCG64), integers(0, n_members, size=(n_resamples, n_members))"


# --------------------------------------------------------------------------- elementary functions


def _matrix(x: Any, what: str = "vectors") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array [n, d], got shape {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: non-finite values")
    return a


def norms(x: Any) -> np.ndarray:
    """L2 norm of each row of ``x`` [n, d], float64."""
    a = _matrix(x)
    return np.sqrt(np.einsum("ij,ij->i", a, a))


def cosine_matrix(x: Any) -> np.ndarray:
    """Cosine between every two rows of ``x`` [n, d] as float64 [n, n].

    Exactly symmetric, diagonal exactly 1, values clipped to [-1, 1] (rounding can exceed 1 by an ulp). A zero
    row has no direction: ValueError, rather than a silent NaN row in a published table.
    """
    a = _matrix(x)
    n = norms(a)
    if (n == 0).any():
        raise ValueError(f"row {int(np.flatnonzero(n == 0)[0])} is the zero vector: its cosine is undefined")
    u = a / n[:, None]
    c = u @ u.T
    c = np.clip((c + c.T) / 2.0, -1.0, 1.0)
    np.fill_diagonal(c, 1.0)
    return c


def mean_offdiag(c: Any) -> float:
    """Mean of a square matrix over its off-diagonal entries (i != j); needs at least 2 rows."""
    m = np.asarray(c, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {list(m.shape)}")
    k = m.shape[0]
    if k < 2:
        raise ValueError("mean off-diagonal needs at least 2 members")
    mask = ~np.eye(k, dtype=bool)
    return float(m[mask].mean())


def _resample_indices(n: int, seed: int, n_resamples: int) -> np.ndarray:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _offdiag_means(c: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per draw: mean of ``c`` over resampled position pairs with distinct members; and a 'has pairs' flag.

    With ``w[i]`` = times member i was drawn, the ordered pairs of positions holding distinct members sum to
    ``w @ c @ w - sum_i w_i^2 c_ii`` and number ``n^2 - sum_i w_i^2``: memory O(draws x n), not
    O(draws x n^2), so a 275-member roster with 1000 draws stays small.
    """
    b, n = idx.shape
    flat = (np.arange(b)[:, None] * n + idx).ravel()
    w = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
    w2 = w * w
    sums = ((w @ c) * w).sum(axis=1) - w2 @ np.diag(c)
    counts = float(n * n) - w2.sum(axis=1)
    ok = counts > 0
    means = np.full(b, np.nan)
    means[ok] = sums[ok] / counts[ok]
    return means, ok


@dataclass(frozen=True)
class Interval:
    """A seeded bootstrap percentile interval, with everything needed to redo it."""

    lo: float
    hi: float
    confidence: float
    seed: int
    n_resamples: int
    n_degenerate: int  # draws with < 2 distinct members, dropped

    def to_json(self) -> dict[str, Any]:
        return {"lo": _num(self.lo), "hi": _num(self.hi), "confidence": self.confidence, "seed": self.seed,
                "n_resamples": self.n_resamples, "n_degenerate": self.n_degenerate}


def _percentile_interval(draws: np.ndarray, confidence: float, seed: int, n_resamples: int,
                         n_degenerate: int) -> Interval:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if draws.size == 0:
        raise ValueError("every bootstrap draw had fewer than 2 distinct members")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha], method="linear")
    return Interval(float(lo), float(hi), confidence, seed, n_resamples, n_degenerate)


def bootstrap_mean_offdiag(c: Any, *, seed: int = DEFAULT_SEED, n_resamples: int = DEFAULT_RESAMPLES,
                           confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Percentile bootstrap interval of the mean off-diagonal cosine, resampling members (module docstring).

    ``c`` is a cosine matrix [n, n]. Same ``seed`` and ``n_resamples`` give the same interval.
    """
    m = np.asarray(c, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"expected a square matrix of at least 2 members, got shape {list(m.shape)}")
    means, ok = _offdiag_means(m, _resample_indices(m.shape[0], seed, n_resamples))
    return _percentile_interval(means[ok], confidence, seed, n_resamples, int((~ok).sum()))


def bootstrap_offdiag_change(before: Any, after: Any, *, seed: int = DEFAULT_SEED,
                             n_resamples: int = DEFAULT_RESAMPLES,
                             confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Paired bootstrap interval of mean off-diagonal(after) - mean off-diagonal(before).

    Both matrices are indexed by the *same* member draw, so the interval reflects which members are in the
    set, not two independent draws.
    """
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    if b.shape != a.shape or b.ndim != 2 or b.shape[0] != b.shape[1] or b.shape[0] < 2:
        raise ValueError(f"expected two square matrices of one shape (>= 2 members), got {list(b.shape)} "
                         f"and {list(a.shape)}")
    idx = _resample_indices(b.shape[0], seed, n_resamples)
    mb, ok = _offdiag_means(b, idx)
    ma, _ = _offdiag_means(a, idx)
    return _percentile_interval((ma - mb)[ok], confidence, seed, n_resamples, int((~ok).sum()))


# --------------------------------------------------------------------------- per-set geometry


JSON_DIGITS = 12


def _num(x: float) -> float:
    """Rounded to 12 significant digits for JSON: far below float32 input precision, and it keeps the file
    byte-stable where BLAS kernels differ between CPUs in the last bits."""
    return float(f"{x:.{JSON_DIGITS}g}")


def _floats(a: np.ndarray) -> list[Any]:
    if a.ndim == 1:
        return [_num(v) for v in a.tolist()]
    return [_floats(row) for row in a]


@dataclass
class LayerGeometry:
    """One layer of one set: cosine matrix, its mean off-diagonal with interval, member norms."""

    layer: int
    cosine: np.ndarray  # [n_members, n_members] float64
    mean_offdiag: float
    interval: Interval
    norms: np.ndarray  # [n_members] float64

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "mean_offdiag_cos": _num(self.mean_offdiag),
                "mean_offdiag_cos_ci": self.interval.to_json(), "norms": _floats(self.norms),
                "cosine": _floats(self.cosine)}


@dataclass
class SetGeometry:
    """Geometry of one vector set over its layers (members in the set's order)."""

    name: str
    members: list[str]
    layer_convention: str
    layers: list[LayerGeometry]

    @property
    def layer_ids(self) -> list[int]:
        return [g.layer for g in self.layers]

    def at(self, layer: int) -> LayerGeometry:
        for g in self.layers:
            if g.layer == layer:
                return g
        raise KeyError(f"{self.name}: no layer {layer}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "members": list(self.members), "layer_convention": self.layer_convention,
                "bootstrap": _bootstrap_json(self.layers[0].interval) if self.layers else None,
                "layers": [g.to_json() for g in self.layers]}


def _bootstrap_json(iv: Interval) -> dict[str, Any]:
    return {"method": BOOTSTRAP_METHOD, "rng": RNG, "seed": iv.seed, "n_resamples": iv.n_resamples,
            "confidence": iv.confidence}


def _stack(vectors: Mapping[str, Any], layers: Sequence[int], what: str) -> tuple[list[str], np.ndarray]:
    """``{member: [n_layers, d]}`` -> (members, float64 [n_members, n_layers, d]), shapes checked."""
    members = list(vectors)
    if len(members) < 2:
        raise ValueError(f"{what}: geometry needs at least 2 members, got {len(members)}")
    arrays = [np.asarray(vectors[m], dtype=np.float64) for m in members]
    shape = arrays[0].shape
    for m, a in zip(members, arrays, strict=True):
        if a.ndim != 2 or a.shape[0] != len(layers) or a.shape != shape:
            raise ValueError(f"{what}: member '{m}' has shape {list(a.shape)}, expected "
                             f"[{len(layers)}, {shape[1] if len(shape) == 2 else 'd'}]")
    return members, np.stack(arrays)


def set_geometry(name: str, vectors: Mapping[str, Any], layers: Sequence[int], *,
                 layer_convention: str = "hidden_states", seed: int = DEFAULT_SEED,
                 n_resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE) -> SetGeometry:
    """Per layer: cosine matrix, mean off-diagonal cosine with bootstrap interval, norms.

    ``vectors`` maps member -> array [n_layers, d] (row k is ``layers[k]``); member order is kept. Every layer
    uses the same seed, so each layer's interval can be redone on its own.
    """
    members, x = _stack(vectors, layers, name)
    out = []
    for k, layer in enumerate(layers):
        c = cosine_matrix(x[:, k, :])
        out.append(LayerGeometry(int(layer), c, mean_offdiag(c),
                                 bootstrap_mean_offdiag(c, seed=seed, n_resamples=n_resamples,
                                                        confidence=confidence),
                                 norms(x[:, k, :])))
    return SetGeometry(name, members, layer_convention, out)


# --------------------------------------------------------------------------- before/after pairs


#: ``axis: principal`` in a compare pair: the principal direction of the members' shifts
PRINCIPAL = "principal"


@dataclass
class AxisLayer:
    """The members' projection on one layer's shift axis (seed 004's "EM axis").

    The axis e (unit) is either one member's shift, ``after_m − before_m`` (e.g. the assistant persona under
    the base vs the fine-tuned model), or, for ``principal``, the first right singular vector of the shift
    matrix ``D = after − before`` [n_members, d] (uncentred: the direction shared by the shifts), signed so that
    the shifts' sum projects positively; ``explained`` is then σ₁² / Σσ², the share of ‖D‖²_F along it.
    """

    axis: str  # a member's name or "principal"
    explained: float | None  # principal only
    cos_before: np.ndarray  # cos(before_m, e) per member
    cos_after: np.ndarray  # cos(after_m, e)
    along: np.ndarray  # (after_m − before_m) · e, in the vectors' units
    orthogonal_share: np.ndarray  # ‖shift_m − (shift_m·e) e‖² / ‖shift_m‖² (NaN for a member that did not move)

    def to_json(self) -> dict[str, Any]:
        return {"axis": self.axis, "explained": None if self.explained is None else _num(self.explained),
                "cos_before": _floats(self.cos_before), "cos_after": _floats(self.cos_after),
                "along": _floats(self.along),
                "orthogonal_share": [None if not np.isfinite(v) else _num(float(v)) for v in self.orthogonal_share]}


def shift_axis(before: Any, after: Any, members: Sequence[str], axis: str) -> AxisLayer:
    """Project one layer's members (rows of ``before`` / ``after`` [n, d], in ``members`` order) on the shift
    axis named ``axis`` (a member, or :data:`PRINCIPAL`); see :class:`AxisLayer`."""
    xb, xa = _matrix(before, "before"), _matrix(after, "after")
    shifts = xa - xb
    explained = None
    if axis == PRINCIPAL:
        _, sv, vt = np.linalg.svd(shifts, full_matrices=False)
        if sv.size == 0 or sv[0] == 0:
            raise ValueError("no member moved: the principal shift axis is undefined")
        e = vt[0] * (1.0 if shifts.sum(axis=0) @ vt[0] >= 0 else -1.0)
        explained = float(sv[0] ** 2 / np.sum(sv**2))
    else:
        if axis not in members:
            raise ValueError(f"axis '{axis}' is not a member ({', '.join(members)}) nor '{PRINCIPAL}'")
        e = shifts[list(members).index(axis)]
        size = float(np.sqrt(e @ e))
        if size == 0:
            raise ValueError(f"axis '{axis}' did not move (after = before): its shift has no direction")
        e = e / size
    nb, na = norms(xb), norms(xa)
    if (nb == 0).any() or (na == 0).any():
        raise ValueError("a zero vector has no cosine with the axis")
    along = shifts @ e
    moved = np.einsum("ij,ij->i", shifts, shifts)
    rest = np.einsum("ij,ij->i", shifts - np.outer(along, e), shifts - np.outer(along, e))
    with np.errstate(invalid="ignore", divide="ignore"):
        orth = np.where(moved > 0, rest / np.where(moved > 0, moved, 1.0), np.nan)
    return AxisLayer(axis, explained, np.clip(xb @ e / nb, -1.0, 1.0), np.clip(xa @ e / na, -1.0, 1.0), along,
                     np.clip(orth, 0.0, 1.0))


@dataclass
class CompareLayer:
    """One layer of a before/after pair."""

    layer: int
    before: float  # mean off-diagonal cosine
    after: float
    change: float  # after - before
    change_interval: Interval  # paired bootstrap
    delta: np.ndarray  # cosine(after) - cosine(before), [n_members, n_members]
    member_cos: np.ndarray  # cos(before_m, after_m) per member, [n_members]
    norm_ratio: np.ndarray  # |after_m| / |before_m| per member
    axis: AxisLayer | None = None  # the projection on the pair's shift axis, when the manifest names one

    def to_json(self) -> dict[str, Any]:
        out = {"layer": self.layer, "mean_offdiag_cos_before": _num(self.before),
               "mean_offdiag_cos_after": _num(self.after), "change": _num(self.change),
               "change_ci": self.change_interval.to_json(),
               "member_cos_before_after": _floats(self.member_cos),
               "member_norm_ratio": _floats(self.norm_ratio), "delta": _floats(self.delta)}
        if self.axis is not None:
            out["shift_axis"] = self.axis.to_json()
        return out


@dataclass
class CompareGeometry:
    """A before/after pair of sets over the same members and layers."""

    before: str
    after: str
    members: list[str]
    layer_convention: str
    layers: list[CompareLayer]
    axis: str | None = None  # the shift axis the manifest names (a member or "principal")

    @property
    def layer_ids(self) -> list[int]:
        return [g.layer for g in self.layers]

    def at(self, layer: int) -> CompareLayer:
        for g in self.layers:
            if g.layer == layer:
                return g
        raise KeyError(f"{self.before} -> {self.after}: no layer {layer}")

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "members": list(self.members),
                "layer_convention": self.layer_convention, **({"shift_axis": self.axis} if self.axis else {}),
                "bootstrap": _bootstrap_json(self.layers[0].change_interval) if self.layers else None,
                "layers": [g.to_json() for g in self.layers]}


def compare_sets(before: Mapping[str, Any], after: Mapping[str, Any], layers: Sequence[int], *,
                 before_name: str = "before", after_name: str = "after",
                 layer_convention: str = "hidden_states", seed: int = DEFAULT_SEED,
                 n_resamples: int = DEFAULT_RESAMPLES,
                 confidence: float = DEFAULT_CONFIDENCE, axis: str | None = None) -> CompareGeometry:
    """Before/after/change of the mean off-diagonal cosine, the Δ matrix and each member's cos(before, after);
    with ``axis``, every member's projection on the shift axis at each layer (:func:`shift_axis`).

    Members are matched by name (order from ``before``); both sets must have exactly the same members, and
    their rows must be the same ``layers``: comparing different members or layers is refused, not aligned.
    """
    if set(before) != set(after):
        only_b = sorted(set(before) - set(after))
        only_a = sorted(set(after) - set(before))
        raise ValueError(f"{before_name} vs {after_name}: different members (only in {before_name}: "
                         f"{', '.join(only_b) or '-'}; only in {after_name}: {', '.join(only_a) or '-'})")
    members, xb = _stack(before, layers, before_name)
    _, xa = _stack({m: after[m] for m in members}, layers, after_name)
    if xb.shape != xa.shape:
        raise ValueError(f"{before_name} vs {after_name}: d differs ({xb.shape[2]} vs {xa.shape[2]})")
    out = []
    for k, layer in enumerate(layers):
        cb, ca = cosine_matrix(xb[:, k, :]), cosine_matrix(xa[:, k, :])
        mb, ma = mean_offdiag(cb), mean_offdiag(ca)
        nb, na = norms(xb[:, k, :]), norms(xa[:, k, :])
        member_cos = np.clip(np.einsum("ij,ij->i", xb[:, k, :], xa[:, k, :]) / (nb * na), -1.0, 1.0)
        out.append(CompareLayer(int(layer), mb, ma, ma - mb,
                                bootstrap_offdiag_change(cb, ca, seed=seed, n_resamples=n_resamples,
                                                         confidence=confidence),
                                ca - cb, member_cos, na / nb,
                                None if axis is None else shift_axis(xb[:, k, :], xa[:, k, :], members, axis)))
    return CompareGeometry(before_name, after_name, members, layer_convention, out, axis)


# --------------------------------------------------------------------------- across runs


_OFFSET = {"block": 0, "hidden_states": 1}  # hidden_states[i] is the output of block i - 1


def cross_run_cosines(this: Mapping[int, Any], theirs: Mapping[int, Any], *,
                      this_convention: str | None = None,
                      theirs_convention: str | None = None) -> dict[int, float]:
    """cos(this[layer], theirs[layer]) at the layers both have, keyed by ``this``'s layer numbers.

    Layer numbers are only comparable in one convention: when both conventions are given and differ,
    ``theirs`` is renumbered into ``this``'s first (hidden_states i == block i - 1), so an off-by-one between
    two runs is not silently compared. Returns ``{}`` when no layer is shared; d must agree.
    """
    if (this_convention is None) != (theirs_convention is None):
        raise ValueError("give both layer conventions or neither")
    shift = 0
    if this_convention is not None and theirs_convention is not None:
        for conv in (this_convention, theirs_convention):
            if conv not in _OFFSET:
                raise ValueError(f"unknown layer convention '{conv}' (use block or hidden_states)")
        shift = _OFFSET[this_convention] - _OFFSET[theirs_convention]
    mapped = {int(k) + shift: v for k, v in theirs.items()}
    out: dict[int, float] = {}
    for layer in sorted(set(int(k) for k in this) & set(mapped)):
        a = np.asarray(this[layer], dtype=np.float64).ravel()
        b = np.asarray(mapped[layer], dtype=np.float64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"layer {layer}: d differs ({a.size} vs {b.size})")
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        if na == 0 or nb == 0 or not (np.isfinite(na) and np.isfinite(nb)):
            raise ValueError(f"layer {layer}: zero or non-finite vector")
        out[layer] = float(np.clip(a @ b / (na * nb), -1.0, 1.0))
    return out
