"""ReduceStrategy and the shared searches (bisect, ddmin) on plain predicates, exact results.

Hypothesis's rule: drive one pass on a plain predicate ("fails iff {3, 17} is in the candidate")
and assert the exact answer, not just a property of it.
"""

from __future__ import annotations

from itertools import islice

import pytest

from bisector.checks.base import Verdict
from bisector.strategies.base import Ask, Candidate, Progress, bisect, ceil_log2, ddmin
from bisector.strategies.reduce import ReduceStrategy
from tests.strategies import drive, fails_if_all, fails_if_any

B, G, S = Verdict.BAD, Verdict.GOOD, Verdict.SKIP


def chain(n: int) -> list[frozenset[int]]:
    return [frozenset({i - 1}) if i else frozenset() for i in range(n)]


def run_search(gen, verdict_of) -> tuple[object, list[Ask]]:
    """Drive a bare search generator (bisect, ddmin); every ask is answered by ``verdict_of(items)``."""
    asks = []
    try:
        ask = next(gen)
        while True:
            asks.append(ask)
            ask = gen.send(verdict_of(ask.candidate.items))
    except StopIteration as stop:
        return stop.value, asks


def pos(x: int) -> Candidate:
    return Candidate(frozenset({x}), label=f"at {x}")


def asker(lookahead: int):
    """``Strategy.ask`` without a strategy: keeps the first ``lookahead`` guesses."""
    return lambda candidate, speculate=(): Ask(candidate, tuple(islice(speculate, lookahead)))


ask2 = asker(2)  # -j 3


# ------------------------------------------------------------------------------------- bisect
def test_bisect_finds_the_first_bad_position():
    result, asks = run_search(bisect(-1, 15, pos, ask2, Progress()), lambda it: B if min(it) >= 9 else G)
    assert result == (8, 9)
    assert [min(a.candidate.items) for a in asks] == [7, 11, 9, 8]
    assert len(asks) <= ceil_log2(16)


def test_bisect_speculates_on_both_next_midpoints():
    _, asks = run_search(bisect(-1, 15, pos, ask2, Progress()), lambda it: B if min(it) >= 9 else G)
    assert [sorted(min(c.items) for c in a.speculate) for a in asks[:2]] == [[3, 11], [9, 13]]


def test_bisect_guesses_deeper_levels_for_more_jobs_most_likely_first():
    """-j 7: the two positions of the next step, then the four of the step after, each level
    betting that the end the last verdict moved moves again."""
    _, asks = run_search(bisect(-1, 15, pos, asker(6), Progress()), lambda it: B if min(it) >= 9 else G)
    assert [min(c.items) for c in asks[0].speculate] == [3, 11, 1, 5, 13, 9]
    assert [min(c.items) for c in asks[1].speculate] == [13, 9, 14, 12, 8, 10]  # 7 was good: lo moved
    # Whatever the verdicts, the next ask is always among the guesses made before it.
    for a, b in zip(asks, asks[1:]):
        assert b.candidate.items in {c.items for c in a.speculate}


def test_no_guess_is_built_with_one_job():
    made = []

    def make(x):
        made.append(x)
        return pos(x)

    _, asks = run_search(bisect(-1, 1000, make, asker(0), Progress()), lambda it: B if min(it) >= 9 else G)
    assert made == [min(a.candidate.items) for a in asks]  # only what was asked


def test_bisect_skips_like_git_bisect_skip():
    """Positions 8 and 9 cannot be tested: the first bad one is 8, 9 or 10 (git bisect's answer)."""
    def verdict(items):
        x = min(items)
        return S if x in (8, 9) else (B if x >= 9 else G)

    result, asks = run_search(bisect(-1, 15, pos, ask2, Progress()), verdict)
    assert result == (7, 10)
    asked = [min(a.candidate.items) for a in asks]
    assert asked == [7, 11, 9, 8, 10]
    assert len(set(asked)) == len(asked)  # a skipped position is never asked again


def test_bisect_all_skipped_returns_the_endpoints():
    result, asks = run_search(bisect(0, 6, pos, ask2, Progress()), lambda it: S)
    assert result == (0, 6)
    assert sorted(min(a.candidate.items) for a in asks) == [1, 2, 3, 4, 5]


def test_bisect_bad_side_low_finds_the_last_bad_position():
    result, _ = run_search(bisect(0, 12, pos, ask2, Progress(), bad_side="low"), lambda it: B if min(it) <= 4 else G)
    assert result == (4, 5)


def test_bisect_with_nothing_between_asks_nothing():
    result, asks = run_search(bisect(3, 4, pos, ask2, Progress()), lambda it: pytest.fail("asked"))
    assert result == (3, 4) and asks == []


# ------------------------------------------------------------------------------------- ddmin
def subset(items) -> Candidate:
    return Candidate(frozenset(items))


def test_ddmin_exact_pair():
    result, asks = run_search(ddmin(list(range(20)), subset, ask2, Progress()), fails_if_all({3, 17}))
    assert result == [3, 17]
    # ddmin may ask again for a candidate it saw (the engine's cache answers): count distinct ones
    assert len({a.candidate.items for a in asks}) <= 2 * 2 * ceil_log2(20)


def test_ddmin_single_culprit_costs_about_2_log2_n():
    result, asks = run_search(ddmin(list(range(64)), subset, ask2, Progress()), fails_if_all({41}))
    assert result == [41]
    assert len(asks) <= 2 * ceil_log2(64)


def test_ddmin_skip_means_cannot_remove():
    """Every candidate without 5 is untestable: 5 stays, the rest is still minimized."""
    def verdict(items):
        if 5 not in items:
            return S
        return B if {3, 17} <= items else G

    result, _ = run_search(ddmin(list(range(20)), subset, ask2, Progress()), verdict)
    assert result == [3, 5, 17]


def test_ddmin_all_skipped_keeps_everything():
    result, _ = run_search(ddmin(list(range(6)), subset, ask2, Progress()), lambda it: S)
    assert result == list(range(6))


def test_ddmin_result_is_one_minimal_for_three_culprits():
    pred = fails_if_all({0, 9, 10})
    result, _ = run_search(ddmin(list(range(16)), subset, ask2, Progress()), pred)
    assert result == [0, 9, 10]


# ------------------------------------------------------------------------------------- ReduceStrategy
def test_reduce_exact_pair_on_a_chain():
    run = drive(ReduceStrategy(20, chain(20)), fails_if_all({3, 17}))
    assert run.result["nodes"] == [3, 17]
    assert run.result["node_names"] == ["3", "17"]
    assert run.result["original_nodes"] == 20
    assert sum(run.result["checks_per_phase"].values()) == len(run.asks)


def test_reduce_exact_pair_with_names_and_proof():
    names = [f"n{i}" for i in range(20)]
    run = drive(ReduceStrategy(20, chain(20), names=names, verify_minimal=True), fails_if_all({3, 17}))
    assert run.result["node_names"] == ["n3", "n17"]
    assert run.result["minimal_proof"] == [{"node": "n3", "verdict": "good"}, {"node": "n17", "verdict": "good"}]
    assert run.result["one_minimal"] is True


def test_reduce_single_culprit_sequence_is_exactly_bisection_then_alone():
    run = drive(ReduceStrategy(8, chain(8)), fails_if_all({5}))
    assert [(a.candidate.phase, a.candidate.sorted_items()) for a in run.asks] == [
        ("suffix", [0, 1, 2, 3]),
        ("suffix", [0, 1, 2, 3, 4, 5]),
        ("suffix", [0, 1, 2, 3, 4]),
        ("prefix", [5]),
    ]
    assert run.result["nodes"] == [5]
    assert run.checks == 1 + ceil_log2(8) + 1  # the full model, the bisection, the culprit alone
    assert run.result["min_good"] == [0, 1, 2, 3]  # the passing candidate closest in size


def test_reduce_independent_faults_gives_the_earliest():
    run = drive(ReduceStrategy(30, chain(30)), fails_if_any({12, 25}))
    assert run.result["nodes"] == [12]


def test_reduce_culprit_without_ancestors_is_checked_before_it_is_answered():
    """Two independent nodes, failing only together: node 1 alone must not be the answer."""
    run = drive(ReduceStrategy(2, [frozenset(), frozenset()]), fails_if_all({0, 1}))
    assert run.result["nodes"] == [0, 1]
    run = drive(ReduceStrategy(2, [frozenset(), frozenset()]), fails_if_all({1}))
    assert run.result["nodes"] == [1]
    assert frozenset({1}) in {c.items for c in run.checked}


def test_reduce_culprits_outside_the_cone_fall_back_to_a_verified_set():
    # 0 -> 1 -> 2 and 3 -> 4 (independent); fails iff 1 and 4 are both there.
    preds = [frozenset(), frozenset({0}), frozenset({1}), frozenset(), frozenset({3})]
    run = drive(ReduceStrategy(5, preds), fails_if_all({1, 4}))
    assert run.result["nodes"] == [1, 4]


def test_reduce_one_node_model_needs_no_check():
    run = drive(ReduceStrategy(1, [frozenset()]), fails_if_all({0}))
    assert run.result["nodes"] == [0] and run.asks == [] and run.checks == 1


def test_reduce_no_reduce_inputs_stops_at_the_failing_prefix():
    run = drive(ReduceStrategy(20, chain(20), reduce_inputs=False), fails_if_all({3, 17}))
    assert run.result["nodes"] == list(range(18))


def test_reduce_no_reduce_outputs_keeps_the_tail():
    run = drive(ReduceStrategy(20, chain(20), reduce_outputs=False), fails_if_all({3}))
    assert run.result["nodes"] == [3]


@pytest.mark.parametrize("mode", ["bisect", "linear"])
def test_reduce_polygraphy_modes_find_a_single_culprit_on_a_chain(mode):
    run = drive(ReduceStrategy(16, chain(16), mode=mode), fails_if_all({6}))
    assert run.result["nodes"] == [6]
    phases = run.result["checks_per_phase"]
    assert set(phases) == {"outputs", "inputs"}
    if mode == "linear":
        assert phases["outputs"] == 16  # every index is tried
    else:
        assert phases["outputs"] <= ceil_log2(16) + 1


def test_reduce_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ReduceStrategy(3, chain(3), mode="fast")
    with pytest.raises(ValueError):
        ReduceStrategy(0, [])


def test_reduce_params_name_everything_that_changes_the_search():
    p = ReduceStrategy(4, chain(4), mode="linear", verify_minimal=True).params()
    assert p == {"n": 4, "mode": "linear", "reduce_inputs": True, "reduce_outputs": True, "verify_minimal": True}
