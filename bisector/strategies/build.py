"""build: the flaky-build hunt. Build again and again, each build checked, until a build passes,
fails, a number of builds is reached, or the command's ``stop`` says so.

Each build is its own candidate (item = the build number), so every build is a real build and
check, and a resumed hunt goes on with the next build number. What a build chose (its tactics)
is the command's business; the strategy knows only the verdicts, and returns which builds were
good and which bad, for the ranking.

``stop`` is the command's say between builds (``--until 8h``, a suspect sure enough): a function
of the number of builds answered so far that returns a reason to stop, or None. The strategy
itself reads no clock; without ``stop`` it is a pure function of its verdicts.
"""

from __future__ import annotations

from typing import Any, Callable

from bisector.checks.base import Verdict
from bisector.strategies.base import Candidate, Search, Strategy

Stop = Callable[[int], "str | None"]
SKIPS_IN_A_ROW = 5  # this many builds skipped in a row (the builder crashed each time) end the hunt
BUILDER_FAILING = "the builder keeps failing"  # the start of that stop's reason


def build_candidate(i: int) -> Candidate:
    return Candidate(frozenset({i}), label=f"build {i}", phase="hunt", kind="build")


class BuildStrategy(Strategy):
    """``until``: a Verdict to stop at (GOOD or BAD), or None; ``limit``: at most that many builds
    (None: no limit, then ``until`` or ``stop`` must end the hunt)."""

    name = "build"

    def __init__(self, until: Verdict | None = Verdict.BAD, limit: int | None = None, stop: Stop | None = None):
        super().__init__()
        if until is None and not limit and stop is None:
            raise ValueError("a build hunt needs a verdict to stop at, a number of builds or a stop rule")
        if limit is not None and limit < 1:
            raise ValueError(f"a build hunt of {limit} builds")
        self.until = until
        self.limit = limit
        self.stop = stop

    def params(self) -> dict[str, Any]:
        return {"until": self.until.value if self.until else None, "limit": self.limit}

    def endpoints(self):
        return None, None

    def _next(self, i: int):
        """The builds after ``i`` that ``-j`` may start beside it (they are built either way)."""
        j = i + 1
        while self.limit is None or j < self.limit:
            yield build_candidate(j)
            j += 1

    def search(self) -> Search:
        verdicts: dict[int, Verdict] = {}
        i = 0
        in_a_row = 0  # builds skipped in a row (a skip: the build crashed, the check did not run)
        reason = f"built {self.limit} time(s)"
        while self.limit is None or i < self.limit:
            if in_a_row >= SKIPS_IN_A_ROW:
                reason = f"{BUILDER_FAILING}: {in_a_row} builds in a row were skipped"
                break
            why = self.stop(i) if self.stop is not None else None
            if why:
                reason = why
                break
            self.progress.remaining = (self.limit - i) if self.limit else 1
            verdict = yield self.ask(build_candidate(i), self._next(i))
            verdicts[i] = verdict
            in_a_row = in_a_row + 1 if verdict == Verdict.SKIP else 0
            i += 1
            if self.until is not None and verdict == self.until:
                reason = f"build {i - 1} was {verdict.value}"
                break
        self.progress.remaining = 0
        return {**summary(verdicts, reason), "skipped_in_a_row": in_a_row}


def summary(verdicts: dict[int, Verdict], reason: str) -> dict[str, Any]:
    """The hunt's result: counts, the pass rate, and the good and bad build numbers."""
    good = sorted(i for i, v in verdicts.items() if v == Verdict.GOOD)
    bad = sorted(i for i, v in verdicts.items() if v == Verdict.BAD)
    done = len(good) + len(bad)
    return {"builds": len(verdicts), "good": len(good), "bad": len(bad), "skip": len(verdicts) - done,
            "pass_rate": len(good) / done if done else 0.0, "reason": reason,
            "good_builds": good, "bad_builds": bad}


ARMS = ("away", "on")  # confirm: the top suspect forced away from its layer, and forced on it


def arm_candidate(arm: str, i: int) -> Candidate:
    return Candidate(frozenset({i}), label=f"build {i}, suspect forced {arm}", phase=f"forced {arm}", kind=arm)


class ConfirmStrategy(Strategy):
    """``bisector confirm``: ``repeat`` builds with the top suspect forced away, and as many with it
    forced on, alternating, each checked. Returns each arm's good and bad counts."""

    name = "confirm"

    def __init__(self, repeat: int = 5):
        super().__init__()
        if repeat < 1:
            raise ValueError(f"confirm with {repeat} builds per arm")
        self.repeat = repeat

    def params(self) -> dict[str, Any]:
        return {"repeat": self.repeat}

    def endpoints(self):
        return None, None

    def _order(self):
        return [arm_candidate(arm, i) for i in range(self.repeat) for arm in ARMS]

    def search(self) -> Search:
        order = self._order()
        verdicts: dict[str, dict[int, Verdict]] = {arm: {} for arm in ARMS}
        for n, cand in enumerate(order):
            self.progress.remaining = len(order) - n
            verdict = yield self.ask(cand, iter(order[n + 1:]))
            (i,) = cand.items
            verdicts[cand.kind][i] = verdict
        self.progress.remaining = 0
        return {arm: {v.value: sum(1 for x in got.values() if x == v) for v in Verdict}
                for arm, got in verdicts.items()}
