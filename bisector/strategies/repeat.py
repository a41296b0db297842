"""repeat: run the check again and again (Polygraphy's ``debug repeat``), the simplest strategy.

Each run is its own candidate (item = the run number), so every run is a real check and a resumed
session continues counting where it stopped.
"""

from __future__ import annotations

from typing import Any

from bisector.checks.base import Verdict
from bisector.strategies.base import Candidate, Search, Strategy


class RepeatStrategy(Strategy):
    """``until``: a Verdict to stop at (GOOD or BAD), or None to run exactly ``limit`` times."""

    name = "repeat"

    def __init__(self, until: Verdict | None = Verdict.BAD, limit: int | None = None):
        super().__init__()
        if until is None and not limit:
            raise ValueError("repeat needs a verdict to stop at or a number of runs")
        self.until = until
        self.limit = limit

    def params(self) -> dict[str, Any]:
        return {"until": self.until.value if self.until else None, "limit": self.limit}

    def endpoints(self):
        return None, None

    def search(self) -> Search:
        counts = {v: 0 for v in Verdict}
        i = 0
        reason = f"ran {self.limit} time(s)"
        while self.limit is None or i < self.limit:
            self.progress.remaining = (self.limit - i) if self.limit else 1
            verdict = yield self.ask(Candidate(frozenset({i}), label=f"run {i}", phase="repeat", kind="run"))
            counts[verdict] += 1
            i += 1
            if self.until is not None and verdict == self.until:
                reason = f"run {i - 1} was {verdict.value}"
                break
        done = counts[Verdict.GOOD] + counts[Verdict.BAD]
        return {"runs": i, "good": counts[Verdict.GOOD], "bad": counts[Verdict.BAD], "skip": counts[Verdict.SKIP],
                "bad_rate": counts[Verdict.BAD] / done if done else 0.0, "reason": reason}
