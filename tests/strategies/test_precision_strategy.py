"""PrecisionStrategy on plain predicates: "passes iff S is kept", exact answers and check counts.

Verdicts: BAD = the failure is there (too much lowered), GOOD = passes. A candidate's items are the
keep-set (nodes left in fp32).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bisector.checks.base import Verdict
from bisector.strategies.base import ceil_log2
from bisector.strategies.precision import PrecisionStrategy
from tests.strategies import drive

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def passes_if_kept(needed):
    """GOOD iff every node of ``needed`` stays fp32."""
    s = frozenset(needed)
    return lambda keep: Verdict.GOOD if s <= keep else Verdict.BAD


def budget(k: int, n: int) -> int:
    """The issue's budget for the default mode: 2k * ceil(log2 N) + 1 checks, plus the 2 endpoints."""
    return 2 * k * ceil_log2(n) + 1 + 2


@st.composite
def cases(draw, max_n: int = 300):
    n = draw(st.integers(1, max_n))
    order = draw(st.permutations(range(n)))
    k = draw(st.integers(1, min(n, 6)))
    needed = draw(st.lists(st.sampled_from(order), min_size=k, max_size=k, unique=True))
    likely = draw(st.integers(0, n))
    return list(order), needed, likely


# ---------------------------------------------------------------------------------------- auto
@pytest.mark.parametrize("n,needed", [
    (40, [17]), (40, [0]), (40, [39]), (40, [3, 9]), (40, [2, 6, 10]), (39, [7, 8, 30]),
    (1000, [999]), (1000, [1, 500, 998]), (7, [0, 1, 2, 3, 4, 5, 6]), (1, [0]), (2, [1]),
])
def test_auto_finds_exactly_the_needed_nodes_within_budget(n, needed):
    run = drive(PrecisionStrategy(list(range(n))), passes_if_kept(needed))
    assert run.result["keep"] == sorted(needed)
    assert run.result["one_minimal"] is True
    assert run.checks <= budget(len(needed), max(n, 2))


def test_one_culprit_costs_ceil_log2_n_checks_in_topological_order():
    run = drive(PrecisionStrategy(list(range(1000))), passes_if_kept([617]))
    assert run.result["keep"] == [617]
    # endpoints, one binary search, then keeping 617 alone is confirmed; minimality is inferred
    assert run.checks == 2 + ceil_log2(1000) + 1
    assert run.result["checks_per_phase"] == {"search": ceil_log2(1000), "confirm": 1}


def test_likely_prefix_that_holds_the_culprits_is_settled_one_by_one():
    order = [9, 3, 5, 0, 1, 2, 4, 6, 7, 8]  # a sensitivity order: 9, 3, 5 stand out
    run = drive(PrecisionStrategy(order, likely=3), passes_if_kept([9, 3]))
    assert run.result["keep"] == [9, 3]  # in search order
    assert run.result["checks_per_phase"] == {"search": 1, "drop": 3}  # keep {9,3,5}; drop 5, 3, 9
    assert run.checks == 2 + 4


def test_likely_prefix_that_misses_a_culprit_costs_one_check_more_at_most():
    order = list(range(64))
    plain = drive(PrecisionStrategy(order), passes_if_kept([2, 40]))
    flagged = drive(PrecisionStrategy(order, likely=4), passes_if_kept([2, 40]))
    assert plain.result["keep"] == flagged.result["keep"] == [2, 40]
    assert flagged.checks <= plain.checks + 1


def test_sensitivity_order_beats_topological_order():
    n, needed = 200, [31, 97, 160]
    topo = drive(PrecisionStrategy(list(range(n))), passes_if_kept(needed))
    ranked = needed + [i for i in range(n) if i not in needed]
    sens = drive(PrecisionStrategy(ranked, likely=3), passes_if_kept(needed))
    assert topo.result["keep"] == sens.result["keep"] == needed
    assert sens.checks < topo.checks


@SETTINGS
@given(cases())
def test_auto_answer_is_exact_one_minimal_and_within_budget(case):
    order, needed, likely = case
    run = drive(PrecisionStrategy(order, likely=likely), passes_if_kept(needed))
    assert run.result["keep"] == sorted(needed, key=order.index)
    assert run.result["one_minimal"] is True
    if len(order) >= 4:
        assert run.checks <= budget(len(needed), len(order))
    assert frozenset(needed) in {c.items for c in run.checked} or len(needed) == len(order)


@SETTINGS
@given(cases(max_n=80))
def test_same_verdicts_give_the_same_candidates(case):
    order, needed, likely = case
    a = drive(PrecisionStrategy(order, likely=likely), passes_if_kept(needed))
    b = drive(PrecisionStrategy(order, likely=likely), passes_if_kept(needed))
    assert a.sequence == b.sequence and a.result == b.result


def test_dense_culprits_are_settled_one_by_one():
    needed = list(range(10, 30))  # 20 neighbours: one binary search each would cost ~120 checks
    run = drive(PrecisionStrategy(list(range(64))), passes_if_kept(needed))
    assert run.result["keep"] == needed and run.result["one_minimal"] is True
    assert run.result["checks_per_phase"].get("dense", 0) > 0
    assert run.checks < 70


@SETTINGS
@given(st.integers(4, 80), st.data())
def test_additive_errors_give_a_passing_one_minimal_answer(n, data):
    """Each lowered node adds its error; the check passes while the sum stays under a threshold."""
    errors = data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n).filter(any))
    threshold = data.draw(st.integers(0, sum(errors) - 1))
    order = data.draw(st.permutations(range(n)))

    def pred(keep):
        return Verdict.GOOD if sum(e for i, e in enumerate(errors) if i not in keep) <= threshold else Verdict.BAD

    run = drive(PrecisionStrategy(list(order)), pred)
    keep = frozenset(run.result["keep"])
    assert pred(keep) == Verdict.GOOD
    assert all(pred(keep - {x}) == Verdict.BAD for x in keep)  # 1-minimal
    assert run.result["one_minimal"] is True


def test_verify_minimal_checks_every_removal():
    run = drive(PrecisionStrategy(list(range(32)), verify_minimal=True), passes_if_kept([4, 20, 27]))
    assert run.result["keep"] == [4, 20, 27]
    proof = run.result["minimal_proof"]
    assert [p["verdict"] for p in proof] == ["bad"] * 3
    assert all(p["how"] in ("checked", "known") for p in proof)
    assert all(frozenset({4, 20, 27} - {x}) in {c.items for c in run.checked} for x in (4, 20, 27))


def test_inferred_minimality_says_so():
    run = drive(PrecisionStrategy(list(range(32))), passes_if_kept([4, 20]))
    assert {p["how"] for p in run.result["minimal_proof"]} <= {"inferred", "known"}


def test_a_non_monotone_check_still_gets_a_verified_passing_answer():
    # Keeping 5 alone breaks what keeping {1, 5} fixes: not monotone. The answer must pass anyway.
    def pred(keep):
        if {1, 5} <= keep or {8} <= keep and 5 not in keep:
            return Verdict.GOOD
        return Verdict.BAD

    run = drive(PrecisionStrategy(list(range(10))), pred)
    keep = frozenset(run.result["keep"])
    assert pred(keep) == Verdict.GOOD
    assert keep in {c.items for c in run.checked} or keep == frozenset(range(10))


@pytest.mark.parametrize("skipped", [[5], [3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8]])
def test_skipped_candidates_leave_a_passing_superset(skipped):
    # Candidates that keep exactly the first j nodes, for j in skipped, cannot be checked.
    order = list(range(16))

    def pred(keep):
        if any(keep == frozenset(order[:j]) for j in skipped):
            return Verdict.SKIP
        return Verdict.GOOD if {6, 11} <= keep else Verdict.BAD

    run = drive(PrecisionStrategy(order), pred)
    keep = set(run.result["keep"])
    assert {6, 11} <= keep
    assert pred(frozenset(keep)) == Verdict.GOOD


# ---------------------------------------------------------------------------------------- Polygraphy
@pytest.mark.parametrize("direction,expected", [("forward", list(range(31))), ("reverse", list(range(10, 40)))])
def test_bisect_keeps_the_shortest_prefix_or_suffix(direction, expected):
    run = drive(PrecisionStrategy(list(range(40)), mode="bisect", direction=direction), passes_if_kept([10, 20, 30]))
    assert run.result["keep"] == expected
    assert run.result["one_minimal"] is None
    assert run.checks <= 2 + ceil_log2(40)


@pytest.mark.parametrize("direction,expected_checks", [("forward", 2 + 31), ("reverse", 2 + 30)])
def test_linear_tries_k_1_2_3_until_one_passes(direction, expected_checks):
    run = drive(PrecisionStrategy(list(range(40)), mode="linear", direction=direction), passes_if_kept([10, 20, 30]))
    assert len(run.result["keep"]) == (31 if direction == "forward" else 30)
    assert run.checks == expected_checks
    assert all(c.phase in ("endpoints", "linear") for c in run.checked)


def test_polygraphy_modes_use_the_given_order():
    order = [3, 1, 2, 0]
    run = drive(PrecisionStrategy(order, mode="linear"), passes_if_kept([1]))
    assert run.result["keep"] == [3, 1]  # the first two of the order, in the order


# ---------------------------------------------------------------------------------------- contract
def test_endpoints_keep_nothing_and_everything():
    s = PrecisionStrategy([4, 2, 7], names={2: "b", 4: "a", 7: "c"})
    must_fail, must_pass = s.endpoints()
    assert must_fail.items == frozenset() and must_pass.items == frozenset({2, 4, 7})
    assert must_fail.kind == must_pass.kind == "keep"


def test_names_label_candidates_and_answer():
    names = [f"n{i}" for i in range(8)]
    run = drive(PrecisionStrategy(list(range(8)), names=names), passes_if_kept([5]))
    assert run.result["keep_names"] == ["n5"]
    assert any("n5" in a.candidate.label for a in run.asks)


@pytest.mark.parametrize("kwargs,message", [
    ({"items": []}, "nothing to search"), ({"items": [1, 1]}, "distinct"),
    ({"items": [1], "mode": "ddmin"}, "mode"), ({"items": [1], "direction": "up"}, "direction"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrecisionStrategy(**kwargs)
