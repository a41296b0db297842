"""The ranking: the exact test against independently computed values, a planted one-way flaky
culprit that the ranking finds and Polygraphy's set difference loses, and the verdict's words."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from bisector.build.ranking import (Suspect, builds_needed, fisher_greater, is_sure, odds_ratio, rank,
                                    set_difference, verdict)


def exact_greater(a: int, b: int, c: int, d: int) -> Fraction:
    """P(X >= a), X hypergeometric, as exact fractions of binomial coefficients."""
    n, bad, with_ = a + b + c + d, a + c, a + b
    total = math.comb(n, with_)
    return sum((Fraction(math.comb(bad, x) * math.comb(n - bad, with_ - x), total)
                for x in range(a, min(bad, with_) + 1)), Fraction(0))


@pytest.mark.parametrize("table, expected", [
    ((3, 1, 1, 3), Fraction(17, 70)),            # Fisher's lady tasting tea: 16/70 + 1/70
    ((4, 0, 0, 4), Fraction(1, 70)),             # every cup right
    ((20, 0, 0, 20), Fraction(1, math.comb(40, 20))),
    ((0, 5, 5, 0), Fraction(1)),
    ((1, 9, 11, 3), 1 - Fraction(66, math.comb(24, 10))),  # against: only X = 0 is excluded
])
def test_fisher_known_tables(table, expected):
    assert fisher_greater(*table) == pytest.approx(float(expected), rel=1e-12)


def test_fisher_against_exact_fractions():
    rng = random.Random(7)
    for _ in range(300):
        table = tuple(rng.randrange(0, 25) for _ in range(4))
        assert fisher_greater(*table) == pytest.approx(float(exact_greater(*table)), rel=1e-9, abs=1e-300)


@given(st.integers(1, 30), st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))
def test_more_failures_with_the_pair_is_stronger_evidence(a, b, c, d):
    p = fisher_greater(a, b, c, d)
    assert 0.0 <= p <= 1.0
    assert fisher_greater(a + 1, b, c, d) <= p + 1e-12  # one more failing build with the pair
    assert fisher_greater(a, b, c + 1, d) >= p - 1e-12  # one more failing build without it


def test_odds_ratio_and_json():
    assert odds_ratio(4, 2, 1, 4) == 8.0
    assert odds_ratio(4, 2, 0, 4) == math.inf and math.isnan(odds_ratio(0, 2, 0, 4))
    s = Suspect("a", "t", 0.5, math.inf, 0.3, 1, 2, 0, 4)
    assert s.to_json() == {"layer": "a", "tactic": "t", "p_value": 0.5, "odds_ratio": "inf", "ochiai": 0.3,
                           "bad_with": 1, "good_with": 2, "bad_without": 0, "good_without": 4}


def flaky_builds(seed: int, layers: int = 12, culprit=("layer5", "b"), fail_prob: float = 0.5,
                 failing: int = 20) -> list:
    """Random builds (each layer picks tactic a or b) until ``failing`` have failed; a build fails
    with ``fail_prob`` when it chose the culprit, and never otherwise."""
    rng = random.Random(seed)
    builds = []
    while sum(f for _, f in builds) < failing:
        tactics = {f"layer{i}": rng.choice("ab") for i in range(layers)}
        chosen = tactics[culprit[0]] == culprit[1]
        builds.append((tactics, chosen and rng.random() < fail_prob))
    return builds


def test_ranking_finds_a_one_way_flaky_culprit_that_set_difference_loses():
    builds = flaky_builds(seed=1)
    suspects = rank(builds)
    top = suspects[0]
    assert (top.layer, top.tactic) == ("layer5", "b")
    assert top.bad_with == 20 and top.bad_without == 0 and top.good_with > 0
    assert top.ochiai == pytest.approx(20 / math.sqrt(20 * (20 + top.good_with)))
    assert ("layer5", "b") not in set_difference(builds)  # a passing build used it
    assert is_sure(suspects)
    assert verdict(suspects, builds).startswith("Sure: layer5 tactic b goes with the failures")
    assert sum(s.bad_with + s.good_with for s in suspects) == len(builds) * 12  # every pair counted once


def test_ranking_order_and_counts_on_a_small_table():
    builds = [({"x": "1", "y": "1"}, True), ({"x": "1", "y": "2"}, True), ({"x": "2", "y": "1"}, False),
              ({"x": "2", "y": "2"}, False), ({"x": "1", "y": "1"}, False)]
    suspects = rank(builds)
    assert [(s.layer, s.tactic) for s in suspects][:1] == [("x", "1")]
    x1 = suspects[0]
    assert (x1.bad_with, x1.good_with, x1.bad_without, x1.good_without) == (2, 1, 0, 2)
    assert x1.p_value == pytest.approx(0.3)  # C(3,2)C(2,0)... = 3/10
    assert [s.p_value for s in suspects] == sorted(s.p_value for s in suspects)
    assert set_difference(builds) == []  # x=1 passed once: Polygraphy finds nothing


def test_set_difference_is_polygraphys_rule():
    builds = [({"x": "1", "y": "1"}, True), ({"x": "2", "y": "1"}, False), ({"x": "3", "y": "2"}, True)]
    assert set_difference(builds) == [("x", "1"), ("x", "3"), ("y", "2")]


def test_verdict_without_failures_or_without_passes():
    assert verdict([], []).startswith("No failing build")
    builds = [({"x": "1"}, False)] * 3
    assert "No failing build among 3" in verdict(rank(builds), builds)
    builds = [({"x": "1"}, True), ({"x": "2"}, True)]
    assert verdict(rank(builds), builds).startswith("All 2 builds failed")


def test_verdict_not_sure_yet_estimates_the_builds_needed():
    builds = flaky_builds(seed=3, failing=2)
    suspects = rank(builds)
    assert not is_sure(suspects)
    text = verdict(suspects, builds)
    assert text.startswith("Not sure yet: the top suspect is")
    more = builds_needed(suspects, len(builds))
    assert more is not None and f"about {more} more builds" in text
    # the estimate is of the right size: at 5x the failing builds the planted culprit is sure
    assert is_sure(rank(flaky_builds(seed=3, failing=10)))


def test_verdict_when_two_pairs_were_always_chosen_together():
    builds = [({"x": "1", "y": "1"}, True), ({"x": "1", "y": "1"}, False), ({"x": "2", "y": "2"}, False)] * 4
    text = verdict(rank(builds), builds)
    assert text.startswith("Not sure: x tactic 1 and y tactic 1 were chosen in the same builds")
    assert "bisector confirm" in text


def _hunt(rng: random.Random, builds: int, culprit: bool, confidence: float) -> int | None:
    """A simulated `--confidence` hunt, ranked after every build as `suspects_rule` does: four
    layers of three tactics each chosen at random; a build fails at random (15%) or, with
    ``culprit``, whenever l1 picked tactic b. The build at which it stopped, or None."""
    from bisector.build.ranking import confident

    done: list = []
    for n in range(1, builds + 1):
        tactics = {f"l{k}": rng.choice("abc") for k in range(4)}
        failed = (culprit and tactics["l1"] == "b") or rng.random() < 0.15
        done.append((tactics, failed))
        if any(f for _, f in done) and confident(rank(done), n, confidence):
            return n
    return None


def test_confidence_stop_is_a_sequential_test_without_false_alarms():
    """Failures independent of tactics: the stop rule, looked at after each of 200 builds, never
    says sure in 100 seeded hunts (looking after every build at the uncorrected p x pairs said sure
    in 2-3% of such hunts); a planted culprit still stops the hunt, and the verdict then agrees."""
    rng = random.Random(2026)
    false_stops = [seed for seed in range(100) if _hunt(random.Random(seed), 200, False, 0.9) is not None]
    assert false_stops == []
    stopped = _hunt(rng, 200, True, 0.9)
    assert stopped is not None and stopped < 100
    rng = random.Random(2026)
    builds = []
    for _ in range(stopped):
        tactics = {f"l{k}": rng.choice("abc") for k in range(4)}
        builds.append((tactics, tactics["l1"] == "b" or rng.random() < 0.15))
    s = rank(builds)
    assert (s[0].layer, s[0].tactic) == ("l1", "b")
    assert verdict(s, builds, 0.9).startswith("Sure")



def test_verdict_names_the_failing_builds_the_top_suspect_does_not_explain():
    """Two flaky layers: a fails with tactic x, b with tactic y; 3 failing builds had b's y only."""
    builds = ([({"a": "x", "b": "z"}, True)] * 12 + [({"a": "w", "b": "y"}, True)] * 3
              + [({"a": "w", "b": "z"}, False)] * 12)
    words = verdict(rank(builds), builds)
    assert "does not explain 3 of the 15 failing builds" in words and "another cause" in words
    clean = builds[:12] + builds[15:]
    assert "another cause" not in verdict(rank(clean), clean)
