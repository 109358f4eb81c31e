"""The run's own statistical tests (``tests:`` in hubkit.yaml): reported as the run computed them, not redone,
with Holm (family-wise error) and Benjamini-Hochberg (false discovery rate) adjustments within each family.

The adjustments reuse hubkit's ``holm`` and ``benjamini_hochberg`` (``hubkit.run.stats``, formerly
``hubkit.stats``). Tests without a ``family`` share one family, ``(unassigned)``: adjusting them together is
the conservative reading when the author did not say which tests belong together.

A permutation p-value cannot be below ``1/(n_iter + 1)`` when the observed statistic is counted among the
permutations (Phipson & Smyth 2010); a smaller one is kept as reported and flagged in ``note``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hubkit.errors import ManifestError
from hubkit.run.multiplicity import benjamini_hochberg, holm

ALTERNATIVES = ("greater", "less", "two-sided")
UNASSIGNED = "(unassigned)"
PERMUTATION_FLOOR_TOLERANCE = 0.99  # 1/(n+1) printed to 4 digits (9.999e-05 for n=10000) is not below it
_KEYS = ("name", "p", "test", "alternative", "n_iter", "family", "statistic", "n")


@dataclass(frozen=True)
class ReportedTest:
    """One test as the run reported it."""

    name: str
    p: float
    test: str | None = None
    alternative: str | None = None
    n_iter: int | None = None
    family: str = UNASSIGNED
    statistic: float | None = None
    n: int | None = None


@dataclass(frozen=True)
class AdjustedTest:
    test: ReportedTest
    family_size: int
    p_holm: float
    p_bh: float
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        t = self.test
        return {"name": t.name, "family": t.family, "test": t.test, "alternative": t.alternative,
                "n_iter": t.n_iter, "statistic": t.statistic, "n": t.n, "p": t.p,
                "family_size": self.family_size,
                "p_holm": self.p_holm, "p_bh": self.p_bh, "note": self.note}


def parse_tests(entries: Any, where: str = "hubkit.yaml: tests") -> list[ReportedTest]:
    """``tests:`` entries -> :class:`ReportedTest`; one-line :class:`~hubkit.errors.ManifestError` if not."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ManifestError(f"{where}: must be a list of tests")
    out: list[ReportedTest] = []
    for i, e in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(e, Mapping):
            raise ManifestError(f"{at}: must be a mapping with name and p")
        unknown = [k for k in e if k not in _KEYS]
        if unknown:
            raise ManifestError(f"{at}: unknown key '{unknown[0]}' (allowed: {', '.join(_KEYS)})")
        name = e.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ManifestError(f"{at}.name: required, a non-empty string")
        p = e.get("p")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ManifestError(f"{at}.p: must be a number in [0, 1], got {p!r}")
        alt = e.get("alternative")
        if alt is not None and alt not in ALTERNATIVES:
            raise ManifestError(f"{at}.alternative: '{alt}', must be one of {' | '.join(ALTERNATIVES)}")
        n_iter = e.get("n_iter")
        if n_iter is not None and (isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1):
            raise ManifestError(f"{at}.n_iter: must be a positive integer, got {n_iter!r}")
        n = e.get("n")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ManifestError(f"{at}.n: must be a positive integer, got {n!r}")
        stat = e.get("statistic")
        if stat is not None and (isinstance(stat, bool) or not isinstance(stat, (int, float))):
            raise ManifestError(f"{at}.statistic: must be a number, got {stat!r}")
        for key in ("test", "family"):
            if e.get(key) is not None and not isinstance(e.get(key), str):
                raise ManifestError(f"{at}.{key}: must be a string")
        out.append(ReportedTest(name, float(p), e.get("test"), alt, n_iter, e.get("family") or UNASSIGNED,
                                None if stat is None else float(stat), n))
    names = [t.name for t in out]
    dup = next((x for x in names if names.count(x) > 1), None)
    if dup is not None:
        raise ManifestError(f"{where}: test name '{dup}' appears twice")
    return out


def adjust(tests: Sequence[ReportedTest]) -> list[AdjustedTest]:
    """Holm and BH adjusted p-values within each family, in the input order."""
    by_family: dict[str, list[int]] = {}
    for i, t in enumerate(tests):
        by_family.setdefault(t.family, []).append(i)
    holm_p: dict[int, float] = {}
    bh_p: dict[int, float] = {}
    for idx in by_family.values():
        ps = [tests[i].p for i in idx]
        for i, h, b in zip(idx, holm(ps), benjamini_hochberg(ps), strict=True):
            holm_p[i], bh_p[i] = h, b
    out = []
    for i, t in enumerate(tests):
        note = None
        if t.n_iter is not None and t.p < PERMUTATION_FLOOR_TOLERANCE / (t.n_iter + 1):
            note = (f"p below 1/(n_iter+1) = {1.0 / (t.n_iter + 1):.2g}, the smallest a permutation test "
                    f"with {t.n_iter} permutations can give when the observed statistic is counted")
        out.append(AdjustedTest(t, len(by_family[t.family]), holm_p[i], bh_p[i], note))
    return out
