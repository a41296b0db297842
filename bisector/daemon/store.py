"""The job queue: one SQLite file (``jobs.db``, WAL) in the state directory, one transaction per
change, so that any number of clients and the one daemon share it safely.

The state directory is ``$BISECTOR_HOME``, else the platform's user state directory
(``platformdirs.user_state_path("bisector")``). It is made ``0700`` and must belong to the user:
another user can neither read nor cancel the jobs in it. Every row also records its owner's uid,
and every query asks for the caller's own rows only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bisector.errors import UserError

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
DB_NAME = "jobs.db"
BUSY_TIMEOUT_MS = 30_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    argv TEXT NOT NULL,          -- JSON list: the bisector command line, without 'bisector'
    check_at INTEGER NOT NULL,   -- where the check command starts in argv (len(argv) if none)
    cwd TEXT NOT NULL,
    session TEXT,                -- the session directory (decided at the first start if not given)
    gpus_wanted INTEGER NOT NULL DEFAULT 0,
    gpus TEXT,                   -- JSON list of the GPUs given while it runs
    after INTEGER,               -- starts only once this job is done
    pid INTEGER,
    pgid INTEGER,
    exit_code INTEGER,
    answer TEXT,                 -- JSON: report.json's result
    reason TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0,
    submitted REAL NOT NULL,
    started REAL,
    ended REAL,
    uid INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class Job:
    id: int
    name: str | None
    state: str
    argv: list[str]
    check_at: int
    cwd: str
    session: str | None
    gpus_wanted: int
    gpus: list[str]
    after: int | None
    pid: int | None
    pgid: int | None
    exit_code: int | None
    answer: Any
    reason: str | None
    cancel_requested: bool
    runs: int
    submitted: float
    started: float | None
    ended: float | None
    uid: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        doc = dict(row)
        doc["argv"] = json.loads(doc["argv"])
        doc["gpus"] = json.loads(doc["gpus"]) if doc["gpus"] else []
        doc["answer"] = json.loads(doc["answer"]) if doc["answer"] else None
        doc["cancel_requested"] = bool(doc["cancel_requested"])
        return cls(**doc)

    def job_dir(self, home: Path) -> Path:
        return Path(home) / "jobs" / str(self.id)


def home_dir(create: bool = True) -> Path:
    """The state directory: ``$BISECTOR_HOME`` or the user state directory; made ``0700``, and
    refused if it belongs to someone else."""
    env = os.environ.get("BISECTOR_HOME")
    if env:
        home = Path(env).absolute()
    else:
        import platformdirs

        home = platformdirs.user_state_path("bisector")
    if create:
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            raise UserError(f"the state directory {home} is a file, not a directory",
                            hint="set BISECTOR_HOME to a directory of your own") from None
        except OSError as exc:  # under /proc, read-only, no permission: one line, not a traceback
            raise UserError(f"the state directory {home} cannot be made: {exc.strerror or exc}",
                            hint="set BISECTOR_HOME to a directory of your own") from None
    if home.exists() and not home.is_dir():
        raise UserError(f"the state directory {home} is not a directory",
                        hint="set BISECTOR_HOME to a directory of your own")
    if home.exists():
        info = home.stat()
        if info.st_uid != os.getuid():
            raise UserError(f"the state directory {home} belongs to uid {info.st_uid}, not to you",
                            hint="set BISECTOR_HOME to a directory of your own")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(home, 0o700)
    return home


class Store:
    """The jobs table of one state directory (one connection; not shared between threads)."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.path = self.home / DB_NAME
        self.uid = os.getuid()
        old_umask = os.umask(0o077)
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        finally:
            os.umask(old_umask)
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        with self.transaction():
            self.db.execute(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        return _Transaction(self.db)

    # ----------------------------------------------------------------------------------- clients
    def add(self, argv: list[str], check_at: int, cwd: str, *, name: str | None = None, session: str | None = None,
            gpus: int = 0, after: int | None = None) -> int:
        with self.transaction():
            if after is not None and self._row(after) is None:
                raise UserError(f"--after {after}: no such job")
            cur = self.db.execute(
                "INSERT INTO jobs (name, state, argv, check_at, cwd, session, gpus_wanted, after, submitted, uid) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, json.dumps(list(argv)), check_at, cwd, session, gpus, after, time.time(), self.uid))
            return int(cur.lastrowid)

    def get(self, job_id: int) -> Job:
        row = self._row(job_id)
        if row is None:
            raise UserError(f"no job {job_id}", hint="bisector jobs lists them")
        return Job.from_row(row)

    def jobs(self, states: tuple[str, ...] = STATES) -> list[Job]:
        marks = ", ".join("?" * len(states))
        rows = self.db.execute(f"SELECT * FROM jobs WHERE uid = ? AND state IN ({marks}) ORDER BY id",
                               (self.uid, *states)).fetchall()
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, COUNT(*) FROM jobs WHERE uid = ? GROUP BY state", (self.uid,))
        return {state: 0 for state in STATES} | {state: n for state, n in rows}

    def cancel_queued(self, job_id: int) -> bool:
        """Mark a queued job cancelled; False if it is not queued (any more)."""
        with self.transaction():
            cur = self.db.execute("UPDATE jobs SET state = 'cancelled', reason = 'cancelled before it started', "
                                  "ended = ? WHERE id = ? AND uid = ? AND state = 'queued'",
                                  (time.time(), job_id, self.uid))
            return cur.rowcount == 1

    def request_cancel(self, job_id: int) -> Job | None:
        """Flag a running job for cancelling; the job as it is, or None if it is not running."""
        with self.transaction():
            cur = self.db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND uid = ? AND state = 'running'",
                                  (job_id, self.uid))
            return Job.from_row(self._row(job_id)) if cur.rowcount == 1 else None

    def clean(self) -> int:
        with self.transaction():
            return self.db.execute("DELETE FROM jobs WHERE uid = ? AND state IN ('done', 'failed', 'cancelled')",
                                   (self.uid,)).rowcount

    # ----------------------------------------------------------------------------------- the daemon
    def update(self, job_id: int, *, only_state: str | None = None, **fields: Any) -> bool:
        """Set ``fields`` of the job (only while its state is ``only_state``, if given): one
        transaction. False if no row changed."""
        for key in ("gpus", "answer"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        assigns = ", ".join(f"{key} = ?" for key in fields)
        where = " AND state = ?" if only_state else ""
        with self.transaction():
            cur = self.db.execute(f"UPDATE jobs SET {assigns} WHERE id = ? AND uid = ?{where}",
                                  (*fields.values(), job_id, self.uid, *((only_state,) if only_state else ())))
            return cur.rowcount == 1

    def start(self, job_id: int, **fields: Any) -> bool:
        """queued -> running, with ``fields``; False if it was cancelled meanwhile."""
        return self.update(job_id, only_state="queued", state="running", started=time.time(), **fields)

    def _row(self, job_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE id = ? AND uid = ?", (job_id, self.uid)).fetchone()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``): the write lock is taken at the start, so
    two writers wait for each other (up to the busy timeout) instead of failing mid-way."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, exc, tb) -> None:
        self.db.execute("ROLLBACK" if kind else "COMMIT")


def tail_events(path: Path) -> Iterator[dict[str, Any]]:
    """The events of a job's event stream (a torn last line skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return
    for line in text.splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue
