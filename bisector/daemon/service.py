"""The daemon's loop: start queued jobs first in, first out as slots free up, reap them, record
their answers, and resume what a killed daemon left behind.

Each job runs as ``python -m bisector <argv> --session DIR --events FILE`` (the CLI's own code
path), in its own process group, with ``CUDA_VISIBLE_DEVICES`` set to the GPUs it was given. On a
daemon started with ``executor="ray"`` the job gets ``--executor ray --ray-address ADDR`` too
(unless its command line names an executor), so its checks run on the cluster while the job
itself, and the queue in SQLite, stay here: a Ray job would die with its cluster, a queued job
does not; while the cluster does not answer, no job starts. The
job's process dies with the daemon (``PR_SET_PDEATHSIG``), and its session is resumable: after a
``kill -9`` of the daemon, or a reboot, the next daemon marks the jobs it finds ``running`` as
queued again, ends what they left (their process group, then their checks' groups with
``kill_leftovers``), and starts them first: each session resumes from its journal. The session's
own lock (``SESSION/lock``) makes sure no job runs twice at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bisector.checks.process_group import die_with_parent, kill_leftovers, signal_group
from bisector.daemon.store import Job, Store
from bisector.engine.executors import LOST_ON_RAY, reach
from bisector.errors import EXIT_INCONCLUSIVE, EXIT_STOPPED, UserError

log = logging.getLogger("bisector.daemon")

LOCK_NAME = "daemon.lock"  # flock'd by the one daemon of a state directory; holds its pid
INFO_NAME = "daemon.json"  # the running daemon's pid and slots, for `daemon status`
POLL_S = 0.2
ERROR_PAUSE_S = 2.0
STOP_GRACE_S = 5.0  # SIGINT (bisector's clean stop), then SIGKILL to the job's group
NOTIFY_TIMEOUT_S = 60.0
# a job stopped because its checks were LOST_ON_RAY (exit 3) is queued again ...
LOST_RUNS = 3  # ... until it has run this many times
CLUSTER_CHECK_S = 5.0  # how often a daemon on Ray with a queue asks whether its cluster answers


@dataclass(frozen=True)
class Config:
    """What the daemon was started with: GPUs to hand out (``--gpus 0,1``) or plain slots."""

    gpus: tuple[str, ...] = ()
    slots: int = 1
    notify_cmd: str | None = None
    executor: str = "local"  # ray: each job's checks go to the Ray cluster at ray_address
    ray_address: str | None = None

    def describe(self) -> str:
        here = f"GPUs {','.join(self.gpus)}" if self.gpus else f"{self.slots} slot(s)"
        if self.executor == "ray":
            return f"{here}, checks on the Ray cluster at {self.ray_address or 'the default address'}"
        return here

    @property
    def capacity(self) -> int:
        return len(self.gpus) if self.gpus else self.slots


@dataclass
class Running:
    job: Job
    proc: subprocess.Popen
    gpus: list[str] = field(default_factory=list)


def lock_holder(home: Path) -> int | None:
    """The pid of the daemon that holds ``home``'s lock, or None if none runs."""
    path = Path(home) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


def take_lock(home: Path) -> int:
    """Hold ``home``'s daemon lock for the life of this process (the fd is kept open); refuse if
    another daemon holds it."""
    fd = os.open(Path(home) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise UserError(f"a daemon already runs for {home} (pid {other or '?'})",
                        hint="bisector daemon status; bisector daemon stop") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    os.set_inheritable(fd, False)
    return fd


def job_paths(home: Path, job: Job) -> dict[str, Path]:
    root = job.job_dir(home)
    return {"dir": root, "session": Path(job.session) if job.session else root / "session",
            "events": root / "events.jsonl", "log": root / "output.log"}


def job_argv(job: Job, session: Path, events: Path, config: Config = Config()) -> list[str]:
    """``python -m bisector`` with the job's argv, its session and event file given before the
    check command (given last, they win over the user's own), and the daemon's executor unless
    the job names its own."""
    own = ["--session", str(session), "--events", str(events)]
    if config.executor != "local" and "--executor" not in job.argv[:job.check_at]:
        own += ["--executor", config.executor, *(["--ray-address", config.ray_address] if config.ray_address else [])]
    return [sys.executable, "-m", "bisector", *job.argv[:job.check_at], *own, *job.argv[job.check_at:]]


class Daemon:
    """One daemon over one state directory (see the module docstring)."""

    def __init__(self, home: Path, config: Config):
        self.home = Path(home)
        self.config = config
        self.running: dict[int, Running] = {}
        self.stopping = False
        self.store: Store | None = None
        self._cluster_checked = -CLUSTER_CHECK_S  # monotonic time of the last look at the Ray cluster
        self._cluster_down: str | None = None  # why it did not answer then

    def serve(self) -> None:
        lock = take_lock(self.home)
        self.store = Store(self.home)
        self._write_info()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop)
        log.info("daemon %d serving %s with %s", os.getpid(), self.home, self.config.describe())
        try:
            self.recover()
            while not self.stopping:
                try:
                    self.tick()
                except (OSError, sqlite3.Error) as exc:  # a full disk, a locked database: try again later
                    log.error("daemon loop: %s", exc)
                    time.sleep(ERROR_PAUSE_S)
                time.sleep(POLL_S)
        finally:
            self.shutdown()
            (self.home / INFO_NAME).unlink(missing_ok=True)
            self.store.close()
            os.close(lock)

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True

    def _write_info(self) -> None:
        info = {"pid": os.getpid(), "started": time.time(), **asdict(self.config)}
        tmp = self.home / (INFO_NAME + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self.home / INFO_NAME)

    def recover(self) -> None:
        """Jobs left ``running`` by a daemon that died: end what is left of them, queue them again."""
        for job in self.store.jobs(("running",)):
            if job.pgid and _is_job_process(job.pgid, job.id):
                _end_group(job.pgid)
            session = job_paths(self.home, job)["session"]
            if session.is_dir():
                kill_leftovers(session)
            state = "cancelled" if job.cancel_requested else "queued"
            self.store.update(job.id, state=state, pid=None, pgid=None, gpus=None,
                              reason="interrupted (the daemon stopped); resumed from its journal"
                              if state == "queued" else "cancelled")
            log.info("job %d: interrupted, %s", job.id, "queued again" if state == "queued" else "cancelled")

    def tick(self) -> None:
        for job_id, run in list(self.running.items()):
            if run.proc.poll() is not None:
                del self.running[job_id]
                self.finish(run)
        self.start_queued()

    def start_queued(self) -> None:
        """First in, first out: the oldest queued job whose ``--after`` is done starts when its
        slots are free; a later one never jumps ahead of it."""
        states = {j.id: j.state for j in self.store.jobs()}
        for job in self.store.jobs(("queued",)):
            if job.after is not None and states.get(job.after) != "done":
                if states.get(job.after) in ("failed", "cancelled", None):
                    self.store.update(job.id, state="failed", ended=time.time(),
                                      reason=f"job {job.after}, which it runs after, did not end done")
                continue
            need = max(job.gpus_wanted, 1)
            if need > self.config.capacity:
                self.store.update(job.id, state="failed", ended=time.time(),
                                  reason=f"asks for {need} GPU(s) or slots; the daemon has {self.config.capacity}")
                continue
            free = self._free()
            if need > len(free):
                return
            if self._cluster_gone():  # every queued job says why it waits
                for waiting in self.store.jobs(("queued",)):
                    if waiting.reason != self._cluster_down:
                        self.store.update(waiting.id, only_state="queued", reason=self._cluster_down)
                return
            self.launch(job, free[:need] if self.config.gpus else [])

    def _cluster_gone(self) -> bool:
        """With ``--ray-address``: whether the cluster did not answer (asked at most every
        ``CLUSTER_CHECK_S``). Queued jobs wait for it rather than fail one after the other."""
        if self.config.executor != "ray" or not self.config.ray_address:
            return False
        if time.monotonic() - self._cluster_checked >= CLUSTER_CHECK_S:
            self._cluster_checked = time.monotonic()
            was = self._cluster_down
            try:
                reach(self.config.ray_address, "--ray-address", timeout_s=2.0)
                self._cluster_down = None
            except UserError as exc:
                self._cluster_down = f"waiting for the Ray cluster: {exc.message}"
            if was != self._cluster_down:
                log.warning("%s", self._cluster_down or f"the Ray cluster at {self.config.ray_address} answers again")
        return self._cluster_down is not None

    def _free(self) -> list[str]:
        if self.config.gpus:
            taken = {g for run in self.running.values() for g in run.gpus}
            return [g for g in self.config.gpus if g not in taken]
        used = len(self.running)
        return [str(i) for i in range(self.config.capacity - used)]

    def launch(self, job: Job, gpus: list[str]) -> None:
        paths = job_paths(self.home, job)
        paths["dir"].mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {**os.environ, "BISECTOR_JOB_ID": str(job.id)}
        if self.config.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        with open(paths["log"], "ab") as out:
            out.write(f"--- bisector daemon: job {job.id}, run {job.runs + 1}, {time.ctime()}\n".encode())
            out.flush()
            try:
                argv = job_argv(job, paths["session"], paths["events"], self.config)
                proc = subprocess.Popen(argv, cwd=job.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=die_with_parent())
            except OSError as exc:  # its directory is gone, say: this job fails, the others go on
                reason = f"cannot start in {job.cwd}: {exc.strerror or exc}"
                self.store.update(job.id, only_state="queued", state="failed", reason=reason, ended=time.time())
                log.warning("job %d failed: %s", job.id, reason)
                return
        if not self.store.start(job.id, pid=proc.pid, pgid=proc.pid, gpus=gpus, session=str(paths["session"]),
                                runs=job.runs + 1, exit_code=None, reason=None):
            _end_group(proc.pid)  # cancelled between the look and the start
            proc.wait()
            return
        self.running[job.id] = Running(self.store.get(job.id), proc, gpus)
        log.info("job %d started (pid %d%s)", job.id, proc.pid, f", GPUs {','.join(gpus)}" if gpus else "")

    def finish(self, run: Running) -> None:
        """Record how a job ended: its exit code, report.json's answer, why it failed."""
        job = self.store.get(run.job.id)
        paths = job_paths(self.home, job)
        if paths["session"].is_dir():
            kill_leftovers(paths["session"])
        code = run.proc.returncode
        answer = _answer(paths["session"])
        if job.cancel_requested:
            state, reason = "cancelled", "cancelled while running"
        elif code == 0 and answer is not None:
            state, reason = "done", None
        elif code == EXIT_STOPPED and LOST_ON_RAY in _failure(paths["log"], code) and job.runs < LOST_RUNS:
            state, reason = "queued", f"{_failure(paths['log'], code)}; queued again (run {job.runs} of {LOST_RUNS})"
        elif code == EXIT_INCONCLUSIVE and isinstance(answer, dict):  # e.g. a check that crashes on everything
            state, reason = "failed", f"inconclusive: {answer.get('doubt') or 'see the report'}"
        else:
            state, reason = "failed", _failure(paths["log"], code)
        self.store.update(job.id, state=state, exit_code=code, answer=answer, reason=reason, ended=time.time(),
                          pid=None, pgid=None)
        log.info("job %d %s (exit %s)%s", job.id, state, code, f": {reason}" if reason else "")
        if self.config.notify_cmd:
            self.notify(self.store.get(job.id))

    def notify(self, job: Job) -> None:
        """Run ``--notify-cmd`` (split like a shell would, never run by one) with the job's summary
        on stdin, in the background."""
        summary = json.dumps(summary_of(job, self.home))
        argv = shlex.split(self.config.notify_cmd)

        def call() -> None:
            try:
                subprocess.run(argv, input=summary, text=True, timeout=NOTIFY_TIMEOUT_S, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("--notify-cmd failed for job %d: %s", job.id, exc)
        threading.Thread(target=call, daemon=True).start()

    def shutdown(self) -> None:
        """Stop every running job (bisector's clean stop, SIGINT, then SIGKILL) and queue it again:
        the next daemon resumes it."""
        for run in self.running.values():
            signal_group(run.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for run in self.running.values():
            try:
                run.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
            session = job_paths(self.home, run.job)["session"]
            if session.is_dir():
                kill_leftovers(session)
            job = self.store.get(run.job.id)
            state = "cancelled" if job.cancel_requested else "queued"
            self.store.update(job.id, state=state, pid=None, pgid=None, gpus=None,
                              reason="stopped with the daemon; resumes at its next start" if state == "queued"
                              else "cancelled while running")
        self.running.clear()


def _end_group(pgid: int) -> None:
    """SIGKILL a job's process group left by a dead daemon (it should have died with it)."""
    if signal_group(pgid, signal.SIGKILL):
        deadline = time.monotonic() + STOP_GRACE_S
        while signal_group(pgid, 0) and time.monotonic() < deadline:
            time.sleep(0.02)


def _is_job_process(pid: int, job_id: int) -> bool:
    """Whether ``pid`` still names this job's process (its environment says so), not a process
    that got the number after a reboot."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"BISECTOR_JOB_ID={job_id}".encode() in env.split(b"\0")


def _answer(session: Path) -> Any:
    try:
        return json.loads((session / "result" / "report.json").read_text()).get("result")
    except (OSError, ValueError):
        return None


def _failure(log_path: Path, code: int | None) -> str:
    """The job's own error (or stop) line, else its exit status."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [ln.split("error:", 1)[1].strip() for ln in lines if ln.startswith("bisector: error:")]
    if errors:
        return errors[-1]
    stops = [ln for ln in lines if ln.startswith("stopped: ")]
    if code == EXIT_STOPPED and stops:
        return stops[-1]
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


def summary_of(job: Job, home: Path) -> dict[str, Any]:
    """A job as ``bisector jobs --json`` and ``--notify-cmd`` show it."""
    paths = job_paths(home, job)
    return {"id": job.id, "name": job.name, "state": job.state, "session": str(paths["session"]),
            "command": ["bisector", *job.argv], "cwd": job.cwd, "gpus": job.gpus, "after": job.after,
            "exit_code": job.exit_code, "answer": job.answer, "reason": job.reason, "submitted": job.submitted,
            "started": job.started, "ended": job.ended, "log": str(paths["log"]), "events": str(paths["events"])}
