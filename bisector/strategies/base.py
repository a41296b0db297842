"""The strategy contract, and the searches every strategy shares (bisect, ddmin).

A strategy's ``search()`` is a generator. It yields an :class:`Ask` (the candidate it needs a
verdict for, plus the candidates it would ask next, for speculative parallel checks) and receives
the :class:`Verdict` of ``ask.candidate``. It returns its result (a plain dict). Because a
strategy is a pure function of the verdicts it is told, the same verdicts always give the same
candidates: that one rule buys resume (replay the journal), caching, and ``-j N`` giving exactly
the answer of ``-j 1``.

Driving a strategy by hand, on a plain predicate::

    s = ReduceStrategy(n=8, preds=chain(8))
    gen, ask = s.search(), None
    ask = next(gen)
    while True:
        verdict = Verdict.BAD if 5 in ask.candidate.items else Verdict.GOOD
        try:
            ask = gen.send(verdict)
        except StopIteration as stop:
            result = stop.value
            break
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Generator, Iterable, Iterator

from bisector.checks.base import Verdict

# The search modes of reduce and precision: Polygraphy's --mode (bisect, linear), and auto.
MODES = ("auto", "bisect", "linear")
DEFAULT_LOOKAHEAD = 2  # guesses per ask when no engine says how many checks run at once


@dataclass(frozen=True)
class Candidate:
    """A value object: abstract items (node positions, a keep-set, a build number) + a label.

    ``kind`` separates candidate families of one strategy whose item sets could coincide.
    """

    items: frozenset
    label: str = ""
    phase: str = ""
    kind: str = ""

    @property
    def size(self) -> int:
        return len(self.items)

    def sorted_items(self) -> list:
        return sorted(self.items)


def smaller_first(items) -> tuple:
    """The one definition of "a smaller candidate" (as Hypothesis's shrinker has one sort key):
    fewer items first; among as many, the one whose sorted items come first (for reduce, the nodes
    earliest in the graph), so that ties never depend on the order verdicts came in.
    ``min(candidates, key=smaller_first)`` is the best of them."""
    return (len(items), sorted(items))


@dataclass(frozen=True)
class Ask:
    candidate: Candidate
    speculate: tuple[Candidate, ...] = ()


Search = Generator[Ask, Verdict, dict]


@dataclass
class Progress:
    """What a strategy says of itself while it runs (read by the engine's progress display)."""

    phase: str = ""
    remaining: int = 0  # estimated checks left
    size: int = 0  # items in the current best failing candidate
    phases: dict[str, int] = field(default_factory=dict)  # checks asked per phase
    status: str = ""  # one line for the live view, set by the command (the build hunt's top suspect)


class Strategy:
    """Base class: subclasses implement ``search`` and ``endpoints``."""

    name = "strategy"

    def __init__(self) -> None:
        self.progress = Progress()
        self.lookahead = DEFAULT_LOOKAHEAD  # guesses kept per ask; the engine sets jobs - 1

    def endpoints(self) -> tuple[Candidate, Candidate | None]:
        """(the candidate that must fail, the trivial candidate that must pass or None)."""
        raise NotImplementedError

    def search(self) -> Search:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Everything that changes the sequence of candidates (compared on resume)."""
        return {}

    def ask(self, candidate: Candidate, speculate: Iterable[Candidate] = ()) -> Ask:
        """Build the Ask for ``candidate`` and count it against its phase.

        ``speculate`` is read lazily, most likely first, and only ``self.lookahead`` guesses are
        built: with ``-j 1`` none are.
        """
        self.progress.phase = candidate.phase
        self.progress.phases[candidate.phase] = self.progress.phases.get(candidate.phase, 0) + 1
        return Ask(candidate, tuple(islice(speculate, max(0, self.lookahead))))

    def on_verdict(self, candidate: Candidate, verdict: Verdict) -> None:
        """Hook: called with every verdict the search receives (bookkeeping only)."""

    def check(self, candidate: Candidate, speculate: Iterable[Candidate] = ()) -> Generator[Ask, Verdict, Verdict]:
        """``verdict = yield from self.check(c)``: ask for one candidate and record its verdict."""
        verdict = yield self.ask(candidate, speculate)
        self.on_verdict(candidate, verdict)
        return verdict

    def track(self, search: Generator[Ask, Verdict, Any]) -> Generator[Ask, Verdict, Any]:
        """Run a shared search (``bisect``, ``ddmin``) and record every verdict it receives."""
        try:
            ask = next(search)
            while True:
                verdict = yield ask
                self.on_verdict(ask.candidate, verdict)
                ask = search.send(verdict)
        except StopIteration as stop:
            return stop.value


def ceil_log2(n: int) -> int:
    return max(0, (max(n, 1) - 1).bit_length())


def bisect(lo: int, hi: int, make: Callable[[int], Candidate], ask: Callable[..., Ask],
           progress: Progress, bad_side: str = "high") -> Generator[Ask, Verdict, tuple[int, int]]:
    """Binary search on a monotone predicate over integer positions ``lo < x < hi``.

    With ``bad_side="high"``: ``make(lo)`` is known good and ``make(hi)`` known bad; returns the
    final ``(lo, hi)`` with ``hi = lo + 1`` (``hi`` is the first bad position), or a wider pair
    when skips leave positions untestable. With ``bad_side="low"`` the roles flip (``lo`` bad,
    ``hi`` good; returns with ``lo`` the last bad position). A SKIP verdict removes that position
    from the search, as ``git bisect skip`` does, and the next untested position nearest the
    middle is tried instead.

    Guesses for ``-j N`` are the positions the next asks would test (see :func:`_lookahead`).
    """
    skipped: set[int] = set()
    moved_lo = False  # which end the last verdict moved: the guesses bet on it moving again
    while True:
        mid = _middle(lo, hi, skipped)
        if mid is None:
            return lo, hi
        progress.remaining = ceil_log2(sum(1 for x in range(lo + 1, hi) if x not in skipped) + 1)
        verdict = yield ask(make(mid), (make(x) for x in _lookahead(lo, mid, hi, moved_lo, skipped)))
        if verdict == Verdict.SKIP:
            skipped.add(mid)
        elif (verdict == Verdict.BAD) == (bad_side == "high"):
            hi, moved_lo = mid, False
        else:
            lo, moved_lo = mid, True


def _middle(lo: int, hi: int, skipped: set[int]) -> int | None:
    """The untested position of ``lo < x < hi`` nearest the middle (the smaller on a tie)."""
    mid = (lo + hi) // 2
    if lo < mid < hi and mid not in skipped:
        return mid
    open_ = [x for x in range(lo + 1, hi) if x not in skipped]
    return min(open_, key=lambda x: (abs(x - mid), x)) if open_ else None


def _lookahead(lo: int, mid: int, hi: int, moved_lo: bool, skipped: set[int]) -> Iterator[int]:
    """The positions bisect tests after ``mid``, level by level of its decision tree, so the most
    likely come first: the two of the next step, then the four of the step after, and so on.

    Within a level the bet is that the last verdict's end moves again: a culprit near one end moves
    the same end again and again, so ``-j 2``'s one guess keeps paying off there.
    """
    level = [(mid, hi, True), (lo, mid, False)] if moved_lo else [(lo, mid, False), (mid, hi, True)]
    while level:
        nxt = []
        for a, b, went_lo in level:
            m = _middle(a, b, skipped)
            if m is None:
                continue
            yield m
            pair = [(m, b, True), (a, m, False)]
            nxt += pair if went_lo else pair[::-1]
        level = nxt


def ddmin(items: list, make: Callable[[list], Candidate], ask: Callable[..., Ask],
          progress: Progress) -> Generator[Ask, Verdict, list]:
    """Zeller's ddmin by complement removal: returns a 1-minimal failing subset of ``items``.

    ``make(subset)`` builds the candidate; ``items`` itself is known to fail. Chunks are removed
    largest first (granularity 2, doubling when nothing can be removed), so a single culprit
    costs about 2*log2(n) checks, and the final round at granularity ``len(items)`` proves
    1-minimality: no single item can be removed. SKIP counts as "cannot remove".
    """
    current = list(items)
    n = 2
    while len(current) >= 2:
        size = len(current)
        chunks = [current[i * size // n:(i + 1) * size // n] for i in range(n)]
        chunks = [c for c in chunks if c]
        removed = False
        for k, chunk in enumerate(chunks):
            progress.remaining = max(1, len(chunks) - k) + ceil_log2(len(current))
            rest = [x for x in current if x not in set(chunk)]
            later = (make([x for x in current if x not in set(c)]) for c in chunks[k + 1:])
            verdict = yield ask(make(rest), later)
            if verdict == Verdict.BAD:
                current = rest
                n = max(n - 1, 2)
                removed = True
                progress.size = len(current)
                break
        if not removed:
            if n >= len(current):
                break
            n = min(len(current), 2 * n)
    return current
