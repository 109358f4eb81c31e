"""hubkit.stats against independently computed values (hypergeometric sums, the textbook Wilson formula,
hand-worked Holm/BH), and the `hubkit stats` command."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from hubkit.cli import main
from hubkit.run.evaluations import Arm, Evaluation
from hubkit.run.stats import (
    analyze_counts,
    analyze_evaluation,
    benjamini_hochberg,
    fisher_exact,
    fisher_test_name,
    format_p,
    format_report,
    holm,
    mcnemar_exact,
    pass_patterns,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parent.parent


def _hypergeom_pmf(k: int, a_n: int, b_n: int, total_pass: int) -> float:
    """P(arm gets k of the passes) with margins fixed: the distribution Fisher's exact test conditions on."""
    return math.comb(a_n, k) * math.comb(b_n, total_pass - k) / math.comb(a_n + b_n, total_pass)


def _fisher_greater_by_hand(a: int, a_n: int, b: int, b_n: int) -> float:
    total = a + b
    return sum(_hypergeom_pmf(k, a_n, b_n, total) for k in range(a, min(a_n, total) + 1))


# --------------------------------------------------------------------------- Fisher


def test_fisher_one_sided_greater_matches_seed_value():
    assert fisher_exact(7, 89, 3, 89, "greater") == pytest.approx(0.1648, abs=5e-5)


def test_fisher_two_sided_is_about_double_here():
    assert fisher_exact(7, 89, 3, 89, "two-sided") == pytest.approx(0.3295, abs=5e-5)


def test_fisher_regression_one_sided_greater():
    # 4/89 vs 6/89: the arm did worse, so H1 "arm > baseline" gets a large p
    assert fisher_exact(4, 89, 6, 89, "greater") == pytest.approx(0.8352, abs=5e-5)


@pytest.mark.parametrize("a,a_n,b,b_n", [(7, 89, 3, 89), (4, 89, 6, 89), (1, 3, 0, 10), (0, 20, 0, 10), (5, 5, 0, 5)])
def test_fisher_greater_equals_hypergeometric_tail(a, a_n, b, b_n):
    assert fisher_exact(a, a_n, b, b_n, "greater") == pytest.approx(_fisher_greater_by_hand(a, a_n, b, b_n), rel=1e-9)


def test_fisher_less_mirrors_greater():
    # H1 arm < baseline for (a vs b) is H1 arm > baseline for (b vs a)
    assert fisher_exact(4, 89, 6, 89, "less") == pytest.approx(fisher_exact(6, 89, 4, 89, "greater"), rel=1e-12)


@pytest.mark.parametrize("args", [(90, 89, 3, 89), (1, 0, 1, 5), (-1, 5, 1, 5)])
def test_fisher_rejects_impossible_counts(args):
    with pytest.raises(ValueError):
        fisher_exact(*args)


def test_fisher_rejects_unknown_alternative():
    with pytest.raises(ValueError, match="alternative"):
        fisher_exact(7, 89, 3, 89, "bigger")


def test_test_names_state_sidedness_and_h1():
    assert fisher_test_name("greater") == "Fisher exact, one-sided, H1: arm > baseline"
    assert fisher_test_name("less") == "Fisher exact, one-sided, H1: arm < baseline"
    assert fisher_test_name("two-sided") == "Fisher exact, two-sided, H1: arm ≠ baseline"


COUNTS = [(0, 1), (1, 3), (0, 10), (3, 89), (7, 89), (4, 89), (6, 89), (12, 20), (20, 20), (5, 12), (0, 9)]


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_fisher_agrees_with_scipy_over_a_grid(alternative):
    from scipy.stats import fisher_exact as scipy_fisher

    for a, a_n in COUNTS:
        for b, b_n in COUNTS:
            want = scipy_fisher([[a, a_n - a], [b, b_n - b]], alternative=alternative).pvalue
            assert fisher_exact(a, a_n, b, b_n, alternative) == pytest.approx(want, rel=1e-9, abs=1e-15), (a, a_n, b, b_n)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_mcnemar_agrees_with_scipy_binomtest(alternative):
    from scipy.stats import binomtest

    for x in range(0, 13):
        for y in range(0, 13):
            if x + y:
                want = binomtest(x, x + y, 0.5, alternative=alternative).pvalue
                assert mcnemar_exact(x, y, alternative) == pytest.approx(want, rel=1e-9), (x, y)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_exact_tests_at_benchmark_scale_agree_with_scipy(alternative):
    """A 14k-20k-task benchmark (MMLU-sized arms): the weights come by recurrence, still exact integers (they
    took O(n²) time as one binomial per table: 86 s at 20,000 tasks); past EXACT_UP_TO, log-weights."""
    from scipy.stats import binomtest
    from scipy.stats import fisher_exact as scipy_fisher

    for a, a_n, b, b_n in [(10_000, 20_000, 9_999, 20_000), (7_100, 14_042, 6_900, 14_042), (5, 20_000, 0, 15_000),
                           (25_000, 50_000, 24_500, 50_000), (3, 30_000, 0, 30_000)]:  # the last two: floats
        want = scipy_fisher([[a, a_n - a], [b, b_n - b]], alternative=alternative).pvalue
        assert fisher_exact(a, a_n, b, b_n, alternative) == pytest.approx(want, rel=1e-6, abs=1e-300)
    for x, y in [(6_000, 5_800), (0, 9_000), (1_234, 1_300), (30_000, 29_000)]:
        want = binomtest(x, x + y, 0.5, alternative=alternative).pvalue
        assert mcnemar_exact(x, y, alternative) == pytest.approx(want, rel=1e-6, abs=1e-300)


def test_wilson_agrees_with_scipy():
    from scipy.stats import binomtest

    for k, n in COUNTS:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12), (k, n)


# --------------------------------------------------------------------------- McNemar


def test_mcnemar_five_vs_one():
    assert mcnemar_exact(5, 1) == pytest.approx(0.21875, abs=1e-12)
    # by hand: 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * (1 + 6) / 64
    assert mcnemar_exact(1, 5) == pytest.approx(2 * 7 / 64, abs=1e-12)


def test_mcnemar_one_sided_and_degenerate():
    assert mcnemar_exact(5, 1, "greater") == pytest.approx(7 / 64, abs=1e-12)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)


# --------------------------------------------------------------------------- Wilson


def _wilson_textbook(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson (1927): (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)."""
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def test_wilson_7_of_89_matches_textbook_formula():
    lo, hi = wilson_interval(7, 89)
    tlo, thi = _wilson_textbook(7, 89)
    assert lo == pytest.approx(tlo, abs=1e-12) and hi == pytest.approx(thi, abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.0386, 0.1536)


def test_wilson_zero_passes_upper_bound_is_z2_over_n_plus_z2():
    lo, hi = wilson_interval(0, 10)
    z2 = 1.959963984540054 ** 2
    assert lo == 0.0
    assert hi == pytest.approx(z2 / (10 + z2), abs=1e-12)


def test_wilson_all_pass_and_other_confidence():
    assert wilson_interval(5, 5)[1] == pytest.approx(1.0)
    lo90, hi90 = wilson_interval(7, 89, confidence=0.90)
    lo95, hi95 = wilson_interval(7, 89)
    assert lo95 < lo90 < 7 / 89 < hi90 < hi95


# --------------------------------------------------------------------------- multiplicity


def test_holm_by_hand():
    # sorted: 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bh_by_hand():
    # ranks 1..3: 0.01*3/1 = 0.03; 0.03*3/2 = 0.045; 0.04*3/3 = 0.04 -> step-up min from the top
    assert benjamini_hochberg([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.04, 0.04])
    assert benjamini_hochberg([0.6588, 0.1648]) == pytest.approx([0.6588, 0.3296])


def test_adjusted_never_below_raw_and_holm_not_below_bh():
    ps = [0.001, 0.2, 0.04, 0.03, 0.5, 0.049]
    h, b = holm(ps), benjamini_hochberg(ps)
    for p, ph, pb in zip(ps, h, b, strict=True):
        assert p <= pb <= ph <= 1.0


def test_single_p_is_unchanged():
    assert holm([0.2]) == [0.2] and benjamini_hochberg([0.2]) == [0.2]


# --------------------------------------------------------------------------- an evaluation


def _arm(i: str, passed: list[str], tasks: list[str], this: bool = False) -> Arm:
    per = {t: t in passed for t in tasks}
    return Arm(id=i, label=i.upper(), passes=sum(per.values()), n=len(tasks), this=this, tasks=per)


TASKS = [f"t{i:02d}" for i in range(20)]


def test_analyze_evaluation_three_arms_with_per_task_results():
    ev = Evaluation("bench", [
        _arm("base", ["t00", "t01"], TASKS),
        _arm("sft", ["t01", "t02"], TASKS),
        _arm("abl", ["t00", "t03", "t04", "t05", "t06", "t07"], TASKS, this=True),
    ], baseline="base", alternative="greater")
    st = analyze_evaluation(ev)
    assert st.test == "Fisher exact, one-sided, H1: arm > baseline"
    assert st.adjusted and st.comparisons == 2
    abl = next(a for a in st.arms if a.id == "abl")
    assert abl.p == pytest.approx(fisher_exact(6, 20, 2, 20))
    assert abl.p_holm == pytest.approx(holm([fisher_exact(2, 20, 2, 20), abl.p])[1])
    assert st.baseline_arm.p is None and st.this_arm.id == "abl"
    # pairs lead with the card's arm and end with the baseline
    assert [(p.a, p.b) for p in st.pairs] == [("abl", "sft"), ("abl", "base"), ("sft", "base")]
    ab = st.pairs[1]
    assert ab.a_only == ["t03", "t04", "t05", "t06", "t07"] and ab.both == ["t00"] and ab.b_only == ["t01"]
    assert ab.neither == 13 and ab.p == pytest.approx(mcnemar_exact(5, 1))
    labels = {p.label: p.tasks for p in st.patterns}
    assert labels["abl only"] == ["t03", "t04", "t05", "t06", "t07"]
    assert labels["abl ∩ base"] == ["t00"] and labels["sft ∩ base"] == ["t01"] and labels["sft only"] == ["t02"]
    assert st.n_tasks == 20 and st.unsolved == 12


def test_one_comparison_is_not_adjusted_and_no_baseline_means_no_test():
    st = analyze_counts([("abl", 7, 89), ("base", 3, 89)], baseline="base")
    assert not st.adjusted and st.arms[0].p_holm is None
    st = analyze_counts([("abl", 7, 89), ("base", 3, 89)])
    assert st.test is None and all(a.p is None for a in st.arms)
    assert "no baseline" in format_report([st])


def test_pass_patterns_order_singletons_first():
    pats = pass_patterns({"a": {"x": True, "y": True, "z": False}, "b": {"x": True, "y": False, "z": True}})
    assert [(p.label, p.tasks) for p in pats] == [("a only", ["y"]), ("b only", ["z"]), ("a ∩ b", ["x"])]


def test_format_p():
    assert format_p(0.16476) == "0.165"
    assert format_p(0.00012) == "1.2e-04"
    assert format_p(None) == "—"


def test_report_names_every_test():
    ev = Evaluation("bench", [_arm("base", ["t00"], TASKS), _arm("abl", ["t01", "t02"], TASKS, this=True)],
                    baseline="base", alternative="greater")
    text = format_report([analyze_evaluation(ev)])
    assert "p: Fisher exact, one-sided, H1: arm > baseline." in text
    assert "exact McNemar (binomial on the discordant tasks), two-sided: 2 vs 1 discordant tasks" in text


# --------------------------------------------------------------------------- the command


def test_cli_quick_counts_one_and_two_sided():
    r = CliRunner().invoke(main, ["stats", "--arm", "abl=7/89", "--arm", "base=3/89", "--baseline", "base"])
    assert r.exit_code == 0, r.output
    assert "0.165" in r.output and "Fisher exact, one-sided, H1: arm > baseline" in r.output
    assert "3.9–15.4 %" in r.output  # Wilson interval of 7/89
    r = CliRunner().invoke(main, ["stats", "--arm", "abl=7/89", "--arm", "base=3/89", "--baseline", "base",
                                  "--alternative", "two-sided"])
    assert r.exit_code == 0 and "0.330" in r.output and "two-sided" in r.output


@pytest.mark.parametrize("args", [
    ["--arm", "abl=7of89"],
    ["--arm", "abl=90/89"],
    ["--arm", "abl=7/89", "--baseline", "base"],
    ["--arm", "a=1/2", "--arm", "a=1/3"],
    [],
])
def test_cli_bad_counts_are_usage_errors(args):
    r = CliRunner().invoke(main, ["stats", *args])
    assert r.exit_code == 2, r.output


def test_cli_stats_of_a_run():
    r = CliRunner().invoke(main, ["stats", str(ROOT / "artifacts" / "refusal-abliteration")])
    assert r.exit_code == 0, r.output
    assert "0.165" in r.output and "Holm" in r.output
    assert "abl only: fix-git, hf-model-inference, log-summary-date-ranges, modernize-scientific-stack, qemu-startup (5)" in r.output


def test_cli_stats_of_a_run_with_alternative_override():
    r = CliRunner().invoke(main, ["stats", str(ROOT / "artifacts" / "refusal-abliteration"),
                                  "--alternative", "two-sided"])
    assert r.exit_code == 0, r.output
    assert "p: Fisher exact, two-sided, H1: arm ≠ baseline." in r.output
    abl = next(ln for ln in r.output.splitlines() if "abliterated Qwen3.5-4B" in ln)
    assert "0.330" in abl.split()  # raw two-sided p of 7/89 vs 3/89


def test_cli_stats_run_and_counts_together_is_a_usage_error():
    r = CliRunner().invoke(main, ["stats", str(ROOT / "artifacts" / "refusal-abliteration"), "--arm", "a=1/2"])
    assert r.exit_code == 2


def test_claims_of_significance_need_a_test_that_reaches_them():
    from hubkit.run.stats import check_claims, significance_claims

    ev = analyze_evaluation(Evaluation("tb", [Arm("abl", "abl", 7, 89), Arm("base", "base", 3, 89)], "base",
                                       "greater"))
    problems, caution = check_claims("positive", "abl is significant (p < 0.05) over base", [ev])
    assert len(problems) == 2 and all("0.165" in p and "Fisher" in p and "one-sided" in p for p in problems)
    assert caution is not None and "α = 0.05" in caution and "authors' reading" in caution
    assert check_claims("positive", "suggestive at this N; not significant", [ev]) == ([], caution)
    assert check_claims("positive", "significant", [ev], alpha=0.2)[0] == []  # declared alpha 0.2: 0.165 carries it
    assert significance_claims("no significant change; insignificant; non-significant") == []
    assert significance_claims("p ≤ 1e-3 overall") == [("p ≤ 1e-3", 0.001)]
    assert check_claims("regression", None, [ev]) == ([], None)
