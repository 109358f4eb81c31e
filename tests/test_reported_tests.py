"""The run's own tests: parsing and within-family Holm / BH, checked against the textbook formulas here."""

from __future__ import annotations

import pytest

from hubkit.errors import ManifestError
from hubkit.run.reported_tests import UNASSIGNED, adjust, parse_tests


def ref_holm(ps: list[float]) -> list[float]:
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - k) * ps[i]))
        out[i] = running
    return out


def ref_bh(ps: list[float]) -> list[float]:
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    # q_(k) = min over j >= k of p_(j) * m / j
    return [min(1.0, min(ps[order[j]] * m / (j + 1) for j in range(k, m))) for k in
            [order.index(i) for i in range(m)]]


ENTRIES = [
    {"name": "M1 A L20", "p": 0.0004, "test": "paired permutation", "alternative": "greater", "n_iter": 10000,
     "family": "M1"},
    {"name": "M1 A L27", "p": 0.03, "family": "M1"},
    {"name": "M1 B L20", "p": 0.01, "family": "M1"},
    {"name": "M3 LDA", "p": 0.2, "family": "M3"},
    {"name": "free 1", "p": 0.04},
    {"name": "free 2", "p": 0.001},
]


def test_adjust_within_families():
    tests = parse_tests(ENTRIES)
    adj = adjust(tests)
    assert [a.test.name for a in adj] == [e["name"] for e in ENTRIES]  # input order kept
    fams = {"M1": [0, 1, 2], "M3": [3], UNASSIGNED: [4, 5]}
    for idx in fams.values():
        ps = [ENTRIES[i]["p"] for i in idx]
        for i, h, b in zip(idx, ref_holm(ps), ref_bh(ps), strict=True):
            assert adj[i].p_holm == pytest.approx(h) and adj[i].p_bh == pytest.approx(b)
            assert adj[i].family_size == len(idx)
    assert adj[0].p_holm == pytest.approx(0.0012) and adj[0].p_bh == pytest.approx(0.0012)
    assert adj[3].p_holm == adj[3].p_bh == 0.2  # a family of one is not adjusted
    assert adj[4].test.family == UNASSIGNED
    assert adj[0].note is None
    assert adj[0].to_json()["n_iter"] == 10000


def test_impossible_permutation_p_is_flagged_not_changed():
    adj = adjust(parse_tests([{"name": "a", "p": 0.0, "n_iter": 1000},
                              {"name": "b", "p": 9.999e-05, "n_iter": 10000},
                              {"name": "c", "p": 0.0, "test": "t-test"}]))
    assert adj[0].test.p == 0.0 and "1/(n_iter+1)" in adj[0].note
    assert adj[1].note is None  # 1/10001 printed to 4 digits is not below the floor
    assert adj[2].note is None  # no n_iter: not a permutation test as far as we know


@pytest.mark.parametrize("entries, msg", [
    ({"name": "a"}, "must be a list"),
    ([{"name": "a", "p": 1.5}], "tests\\[0\\].p: must be a number in \\[0, 1\\]"),
    ([{"name": "a", "p": True}], "p: must be a number"),
    ([{"p": 0.1}], "tests\\[0\\].name: required"),
    ([{"name": "a", "p": 0.1, "alternative": "bigger"}], "alternative: 'bigger'"),
    ([{"name": "a", "p": 0.1, "n_iter": 0}], "n_iter: must be a positive integer"),
    ([{"name": "a", "p": 0.1, "pvalue": 0.1}], "unknown key 'pvalue'"),
    ([{"name": "a", "p": 0.1}, {"name": "a", "p": 0.2}], "test name 'a' appears twice"),
])
def test_parse_refusals(entries, msg):
    with pytest.raises(ManifestError, match=msg) as e:
        parse_tests(entries)
    assert str(e.value).startswith("hubkit.yaml: tests")
