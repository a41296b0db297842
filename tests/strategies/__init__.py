"""Strategy tests on plain predicates: no model, no engine, no files.

:func:`drive` plays the engine's part the way :class:`bisector.engine.Engine` does: the endpoints
first, then the search, answering each ask from a predicate, each distinct candidate checked once
(the verdict cache keyed by the candidate's items and kind).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bisector.checks.base import Verdict
from bisector.strategies.base import Ask, Candidate, Strategy

Predicate = Callable[[frozenset], Verdict]


@dataclass
class Run:
    result: dict
    asks: list[Ask] = field(default_factory=list)  # every ask, in order, speculation included
    checks: int = 0  # distinct candidates checked (endpoints included), cached ones not counted
    checked: list[Candidate] = field(default_factory=list)

    @property
    def sequence(self) -> list[tuple]:
        """The asks as plain values (candidate items and speculation), for comparing runs."""
        return [(a.candidate.kind, a.candidate.sorted_items(), a.candidate.phase,
                 [(c.kind, c.sorted_items()) for c in a.speculate]) for a in self.asks]


def fails_if_all(culprits) -> Predicate:
    """BAD iff every culprit is in the candidate (an interaction of several nodes)."""
    s = frozenset(culprits)
    return lambda items: Verdict.BAD if s <= items else Verdict.GOOD


def fails_if_any(culprits) -> Predicate:
    """BAD iff any culprit is in the candidate (several independent faults)."""
    s = frozenset(culprits)
    return lambda items: Verdict.BAD if s & items else Verdict.GOOD


def drive(strategy: Strategy, predicate: Predicate, max_asks: int = 100_000) -> Run:
    cache: dict[tuple, Verdict] = {}
    run = Run(result={})

    def verdict_of(c: Candidate) -> Verdict:
        key = (c.kind, c.items)
        if key not in cache:
            cache[key] = predicate(c.items)
            run.checks += 1
            run.checked.append(c)
        return cache[key]

    must_fail, must_pass = strategy.endpoints()
    if must_fail is not None:
        assert verdict_of(must_fail) == Verdict.BAD, "the predicate does not fail the full subject"
    if must_pass is not None:
        assert verdict_of(must_pass) == Verdict.GOOD, "the predicate fails the trivial subject"
    search = strategy.search()
    try:
        ask = next(search)  # a search may need nothing (a one-node model): StopIteration at once
        while True:
            run.asks.append(ask)
            assert len(run.asks) <= max_asks, "the search does not terminate"
            ask = search.send(verdict_of(ask.candidate))
    except StopIteration as stop:
        run.result = stop.value
    return run
