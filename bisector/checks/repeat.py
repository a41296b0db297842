"""Repeat a flaky check and vote: ``--repeat K --vote any|majority|all``.

Votes, over the runs' verdicts (skipped runs never count as good or bad):

- ``any``: bad if any run is bad (a failure that shows up once is real: the default);
- ``all``: bad only if every non-skipped run is bad;
- ``majority``: bad if more than half of the non-skipped runs are bad (a tie is good).

If every run is skipped, the combined verdict is skip.

Stopping early (on by default): after each run, the check stops as soon as no verdicts of
the remaining runs could change the combined one: ``any`` stops at the first bad run, ``all``
at the first good run, ``majority`` 3 of 5 at the third bad (or good) run. ``metrics["runs"]``
then lists only the runs made. Turn it off (``stop_early=False``) to measure the flake rate on
all K runs: with early stopping it is biased towards 0.

``metrics["flake_rate"]`` is the fraction of non-skipped runs whose verdict differs from the
combined one (0.0 when all were skipped). Each run's ``check.log`` is kept as
``check.run<i>.log`` (i from 1); ``check.log`` then holds the log of the run whose evidence
the result carries: the last run that agreed with the combined verdict.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Sequence

from bisector.checks.base import Artifact, Check, CheckResult, Verdict
from bisector.checks.command import CHECK_LOG_NAME
from bisector.errors import SessionAborted, UserError

VOTES = ("any", "majority", "all")
RUN_LOG_NAME = "check.run{i}.log"


def combine(verdicts: Sequence[Verdict], vote: str) -> Verdict:
    """The combined verdict of several runs under ``vote`` (see the module docstring)."""
    counts = Counter(verdicts)
    return _combine_counts(counts[Verdict.GOOD], counts[Verdict.BAD], vote)


def settled(verdicts: Sequence[Verdict], remaining: int, vote: str) -> Verdict | None:
    """The combined verdict if ``remaining`` more runs cannot change it, else None.

    Tries every way the remaining runs could split into good, bad and skip (the vote depends
    on the counts only), so it is right by construction for any vote.
    """
    counts = Counter(verdicts)
    good, bad = counts[Verdict.GOOD], counts[Verdict.BAD]
    outcomes = {
        _combine_counts(good + more_good, bad + more_bad, vote)
        for more_good, more_bad in itertools.product(range(remaining + 1), repeat=2)
        if more_good + more_bad <= remaining
    }
    return outcomes.pop() if len(outcomes) == 1 else None


def _combine_counts(good: int, bad: int, vote: str) -> Verdict:
    if good + bad == 0:
        return Verdict.SKIP
    if vote == "any":
        failed = bad > 0
    elif vote == "all":
        failed = good == 0
    else:  # majority
        failed = 2 * bad > good + bad
    return Verdict.BAD if failed else Verdict.GOOD


class RepeatCheck(Check):
    """Run ``inner`` up to ``repeat`` times on the same artifact and vote.

    ``UserError`` and ``SessionAborted`` from the inner check stop the repetition and pass
    through. Every capability (``parallel``, ``cancel``, ``should_show``, ...) is the inner
    check's; :meth:`terminate` also refuses further runs.
    """

    def __init__(self, inner: Check, repeat: int = 3, vote: str = "any", stop_early: bool = True):
        if repeat < 1:
            raise UserError(f"`repeat` {repeat}: expected at least 1")
        if vote not in VOTES:
            raise UserError(f"`vote` {vote!r}: expected one of {', '.join(VOTES)}")
        self._inner = inner
        self.repeat = repeat
        self.vote = vote
        self.stop_early = stop_early
        self._terminated = threading.Event()

    @property
    def inner(self) -> Check:
        """The check repeated."""
        return self._inner

    @property
    def parallel(self) -> bool:  # type: ignore[override]
        return self._inner.parallel

    @property
    def cancellable(self) -> bool:  # type: ignore[override]
        return self._inner.cancellable

    def terminate(self) -> None:
        self._terminated.set()
        self._inner.terminate()

    def cancel(self, workdir: Path | None = None) -> None:
        self._inner.cancel(workdir)

    def should_show(self, result: CheckResult) -> bool:
        """The inner check's rule."""
        return self._inner.should_show(result)

    def run(self, artifact: Artifact) -> CheckResult:
        """Run the inner check up to ``repeat`` times; return the combined, voted result."""
        results: list[CheckResult] = []
        log_path = Path(artifact.workdir) / CHECK_LOG_NAME
        for i in range(1, self.repeat + 1):
            if self._terminated.is_set():
                raise SessionAborted("the check was terminated")
            before = _stamp(log_path)
            results.append(self._inner.run(artifact))
            after = _stamp(log_path)
            if after is not None and after != before:
                os.replace(log_path, log_path.with_name(RUN_LOG_NAME.format(i=i)))
            verdicts = [r.verdict for r in results]
            if self.stop_early and settled(verdicts, self.repeat - i, self.vote) is not None:
                break
        return self._summarize(results, log_path)

    def _summarize(self, results: list[CheckResult], log_path: Path) -> CheckResult:
        verdicts = [r.verdict for r in results]
        verdict = combine(verdicts, self.vote)
        # Some run always agrees: each vote's verdict needs a run with it (skip: all skipped).
        index = max(i for i, r in enumerate(results) if r.verdict is verdict)
        chosen = results[index]
        run_log = log_path.with_name(RUN_LOG_NAME.format(i=index + 1))
        if run_log.exists():
            shutil.copyfile(run_log, log_path)
        counted = [v for v in verdicts if v is not Verdict.SKIP]
        disagree = sum(v is not verdict for v in counted)
        flake_rate = disagree / len(counted) if counted and verdict is not Verdict.SKIP else 0.0
        bad = sum(v is Verdict.BAD for v in counted)
        note = f"{bad} of {len(counted)} counted runs bad ({len(results)}/{self.repeat} made, vote {self.vote})"
        if chosen.note:
            note += f"; {chosen.note}"
        metrics = dict(chosen.metrics)
        metrics.update(
            runs=[v.value for v in verdicts], flake_rate=flake_rate, vote=self.vote, repeat=self.repeat
        )
        return CheckResult(
            verdict=verdict,
            exit_code=chosen.exit_code,
            output=chosen.output,
            duration_s=sum(r.duration_s for r in results),
            metrics=metrics,
            note=note,
        )


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells one write of a file from another (None if it does not exist)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
