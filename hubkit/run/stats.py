"""Statistics for pass/fail evaluations: pure functions of counts and per-task tables.

Every p-value hubkit prints carries the name of its test and its sidedness (a project rule): the
hand-written cards this replaces quoted one-sided Fisher p-values without saying so, and 7/89 vs 3/89
reads very differently as p = 0.165 (one-sided) and p = 0.33 (two-sided).

Conventions:
- Fisher exact compares an arm with the baseline on the 2×2 table ``[[arm passes, arm fails],
  [baseline passes, baseline fails]]``; ``greater`` means H1: the arm's pass rate is higher.
- McNemar is the exact (binomial) test on the discordant tasks of two arms run on the same tasks, and
  two-sided unless stated.
- Holm and Benjamini–Hochberg adjust the family of comparisons of one evaluation's arms with its baseline.

The exact tests are sums of binomial coefficients in Python integers, so they are exact up to the final
division and cost no scipy.stats import (1–2 s, more than the whole card's budget); beyond ``EXACT_UP_TO``
tasks the same sums run in floating point from log-weights. tests/test_stats.py checks them against
scipy.stats over a grid of counts and at benchmark scale.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hubkit.run.multiplicity import benjamini_hochberg, holm  # noqa: F401  (re-exported for callers)

if TYPE_CHECKING:
    from hubkit.run.evaluations import Arm, Evaluation

ALTERNATIVES = ("greater", "less", "two-sided")
#: tasks in a comparison up to which the exact tests sum exact integers (20,000 tasks: 0.2 s); beyond, the
#: same sums in floating point from log-weights (relative error ~1e-12, and a table counts as "no more likely"
#: within 1e-7 of the observed one for the two-sided test, as scipy does): 2×1M tasks in seconds, not hours
EXACT_UP_TO = 40_000
_H1 = {"greater": "arm > baseline", "less": "arm < baseline", "two-sided": "arm ≠ baseline"}
CONFIDENCE = 0.95


def _check_counts(passes: int, n: int, what: str = "arm") -> None:
    if n < 1 or passes < 0 or passes > n:
        raise ValueError(f"{what}: need 0 <= passes <= n and n >= 1, got {passes}/{n}")


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")


# --------------------------------------------------------------------------- tests


def _hypergeom_weights(passes: int, n: int, base_passes: int, base_n: int) -> tuple[range, list[int], int]:
    """Integer weights ``C(n, k) · C(base_n, K − k)`` of every table with the observed margins (K = all
    passes), indexed by the arm's passes k; P(k) = weight / C(n + base_n, K) exactly."""
    total = passes + base_passes
    lo, hi = max(0, total - base_n), min(n, total)
    w = math.comb(n, lo) * math.comb(base_n, total - lo)
    weights = [w]
    for k in range(lo, hi):  # the next table's weight by the ratio of binomials: exact (the quotient is the
        # integer C(n, k+1)·C(base_n, K−k−1)), and O(n) big-integer steps instead of O(n) binomials (O(n²))
        w = w * (n - k) * (total - k) // ((k + 1) * (base_n - total + k + 1))
        weights.append(w)
    return range(lo, hi + 1), weights, math.comb(n + base_n, total)


def _lcomb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _tail(logs: list[float], at: int, alternative: str) -> float:
    """The p of an exact test from the log-weights of every outcome (the observed one at index ``at``), summed
    in floating point relative to the largest weight (see EXACT_UP_TO)."""
    top = max(logs)
    w = [math.exp(v - top) for v in logs]
    if alternative == "greater":
        num = math.fsum(w[at:])
    elif alternative == "less":
        num = math.fsum(w[: at + 1])
    else:
        bound = w[at] * (1 + 1e-7)
        num = math.fsum(x for x in w if x <= bound)
    return min(1.0, num / math.fsum(w))


def fisher_exact(passes: int, n: int, base_passes: int, base_n: int, alternative: str = "greater") -> float:
    """Fisher's exact p for an arm (``passes/n``) against a baseline (``base_passes/base_n``).

    ``greater``: H1 is that the arm passes more often than the baseline; ``less`` the reverse;
    ``two-sided`` sums every table no more likely than the observed one. Computed in exact integer
    arithmetic (no rounding before the final division), which also avoids importing scipy.stats
    (over a second) on every ``hubkit card``; the tests check it against scipy.
    """
    _check_counts(passes, n)
    _check_counts(base_passes, base_n, "baseline")
    _check_alternative(alternative)
    if n + base_n > EXACT_UP_TO:
        total = passes + base_passes
        lo, hi = max(0, total - base_n), min(n, total)
        logs = [_lcomb(n, k) + _lcomb(base_n, total - k) for k in range(lo, hi + 1)]
        return _tail(logs, passes - lo, alternative)
    ks, weights, denom = _hypergeom_weights(passes, n, base_passes, base_n)
    observed = weights[passes - ks.start]
    if alternative == "greater":
        num = sum(w for k, w in zip(ks, weights, strict=True) if k >= passes)
    elif alternative == "less":
        num = sum(w for k, w in zip(ks, weights, strict=True) if k <= passes)
    else:
        num = sum(w for w in weights if w <= observed)
    return min(1.0, num / denom)


def mcnemar_exact(a_only: int, b_only: int, alternative: str = "two-sided") -> float:
    """Exact McNemar p: a binomial(a_only + b_only, 1/2) test on the discordant tasks.

    ``a_only``: tasks A passes and B fails; ``b_only``: the reverse. ``greater`` means H1: A passes
    more of the discordant tasks. With no discordant task there is no evidence either way: p = 1.
    Exact integer arithmetic, like :func:`fisher_exact`.
    """
    _check_alternative(alternative)
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only} and {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    if n > EXACT_UP_TO:
        return _tail([_lcomb(n, k) for k in range(n + 1)], a_only, alternative)
    weights = [1]
    for k in range(n):  # C(n, k+1) = C(n, k)·(n−k)/(k+1), exactly
        weights.append(weights[-1] * (n - k) // (k + 1))
    if alternative == "greater":
        num = sum(weights[a_only:])
    elif alternative == "less":
        num = sum(weights[: a_only + 1])
    else:
        num = sum(w for w in weights if w <= weights[a_only])
    return min(1.0, num / 2**n)


def wilson_interval(passes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a pass rate; unlike the normal approximation it stays inside [0, 1]
    and is usable at the small counts these runs have (0/10, 7/89)."""
    from statistics import NormalDist

    _check_counts(passes, n)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = passes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if passes == 0 else max(0.0, centre - half)  # exact ends: no 3e-17 from cancellation
    hi = 1.0 if passes == n else min(1.0, centre + half)
    return lo, hi


def fisher_test_name(alternative: str) -> str:
    """e.g. ``Fisher exact, one-sided, H1: arm > baseline``."""
    _check_alternative(alternative)
    sides = "two-sided" if alternative == "two-sided" else "one-sided"
    return f"Fisher exact, {sides}, H1: {_H1[alternative]}"


MCNEMAR_NAME = "exact McNemar (binomial on the discordant tasks), two-sided"


# --------------------------------------------------------------------------- an evaluation, analysed


@dataclass
class ArmStats:
    """One arm's counts, Wilson interval and (when there is a baseline) its test against it."""

    id: str
    label: str
    passes: int
    n: int
    rate: float
    ci_low: float
    ci_high: float
    this: bool = False
    baseline: bool = False
    per_task: bool = False
    p: float | None = None
    p_holm: float | None = None
    p_bh: float | None = None


@dataclass
class PairStats:
    """Two arms with per-task results: which tasks each passes and the exact McNemar p."""

    a: str
    b: str
    a_label: str
    b_label: str
    a_only: list[str]
    both: list[str]
    b_only: list[str]
    neither: int
    p: float
    test: str = MCNEMAR_NAME


@dataclass
class PassPattern:
    """Tasks passed by exactly this set of arms (the seeds' ``abl only`` / ``abl ∩ base`` lines)."""

    arms: list[str]
    tasks: list[str]

    @property
    def label(self) -> str:
        return f"{self.arms[0]} only" if len(self.arms) == 1 else " ∩ ".join(self.arms)


@dataclass
class EvaluationStats:
    name: str
    description: str | None
    arms: list[ArmStats]
    baseline: str | None
    alternative: str
    test: str | None  # the name of the test behind ArmStats.p, None without a baseline
    adjusted: bool  # Holm / BH given (more than one arm compared with the baseline)
    comparisons: int
    pairs: list[PairStats] = field(default_factory=list)
    patterns: list[PassPattern] = field(default_factory=list)
    n_tasks: int | None = None  # size of the shared task set when arms have per-task results
    unsolved: int | None = None  # tasks no arm with per-task results passes
    confidence: float = CONFIDENCE

    @property
    def baseline_arm(self) -> ArmStats | None:
        return next((a for a in self.arms if a.baseline), None)

    @property
    def this_arm(self) -> ArmStats | None:
        return next((a for a in self.arms if a.this), None)


def analyze_evaluation(ev: Evaluation, confidence: float = CONFIDENCE) -> EvaluationStats:
    """Every number the card and ``hubkit stats`` show for one evaluation."""
    arms: list[ArmStats] = []
    for a in ev.arms:
        lo, hi = wilson_interval(a.passes, a.n, confidence)
        arms.append(ArmStats(id=a.id, label=a.label, passes=a.passes, n=a.n, rate=a.passes / a.n,
                             ci_low=lo, ci_high=hi, this=a.this, baseline=a.id == ev.baseline,
                             per_task=a.tasks is not None))
    base = next((a for a in arms if a.baseline), None)
    compared = [a for a in arms if base is not None and a is not base]
    for a in compared:
        assert base is not None
        a.p = fisher_exact(a.passes, a.n, base.passes, base.n, ev.alternative)
    adjusted = len(compared) > 1
    if adjusted:
        raw = [a.p for a in compared]
        for a, ph, pb in zip(compared, holm(raw), benjamini_hochberg(raw), strict=True):  # type: ignore[arg-type]
            a.p_holm, a.p_bh = ph, pb

    paired = [a for a in ev.arms if a.tasks is not None]
    pairs: list[PairStats] = []
    for i, j in _pair_order(paired, ev.baseline):
        pairs.append(_pair(paired[i], paired[j]))
    lead = sorted(paired, key=lambda a: _rank(a, ev.baseline))
    patterns = pass_patterns({a.id: a.tasks for a in lead}) if len(paired) >= 3 else []  # type: ignore[misc]
    return EvaluationStats(
        name=ev.name, description=ev.description, arms=arms, baseline=ev.baseline,
        alternative=ev.alternative, test=fisher_test_name(ev.alternative) if base else None,
        adjusted=adjusted, comparisons=len(compared), pairs=pairs, patterns=patterns,
        n_tasks=len(paired[0].tasks) if paired else None,  # type: ignore[arg-type]
        unsolved=sum(1 for t in paired[0].tasks if not any(a.tasks[t] for a in paired)) if paired else None,  # type: ignore[union-attr,index]
        confidence=confidence,
    )


def _rank(arm: Arm, baseline: str | None) -> int:
    """Order of arms in overlap tables: the card's own arms first, the baseline last."""
    return 0 if arm.this else 2 if arm.id == baseline else 1


def _pair_order(arms: list[Arm], baseline: str | None) -> list[tuple[int, int]]:
    """Every pair once, led by the arm the card is about (``this`` first, the baseline second)."""
    idx = sorted(range(len(arms)), key=lambda i: (_rank(arms[i], baseline), i))
    return [(idx[x], idx[y]) for x in range(len(idx)) for y in range(x + 1, len(idx))]


def _pair(a: Arm, b: Arm) -> PairStats:
    pa = {t for t, ok in a.tasks.items() if ok}
    pb = {t for t, ok in b.tasks.items() if ok}
    a_only, b_only = sorted(pa - pb), sorted(pb - pa)
    neither = sum(1 for t in a.tasks if t not in pa and t not in pb)
    return PairStats(a=a.id, b=b.id, a_label=a.label, b_label=b.label, a_only=a_only, both=sorted(pa & pb),
                     b_only=b_only, neither=neither, p=mcnemar_exact(len(a_only), len(b_only)))


def pass_patterns(per_task: dict[str, dict[str, bool]]) -> list[PassPattern]:
    """Group passed tasks by the exact set of arms that pass them: arms alone first, then pairs, ..."""
    ids = list(per_task)
    groups: dict[tuple[str, ...], list[str]] = {}
    tasks = sorted(set().union(*[set(t) for t in per_task.values()]))
    for t in tasks:
        key = tuple(i for i in ids if per_task[i].get(t, False))
        if key:
            groups.setdefault(key, []).append(t)
    order = sorted(groups, key=lambda k: (len(k), [ids.index(i) for i in k]))
    return [PassPattern(arms=list(k), tasks=groups[k]) for k in order]


def analyze_counts(arms: list[tuple[str, int, int]], baseline: str | None = None,
                   alternative: str = "greater") -> EvaluationStats:
    """Quick counts (``hubkit stats --arm abl=7/89``): the same analysis without a run directory."""
    from hubkit.run.evaluations import Arm, Evaluation

    _check_alternative(alternative)
    for arm_id, passes, n in arms:
        _check_counts(passes, n, arm_id)
    ev = Evaluation(name="", arms=[Arm(id=i, label=i, passes=p, n=n) for i, p, n in arms],
                    baseline=baseline, alternative=alternative)
    return analyze_evaluation(ev)


# --------------------------------------------------------------------------- formatting (card and CLI)


def format_p(p: float | None) -> str:
    """Three decimals, or scientific below 0.001 (never a bare 0.000)."""
    if p is None:
        return "—"
    if p >= 0.001:
        return f"{p:.3f}"
    return f"{p:.1e}"


def format_pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def format_ci(lo: float, hi: float) -> str:
    return f"{100 * lo:.1f}–{100 * hi:.1f} %"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return [line(header), "  ".join("-" * w for w in widths), *[line(r).rstrip() for r in rows]]


def format_report(evaluations: list[EvaluationStats]) -> str:
    """Plain-text tables for the terminal (``hubkit stats``), every p-value with its test named."""
    out: list[str] = []
    for ev in evaluations:
        if out:
            out.append("")
        if ev.name:
            out.append(f"== {ev.name}" + (f" — {ev.description}" if ev.description else ""))
        header = ["", "arm", "passes/N", "rate", f"Wilson {ev.confidence:.0%} CI"]
        if ev.test:
            header.append(f"p vs {ev.baseline}")
            if ev.adjusted:
                header += ["Holm", "BH"]
        rows = []
        for a in ev.arms:
            role = "baseline" if a.baseline else "this" if a.this else ""
            row = [role, a.label, f"{a.passes}/{a.n}", format_pct(a.rate), format_ci(a.ci_low, a.ci_high)]
            if ev.test:
                row.append("—" if a.baseline else format_p(a.p))
                if ev.adjusted:
                    row += ["—" if a.baseline else format_p(a.p_holm), "—" if a.baseline else format_p(a.p_bh)]
            rows.append(row)
        out += _table(header, rows, right={2, 3, 5, 6, 7})
        if ev.test:
            out.append(f"p: {ev.test}.")
            if ev.adjusted:
                out.append(f"Holm (family-wise) and Benjamini–Hochberg (FDR) adjust the {ev.comparisons} "
                           f"comparisons with {ev.baseline}.")
        else:
            out.append("no baseline: no test (give a baseline to compare arms).")
        if ev.patterns:
            out.append("")
            out.append(f"tasks passed, by the arms that pass them ({ev.n_tasks} tasks):")
            for pat in ev.patterns:
                out.append(f"  {pat.label}: {', '.join(pat.tasks)} ({len(pat.tasks)})")
            out.append(f"  none of them: {ev.unsolved}")
        for pr in ev.pairs:
            out.append("")
            out.append(f"{pr.a} vs {pr.b}: {MCNEMAR_NAME}: {len(pr.a_only)} vs {len(pr.b_only)} "
                       f"discordant tasks, p = {format_p(pr.p)}")
            out.append(f"  {pr.a} only: {', '.join(pr.a_only) or '—'} ({len(pr.a_only)}) · "
                       f"{pr.a} ∩ {pr.b}: {', '.join(pr.both) or '—'} ({len(pr.both)}) · "
                       f"{pr.b} only: {', '.join(pr.b_only) or '—'} ({len(pr.b_only)}) · neither: {pr.neither}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- entry points for `hubkit stats`


def report_evaluations(evaluations: list[Evaluation], alternative: str | None = None) -> str:
    """Every evaluation tested as declared (or with ``alternative`` overriding the manifest)."""
    import dataclasses

    evs = evaluations
    if alternative is not None:
        _check_alternative(alternative)
        evs = [dataclasses.replace(ev, alternative=alternative) for ev in evs]
    return format_report([analyze_evaluation(ev) for ev in evs])


def report_counts(arms: list[tuple[str, int, int]], baseline: str | None = None,
                  alternative: str = "greater") -> str:
    """Quick counts without a run: ``[("abl", 7, 89), ("base", 3, 89)]``."""
    return format_report([analyze_counts(arms, baseline, alternative)])


# --------------------------------------------------------------------------- what the card may claim

_CLAIM = re.compile(r"(?<![A-Za-z-])(?<!non-)(?<!in)significan(?:t|ce)(?:ly)?|\bp\s*(?:<|≤|<=)\s*(\d*\.?\d+(?:e-?\d+)?)",
                    re.IGNORECASE)
_NEGATED = re.compile(r"\b(?:not|no|n't|without|nor)\s+(?:\w+\s+){0,2}$", re.IGNORECASE)


@dataclass
class BestTest:
    """The smallest p in the card, with what it is (for messages that name the test and its sidedness)."""

    p: float
    arm: str
    evaluation: str
    test: str
    alternative: str

    def __str__(self) -> str:
        sided = "" if "sided" in self.test else f", {_sided(self.alternative)}"
        return f"best p = {format_p(self.p)} ({self.test}{sided}, arm '{self.arm}' in '{self.evaluation}')"


def _sided(alternative: str) -> str:
    return "two-sided" if alternative == "two-sided" else "one-sided"


def best_test(evaluations: list[EvaluationStats]) -> BestTest | None:
    best = None
    for ev in evaluations:
        for a in ev.arms:
            if a.p is not None and (best is None or a.p < best.p):
                best = BestTest(a.p, a.id, ev.name, ev.test or "test", ev.alternative)
    return best


def significance_claims(text: str | None) -> list[tuple[str, float | None]]:
    """``(the words, the threshold they state or None)`` for each claim of significance in ``text``; negated
    ones ("not significant", "no significant") are not claims."""
    out = []
    for m in _CLAIM.finditer(text or ""):
        if _NEGATED.search(text[: m.start()][-40:]):  # type: ignore[index]
            continue
        out.append((m.group(0), float(m.group(1)) if m.group(1) else None))
    return out


def check_claims(status: str, note: str | None, evaluations: list[EvaluationStats],
                 alpha: float = 0.05) -> tuple[list[str], str | None]:
    """(claims no test carries, a caution for the card). A note that says "significant" or "p < x" needs an
    arm below that threshold; a ``positive`` status without any arm below ``alpha`` keeps the authors' word
    but the card says what the numbers are."""
    best = best_test(evaluations)
    problems = []
    for words, threshold in significance_claims(note):
        limit = threshold if threshold is not None else alpha
        if best is None or best.p >= limit:
            problems.append(f"status_note claims '{words}' but no test in the card reaches p < {limit:g}"
                            + (f" ({best})" if best else " (no arm is tested against a baseline)"))
    caution = None
    if status == "positive" and best is not None and best.p >= alpha:
        caution = (f"No arm is significant at α = {alpha:g}: {best}. The status is the authors' reading of "
                   "the run, not a statistical result.")
    return problems, caution
