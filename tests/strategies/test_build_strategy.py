"""The build hunt's strategy on plain predicates ("build i fails iff i % 3 == 2")."""

from __future__ import annotations

import pytest

from bisector.checks.base import Verdict
from bisector.strategies.build import BuildStrategy
from tests.strategies import drive


def every_third_fails(items: frozenset) -> Verdict:
    (i,) = items
    return Verdict.BAD if i % 3 == 2 else Verdict.GOOD


def test_until_bad_stops_at_the_first_failing_build():
    run = drive(BuildStrategy(until=Verdict.BAD), every_third_fails)
    assert [a.candidate.label for a in run.asks] == ["build 0", "build 1", "build 2"]
    assert run.result["reason"] == "build 2 was bad"
    assert run.result["bad_builds"] == [2] and run.result["good_builds"] == [0, 1]


def test_until_good_stops_at_the_first_passing_build():
    run = drive(BuildStrategy(until=Verdict.GOOD), lambda items: Verdict.BAD if 0 in items else Verdict.GOOD)
    assert run.result["builds"] == 2 and run.result["reason"] == "build 1 was good"


def test_a_number_of_builds_runs_exactly_that_many():
    run = drive(BuildStrategy(until=None, limit=30), every_third_fails)
    assert run.checks == 30
    r = run.result
    assert (r["builds"], r["good"], r["bad"], r["skip"]) == (30, 20, 10, 0)
    assert r["pass_rate"] == pytest.approx(20 / 30)
    assert r["bad_builds"] == list(range(2, 30, 3))
    assert r["reason"] == "built 30 time(s)"


def test_until_bad_with_a_limit_stops_at_the_limit_when_nothing_fails():
    run = drive(BuildStrategy(until=Verdict.BAD, limit=5), lambda items: Verdict.GOOD)
    assert run.result["builds"] == 5 and run.result["bad"] == 0


def test_skips_count_neither_good_nor_bad():
    run = drive(BuildStrategy(until=None, limit=4), lambda items: Verdict.SKIP if 1 in items else Verdict.GOOD)
    assert (run.result["good"], run.result["skip"], run.result["pass_rate"]) == (3, 1, 1.0)


def test_the_command_s_stop_rule_ends_the_hunt_between_builds():
    seen = []

    def stop(done: int):
        seen.append(done)
        return "8h spent" if done == 7 else None

    run = drive(BuildStrategy(until=None, stop=stop), every_third_fails)
    assert run.result["builds"] == 7 and run.result["reason"] == "8h spent"
    assert seen == list(range(8))


def test_candidates_are_builds_in_the_hunt_phase_and_speculation_is_the_next_builds():
    s = BuildStrategy(until=None, limit=4)
    s.lookahead = 2
    run = drive(s, every_third_fails)
    first = run.asks[0]
    assert (first.candidate.kind, first.candidate.phase, first.candidate.items) == ("build", "hunt", frozenset({0}))
    assert [c.label for c in first.speculate] == ["build 1", "build 2"]
    assert [c.label for c in run.asks[-1].speculate] == []  # nothing past the limit


def test_same_verdicts_same_builds_and_endpoints_are_none():
    assert BuildStrategy().endpoints() == (None, None)
    a = drive(BuildStrategy(until=None, limit=12), every_third_fails)
    b = drive(BuildStrategy(until=None, limit=12), every_third_fails)
    assert a.sequence == b.sequence and a.result == b.result


def test_a_hunt_without_an_end_is_refused():
    with pytest.raises(ValueError):
        BuildStrategy(until=None)
    with pytest.raises(ValueError):
        BuildStrategy(limit=0)


def test_confirm_alternates_the_two_arms_and_counts_each():
    from bisector.strategies.build import ConfirmStrategy

    run = drive(ConfirmStrategy(repeat=3), lambda items: Verdict.GOOD)
    assert [a.candidate.kind for a in run.asks] == ["away", "on"] * 3
    assert run.asks[0].candidate.phase == "forced away"
    assert run.result == {"away": {"good": 3, "bad": 0, "skip": 0}, "on": {"good": 3, "bad": 0, "skip": 0}}
    with pytest.raises(ValueError):
        ConfirmStrategy(repeat=0)


def test_skips_in_a_row_end_the_hunt_but_scattered_skips_do_not():
    from bisector.strategies.build import BUILDER_FAILING, SKIPS_IN_A_ROW

    scattered = drive(BuildStrategy(until=None, limit=40),
                      lambda items: Verdict.SKIP if min(items) % SKIPS_IN_A_ROW == 0 else Verdict.GOOD)
    assert scattered.result["builds"] == 40 and scattered.result["reason"] == "built 40 time(s)"
    broken = drive(BuildStrategy(until=Verdict.BAD, limit=100),
                   lambda items: Verdict.GOOD if min(items) < 3 else Verdict.SKIP)
    r = broken.result
    assert (r["builds"], r["skip"], r["good"]) == (3 + SKIPS_IN_A_ROW, SKIPS_IN_A_ROW, 3)
    assert r["reason"].startswith(BUILDER_FAILING) and r["skipped_in_a_row"] == SKIPS_IN_A_ROW
