"""What an engine run returns and raises, and the contract of a materializer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from bisector.artifacts.journal import Entry
from bisector.checks.base import Artifact, Verdict
from bisector.errors import Inconclusive, UserError
from bisector.strategies.base import Candidate

Listener = Callable[[dict[str, Any]], None]


class Materializer(Protocol):
    """Turns a candidate into files a check can run on (strategy-specific)."""

    def fingerprint(self, candidate: Candidate) -> str: ...

    def materialize(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact: ...

    # A materializer whose work belongs where the check runs (a build needs the check's GPU) may
    # also offer ``deferred(candidate, workdir, iteration) -> Artifact``: an artifact whose
    # ``prepare`` (picklable, by path) does ``materialize``'s work. The engine asks for it when
    # the executor runs checks elsewhere on the same files (``Executor.remote``).


class EndpointError(UserError):
    """The endpoints do not bracket a failure (the full subject passes, or the trivial one fails)."""


class TrivialFails(EndpointError, Inconclusive):
    """The trivial candidate, which must pass, fails: the check may be broken (exit EXIT_INCONCLUSIVE)."""


@dataclass
class Stats:
    """Counts over the whole session: a resumed run starts from the checks its journal holds, so
    a session interrupted and resumed reports what an uninterrupted one would. A verdict the
    journal answers again (``cached``) is not a new check; replayed or imported verdicts
    (``bisector replay``) were never checks here and are not counted."""

    checks: int = 0  # check runs over the session (speculative ones included)
    run_checks: int = 0  # of which in this run
    cached: int = 0  # asks answered from the cache in this run (on resume: the journal's verdicts)
    verdicts: dict[str, int] = field(default_factory=lambda: {"good": 0, "bad": 0, "skip": 0})
    started: float = field(default_factory=time.monotonic)  # this run's start (elapsed is this run's)
    check_seconds: float = 0.0  # over the session

    @classmethod
    def of(cls, entries) -> "Stats":
        stats = cls()
        for e in entries:
            if e.source == "check":
                stats.count(e.verdict, (e.evidence or {}).get("duration_s") or 0.0)
        return stats

    def count(self, verdict: Verdict, seconds: float) -> None:
        self.checks += 1
        self.check_seconds += seconds
        self.verdicts[verdict.value] += 1

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class Outcome:
    result: dict[str, Any]
    stats: Stats
    iterations: list[Entry]
