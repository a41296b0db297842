"""The :class:`Engine`: drives a strategy, runs the checks, journals the verdicts (see the package
docstring)."""

from __future__ import annotations

import json
import logging
import queue
import shutil
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from bisector.artifacts.journal import Entry
from bisector.artifacts.report import first_failure
from bisector.artifacts.session import Session
from bisector.checks.base import Artifact, Check, CheckResult, Verdict
from bisector.checks.process_group import kill_leftovers
from bisector.engine.executors import Executor, LocalExecutor
from bisector.engine.outcome import EndpointError, Listener, Materializer, Outcome, Stats, TrivialFails
from bisector.engine.records import log_event, remove_intermediate
from bisector.errors import SessionAborted
from bisector.strategies.base import Ask, Candidate, Strategy

log = logging.getLogger(__name__)
CANCEL_POLL_S = 0.1  # how often the end of a search cancels the checks still running


class Engine:
    """``Engine(strategy, materializer, check, session).run()`` -> :class:`Outcome`.

    ``jobs``: checks at once (speculation fills the extra slots); always 1 for a check whose
    ``parallel`` is False (a person must not be asked about candidates the search may never need).
    ``devices``: one environment per worker slot, e.g. ``["0", "1"]`` gives each its own
    ``CUDA_VISIBLE_DEVICES``.
    ``artifacts``: files in the iteration directory to sort into ``good/``/``bad/``.
    ``keep_intermediate``: keep each iteration's artifact (Polygraphy's ``--no-remove-intermediate``).
    ``art_dir``: where ``good/``/``bad/`` go (Polygraphy's ``--art-dir``; default: the session).
    ``iter_info``: a JSON file ``{"iteration": N}`` written before each check (Polygraphy's
    ``--iter-info``); a relative path lands in the iteration directory, where the check runs.
    ``executor``: where each check runs (:mod:`bisector.engine.executors`; default: the thread).
    """

    def __init__(self, strategy: Strategy, materializer: Materializer, check: Check, session: Session, *,
                 jobs: int = 1, devices: list[str] | None = None, artifacts: list[str] | None = None,
                 keep_intermediate: bool = False, listeners: list[Listener] | None = None,
                 check_endpoints: bool = True, art_dir: Path | None = None, iter_info: str | None = None,
                 executor: Executor | None = None):
        self.strategy = strategy
        self.materializer = materializer
        self.check = check
        self.executor = executor or LocalExecutor(check)
        self.session = session
        self.jobs = max(1, jobs)
        if self.jobs > 1 and not check.parallel:
            log.warning("-j %d ignored: a person answers one question at a time, only about what the search "
                        "needs (no speculation); running with -j 1", self.jobs)
            self.jobs = 1
        strategy.lookahead = self.jobs - 1  # the guesses that can run beside each ask, and no more
        self.devices = devices or []
        self.artifacts = artifacts or []
        self.keep_intermediate = keep_intermediate
        self.art_dir = art_dir
        self.iter_info = iter_info
        self.listeners = listeners or []
        self.check_endpoints = check_endpoints
        self.stats = Stats.of(session.journal)
        self.cache: dict[str, Entry] = session.journal.cache()
        self._next_iteration = session.journal.next_iteration()
        self._running: dict[str, Future] = {}
        self._dropped: set[str] = set()  # running speculation the search no longer wants
        self._started: dict[str, tuple[int, Path]] = {}  # fingerprint -> iteration and its directory
        self._slots: queue.Queue[int] = queue.Queue()
        for i in range(self.jobs):
            self._slots.put(i)
        self._pool: ThreadPoolExecutor | None = None
        self._search_over = False
        self._interrupts = 0
        self._lock = threading.Lock()

    # -- events -----------------------------------------------------------------------------
    def emit(self, event: str, **data: Any) -> None:
        payload = {"event": event, "time": round(time.time(), 3), **data}
        log_event(payload)
        for listen in self.listeners:
            try:
                listen(payload)
            except Exception:  # a display must never break a session
                log.debug("listener failed", exc_info=True)

    def _progress(self) -> dict[str, Any]:
        p = self.strategy.progress
        return {"search_phase": p.phase, "remaining": p.remaining, "best_size": p.size, "checks": self.stats.checks,
                "cached": self.stats.cached, "verdicts": dict(self.stats.verdicts),
                "elapsed_s": round(self.stats.elapsed, 2), "status": p.status,
                "mean_check_s": round(self.stats.check_seconds / self.stats.checks, 3) if self.stats.checks else None}

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> Outcome:
        kill_leftovers(self.session.root)  # the checks of a killed run on this session, still running
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        self._pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="check")
        self.emit("start", session=str(self.session.root), strategy=self.strategy.name,
                  resumed=self.session.resumed, known_verdicts=len(self.cache))
        try:
            result = self._search()
            self._end_speculation()
        except KeyboardInterrupt:
            self._abandon()
            raise SessionAborted("interrupted") from None
        except BaseException:
            self._abandon()
            raise
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.emit("done", result=result, **self._progress())
        return Outcome(result=result, stats=self.stats, iterations=list(self.session.journal))

    def _search(self) -> dict[str, Any]:
        """Check the endpoints, then drive the strategy to its result (which may need no ask at
        all: a one-node model). The search's first ask does not depend on any verdict, so it is
        taken first and speculated beside the endpoints."""
        search = self.strategy.search()
        try:
            ask = next(search)
        except StopIteration as stop:
            ask, result = None, stop.value
        if self.check_endpoints:
            self._endpoints(ahead=[ask.candidate, *ask.speculate] if ask else [])
        if ask is None:
            return result
        try:
            while True:
                ask = search.send(self.resolve(ask))
        except StopIteration as stop:
            return stop.value

    def _on_sigint(self, signum, frame) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            raise KeyboardInterrupt
        # Second Ctrl-C: stop now. The journal is append-only and fsync'd, so it is consistent.
        import os

        self._terminate_checks()
        os._exit(130)

    def _terminate_checks(self) -> None:
        try:
            self.executor.terminate()
        except Exception:
            log.debug("terminate failed", exc_info=True)

    def _abandon(self) -> None:
        """Stop the checks in flight; their verdicts are not journaled (resume re-runs them)."""
        self._terminate_checks()
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _end_speculation(self) -> None:
        """The search is over; checks still in flight are speculation it never asked for. Those not
        yet running are dropped. A check that can ``cancel()`` (the command check) is stopped: its
        process group killed and reaped, no verdict journaled, its iteration directory removed. Any
        other check runs to its end and is journaled like every speculative verdict. Either way the
        journal holds only whole verdicts of checks that ran, so resume and replay see one session."""
        for fp, fut in list(self._running.items()):
            if fut.cancel():  # never started
                del self._running[fp]
        self._search_over = True  # from now on a check that has not started its run never does
        while self.executor.cancellable and not all(fut.done() for fut in self._running.values()):
            self.executor.cancel()  # again until all are done: a worker may start its command after a call
            wait(list(self._running.values()), timeout=CANCEL_POLL_S)
        wait(list(self._running.values()))
        for fp, fut in list(self._running.items()):
            if fut.exception() is not None:  # cancelled, or failed after the answer was found
                log.debug("speculative check dropped after the search: %s", fut.exception())
                del self._running[fp]
        self._harvest()

    def _endpoints(self, ahead: list[Candidate] = ()) -> None:
        must_fail, must_pass = self.strategy.endpoints()
        if must_fail is None:
            return
        v = self.resolve(Ask(must_fail, tuple(c for c in (must_pass, *ahead) if c is not None)))
        if v != Verdict.BAD:
            what = "passes" if v == Verdict.GOOD else "was skipped by"
            raise EndpointError(
                f"{must_fail.label or 'the full subject'}: {what} the check, so there is no failure to search for",
                hint="is the check right? run it by hand on the model; if the failure comes and goes, "
                     "try `repeat` 3 `vote` any")
        if must_pass is not None:
            v = self.resolve(Ask(must_pass, tuple(ahead)))
            if v != Verdict.GOOD:
                what = "fails" if v == Verdict.BAD else "was skipped by"
                raise TrivialFails(
                    f"the trivial candidate ({must_pass.label}) also {what} the check, so the failure "
                    f"does not come from what this search changes; first failing check: "
                    f"{first_failure(self.session)}",
                    hint="check the check: does it fail for another reason (a missing file, a crash)? "
                         "a flaky check needs `repeat` 3 `vote` majority")

    def resolve(self, ask: Ask) -> Verdict:
        """The verdict of ``ask.candidate``: from the cache, a running check, or a new one."""
        fp = self.materializer.fingerprint(ask.candidate)
        if fp in self.cache:
            self.stats.cached += 1
            entry = self.cache[fp]
            self.emit("cached", fingerprint=fp, label=ask.candidate.label, verdict=entry.verdict.value,
                      **self._progress())
            return entry.verdict
        wanted = [ask.candidate] + [c for c in ask.speculate if c is not None]
        fps = [fp] + [self.materializer.fingerprint(c) for c in wanted[1:]]
        self._drop(set(fps))
        guesses = list(zip(wanted[1:], fps[1:]))
        while fp not in self.cache:
            if fp not in self._running:  # (a dropped run of it, killed, ends without a verdict)
                self._submit(ask.candidate, fp, speculative=False)
            self._speculate(guesses)
            primary = self._running[fp]
            while not primary.done():
                wait(list(self._running.values()), return_when=FIRST_COMPLETED, timeout=0.2)
                self._harvest()
                if not primary.done():
                    self._speculate(guesses)  # a slot freed by a finished or dropped check
            self._harvest()
        return self.cache[fp].verdict

    def _drop(self, wanted: set[str]) -> None:
        """Speculation the search no longer wants: unstarted checks are cancelled, running ones
        killed where the check can cancel one run (their slot comes free; nothing is journaled)."""
        for other, fut in list(self._running.items()):
            if other in wanted or other in self._dropped:
                continue
            if fut.cancel():
                del self._running[other]
            elif self.executor.cancellable:
                self._dropped.add(other)
                with self._lock:
                    started = self._started.get(other)
                if started is not None:
                    self.executor.cancel(other, started[1])

    def _speculate(self, guesses: list[tuple[Candidate, str]]) -> None:
        """Start guesses, in the strategy's order, while fewer than ``jobs`` wanted checks run."""
        for cand, cfp in guesses:
            if cfp in self.cache or cfp in self._running:
                continue
            if len(self._running) - len(self._dropped) >= self.jobs:
                return
            self._submit(cand, cfp, speculative=True)

    def _submit(self, cand: Candidate, fp: str, speculative: bool) -> None:
        fut = self._pool.submit(self._run_one, cand, fp, speculative)
        fut.meta = (cand, speculative)  # type: ignore[attr-defined]
        self._running[fp] = fut

    def _run_one(self, cand: Candidate, fp: str, speculative: bool) -> tuple[int, CheckResult, Artifact]:
        slot = self._slots.get()
        try:
            with self._lock:  # numbered when it starts, so cancelled speculation leaves no gaps
                iteration = self._next_iteration
                self._next_iteration += 1
            self.emit("check-start", iteration=iteration, fingerprint=fp, label=cand.label, phase=cand.phase,
                      size=cand.size, speculative=speculative, **self._progress())
            workdir = self.session.iteration_dir(iteration)
            with self._lock:
                self._started[fp] = (iteration, workdir)
            deferred = getattr(self.materializer, "deferred", None) if self.executor.remote else None
            make = deferred or self.materializer.materialize  # deferred: made where the check runs
            artifact = make(cand, workdir, iteration)
            artifact.session_dir = self.session.root
            if artifact.skip:  # it could not be made (a failed build): a skip, no check
                return iteration, CheckResult(Verdict.SKIP, note=artifact.skip, cause="build"), artifact
            if self.iter_info:
                info = Path(workdir) / self.iter_info  # an absolute path stays as it is
                info.parent.mkdir(parents=True, exist_ok=True)
                info.write_text(json.dumps({"iteration": iteration}))
            if self.devices:
                device = self.devices[slot % len(self.devices)]
                artifact.extra_env = {**artifact.extra_env, "CUDA_VISIBLE_DEVICES": device}
            start = time.monotonic()
            try:
                if self._search_over or fp in self._dropped:
                    raise SessionAborted("the search no longer needs this check")
                result = self.executor.run(artifact, fp)
            except SessionAborted:
                if self._search_over or fp in self._dropped:  # cancelled: leave nothing half-done
                    shutil.rmtree(workdir, ignore_errors=True)
                raise
            if not result.duration_s:
                result.duration_s = time.monotonic() - start
            return iteration, result, artifact
        finally:
            self._slots.put(slot)

    def _harvest(self) -> None:
        """Journal every finished check, in completion order."""
        for fp, fut in list(self._running.items()):
            if not fut.done():
                continue
            del self._running[fp]
            with self._lock:
                started = self._started.pop(fp, None)
            cand, speculative = fut.meta  # type: ignore[attr-defined]
            if fp in self._dropped:
                self._dropped.discard(fp)
                if isinstance(fut.exception(), SessionAborted) and not self._search_over:
                    self.emit("dropped", iteration=started[0] if started else None, fingerprint=fp,
                              label=cand.label, phase=cand.phase, **self._progress())
                    continue  # killed on purpose: no verdict, nothing to journal
            iteration, result, artifact = fut.result()  # re-raises UserError / SessionAborted
            self._record(cand, fp, iteration, speculative, result, artifact)

    def _record(self, cand: Candidate, fp: str, iteration: int, speculative: bool, result: CheckResult,
                artifact: Artifact) -> None:
        self.session.check_space()  # a check on a full disk fails for that reason: never journal it
        entry = Entry(fingerprint=fp, verdict=result.verdict, iteration=iteration, label=cand.label,
                      phase=cand.phase, speculative=speculative, evidence=result.to_json(),
                      items=cand.sorted_items() if cand.size <= 4096 else None, size=cand.size)
        self.session.journal.append(entry)  # fsync'd before anything else learns the verdict
        self.cache[fp] = entry
        self.stats.count(result.verdict, result.duration_s)
        self.stats.run_checks += 1
        if self.artifacts:
            self.session.sort_artifacts(iteration, artifact.workdir, self.artifacts, result.verdict.value,
                                        self.art_dir)
        if not self.keep_intermediate:
            remove_intermediate(artifact)
        self.emit("verdict", iteration=iteration, fingerprint=fp, label=cand.label, phase=cand.phase,
                  size=cand.size, verdict=result.verdict.value, duration_s=round(result.duration_s, 3),
                  speculative=speculative, note=result.note, exit_code=result.exit_code,
                  output=result.output if self.check.should_show(result) else "", workdir=str(artifact.workdir),
                  **self._progress())
