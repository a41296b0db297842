"""The session directory: what was asked (``session.json``), what was learnt (``journal.jsonl``),
and everything a person needs to look at afterwards::

    session/
      session.json        command line, versions, model fingerprint, strategy parameters
      journal.jsonl       one fsync'd line per verdict
      iterations/0007/    artifact(s) of iteration 7, check.log, inputs fed to cut tensors
      good/ bad/          files named by --artifacts, sorted by verdict
      result/             the answer and report.md / report.json
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from bisector import __version__
from bisector.artifacts.journal import JOURNAL_NAME, Journal
from bisector.errors import UserError

SESSION_FORMAT = 1
LOCK_NAME = "lock"  # flock'd by the one process that runs the session; holds its pid
# Less free space than this on the session's disk after a check, and its verdict is not trusted: on a
# full disk the check's own writes (its log, its outputs) fail, and it fails for that reason.
DISK_FULL_BYTES = 64 << 10
# Everything a session writes in its directory (the commands' set-up writes the last ones): a
# session with no verdict and nothing else there may be emptied and started again.
SESSION_ENTRIES = frozenset({LOCK_NAME, "session.json", "session.json.tmp", JOURNAL_NAME, "iterations", "result", "good",
                             "bad", "weights", "activations", "activations.partial", "reference", "int8", "trt",
                             "inputs.json", "sensitivity.json"})


def default_dir() -> Path:
    """``bisector-session-YYYYmmdd-HHMMSS`` in the working directory, or with ``-2``, ``-3``... if
    that exists: a session started in the same second as another must not reopen it."""
    base = Path.cwd() / time.strftime("bisector-session-%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"bisector": __version__, "python": platform.python_version()}
    for dist in ("onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "tensorrt"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


class Session:
    """Open or create a session directory. ``meta`` is ``session.json``'s content.

    One process at a time runs a session: ``open`` takes an exclusive ``flock`` on ``SESSION/lock``
    and holds it until ``close()`` (or the process's end, even by kill -9); a second process gets
    a one-line error naming the holder's pid."""

    def __init__(self, root: Path, meta: dict[str, Any], lock=None):
        self.root = Path(root)
        self.meta = meta
        self._lock = lock
        self.journal = Journal(self.root / JOURNAL_NAME)
        conflicts = self.journal.conflicts()
        if conflicts:
            a, b = conflicts[0]
            self.close()
            raise UserError(f"{self.root / JOURNAL_NAME} gives candidate {a.fingerprint[:12]} ({a.label}) two verdicts: "
                            f"{a.verdict.value} at iteration {a.iteration}, {b.verdict.value} at iteration "
                            f"{b.iteration} ({len(conflicts)} conflict(s)); two processes ran the session at once",
                            hint=f"bisector log {self.root} > log.txt, keep one verdict per candidate, then "
                                 f"bisector replay log.txt `session` NEW_DIR")

    def close(self) -> None:
        """Let another process run the session."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- creation and resume ----------------------------------------------------------------
    @classmethod
    def open(cls, root: Path | None, *, command: list[str], strategy: str, params: dict[str, Any],
             model: dict[str, Any] | None, spec: dict[str, Any] | None = None) -> "Session":
        """Create ``root`` (or a new timestamped directory), or reopen it if it holds the same
        session. Refuses, naming the difference, if the model or the parameters changed. ``spec``
        (the command, check and run options as JSON; see ``bisector.api``) is what resume rebuilds
        the session's command from; ``command`` is the command line, for people."""
        root = Path(root).absolute() if root else default_dir()  # checks run elsewhere: paths must hold there
        meta_path = root / "session.json"
        own_dir = not root.exists()
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)  # weights, activations: as private as can be
        except OSError as exc:
            raise UserError(f"cannot create session directory {root}: {exc.strerror or exc}",
                            hint="pass `session` DIR somewhere writable") from None
        lock = take_lock(root)
        try:
            if meta_path.exists():
                meta = load_meta(root)
                diff = _difference(meta, strategy, params, model)
                if diff and not _start_over(root, meta):
                    raise UserError(f"{root} holds a different session: {diff}",
                                    hint="use a new `session` directory, or the original command")
                if not diff:  # its spec stays as it began: a resume's -o or -j is for that run only
                    return cls(root, meta, lock)
                own_dir = True  # _start_over empties only a directory bisector made
            meta = {"format": SESSION_FORMAT, "strategy": strategy, "command": command, "params": params,
                    "model": model, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "cwd": os.getcwd(),
                    "host": socket.gethostname(), "uid": _uid(), "versions": _versions(), "own_dir": own_dir,
                    "spec": spec}
            try:
                (root / "iterations").mkdir(exist_ok=True)
                _write_json_atomic(meta_path, meta)
            except OSError as exc:
                raise UserError(f"cannot create session directory {root}: {exc.strerror or exc}",
                                hint="pass `session` DIR somewhere writable") from None
            return cls(root, meta, lock)
        except BaseException:
            if lock is not None:
                lock.close()
            raise

    @property
    def resumed(self) -> bool:
        return len(self.journal) > 0

    # -- paths ------------------------------------------------------------------------------
    def iteration_dir(self, i: int) -> Path:
        d = self.root / "iterations" / f"{i:04d}"
        if d.exists():  # a check in flight when the session was killed: start it afresh
            shutil.rmtree(d, ignore_errors=True)
        try:
            d.mkdir(parents=True)
        except OSError as exc:
            raise UserError(f"cannot create {d}: {exc.strerror or exc}",
                            hint=f"make room or fix the permissions, then: bisector resume {self.root}") from None
        return d

    def check_space(self) -> None:
        """``UserError`` if the session's disk is full (under ``DISK_FULL_BYTES`` free): a check that
        ran on a full disk may have failed only because it could not write, so its verdict must
        not be journaled. The session stays resumable."""
        try:
            st = os.statvfs(self.root)
        except (OSError, AttributeError):  # no statvfs (Windows) or the directory is gone
            return
        root_user = getattr(os, "geteuid", lambda: -1)() == 0
        free = (st.f_bfree if root_user else st.f_bavail) * st.f_frsize
        if free < DISK_FULL_BYTES:
            raise UserError(f"disk full under {self.root} ({free // 1024} KiB free): the last check's verdict is "
                            f"not trusted and was not recorded",
                            hint=f"free some space, then: bisector resume {self.root}")

    @property
    def result_dir(self) -> Path:
        d = self.root / "result"
        d.mkdir(exist_ok=True)
        return d

    def sort_artifacts(self, iteration: int, workdir: Path, names: list[str], verdict: str,
                       art_dir: Path | None = None) -> list[Path]:
        """Move files named by ``--artifacts`` into ``good/`` or ``bad/`` of ``art_dir`` (default: the
        session) as ``<base>_N<iteration><ext>`` (Polygraphy's layout, without the timestamp)."""
        moved = []
        if verdict not in ("good", "bad"):
            return moved
        inside = Path(workdir).resolve()
        for name in names:
            src = Path(name) if Path(name).is_absolute() else workdir / name
            if not src.exists() or not src.resolve().is_relative_to(inside):  # only what the check wrote there
                continue
            dest_dir = Path(art_dir or self.root) / verdict
            dest_dir.mkdir(parents=True, exist_ok=True)
            dest = dest_dir / f"{src.stem}_N{iteration}{src.suffix}"
            shutil.move(str(src), dest)
            moved.append(dest)
        return moved


def take_lock(root: Path):
    """The session's exclusive lock (an open file holding our pid), or ``UserError`` naming the
    pid of the process that holds it. None where ``flock`` does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        return None
    try:
        f = open(root / LOCK_NAME, "a+")
    except OSError as exc:
        raise UserError(f"cannot open {root / LOCK_NAME}: {exc.strerror or exc}",
                        hint="pass `session` DIR somewhere writable") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise UserError(f"{root} is in use by another bisector process (pid {holder})",
                        hint="wait for it to end, or stop it; two runs at once would corrupt the session") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def foreign(root: Path, meta: dict[str, Any]) -> str | None:
    """Why the session at ``root`` may not be this user's own (made by another user or on another
    machine, e.g. a session shared in a bug report), or None: its stored command must then be
    shown and confirmed before it runs."""
    host, uid = socket.gethostname(), _uid()
    if "host" not in meta or "uid" not in meta:
        return "it does not say who made it"
    if meta["host"] != host:
        return f"it was made on {meta['host']}, not here ({host})"
    try:
        owner = (Path(root) / "session.json").stat().st_uid
    except OSError:
        owner = uid
    if uid is not None and (meta["uid"] != uid or owner != uid):
        return f"it was made by user {meta['uid']}, not by you ({uid})"
    return None


def _start_over(root: Path, meta: dict[str, Any]) -> bool:
    """Empty ``root`` for a new session if the one there never got a verdict (it stopped in its
    set-up, e.g. on a bad flag, and the corrected command is run again), bisector made the directory
    itself (``own_dir``: a ``--session`` that existed before may hold the user's files, such as an
    ``inputs.json``), and it holds nothing but what bisector writes there. Else: False, left alone."""
    journal = root / JOURNAL_NAME
    if not meta.get("own_dir") or (journal.exists() and journal.stat().st_size > 0):
        return False
    if any(p.name not in SESSION_ENTRIES for p in root.iterdir()):
        return False
    for p in root.iterdir():
        if p.name == LOCK_NAME:  # ours, held
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return True


def load_meta(root: Path) -> dict[str, Any]:
    path = Path(root) / "session.json"
    if not path.exists():
        raise UserError(f"{root} is not a bisector session (no session.json)")
    try:
        meta = json.loads(path.read_text(errors="replace"))
    except ValueError as exc:
        raise UserError(f"{path} is damaged: {exc}") from None
    problem = _meta_problem(meta)
    if problem:
        raise UserError(f"{path} is damaged: {problem}", hint="start a new session") from None
    return meta


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a ``session.json`` (hand-edited, truncated, from elsewhere), or None."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    if not isinstance(meta.get("format", SESSION_FORMAT), int) or meta.get("format", SESSION_FORMAT) > SESSION_FORMAT:
        return f"format {meta.get('format')!r} is newer than this bisector's ({SESSION_FORMAT})"
    command = meta.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        return f"'command' is {command!r}, not a command line"[:200]
    for key, types in (("strategy", str), ("params", dict), ("model", (dict, type(None))), ("cwd", (str, type(None)))):
        if not isinstance(meta.get(key), types):
            return f"{key!r} is {meta.get(key)!r}"[:200]
    return None


def _difference(meta: dict, strategy: str, params: dict, model: dict | None) -> str:
    if meta.get("strategy") != strategy:
        return f"it is a {meta.get('strategy')} session, not {strategy}"
    old_model, new_model = meta.get("model") or {}, model or {}
    if old_model.get("fingerprint") != new_model.get("fingerprint"):
        where = (f"{old_model.get('path')}" if old_model.get("path") == new_model.get("path")
                 else f"it was {old_model.get('path')}, now {new_model.get('path')}")
        return (f"the model changed since the session started ({where}: fingerprint "
                f"{str(old_model.get('fingerprint'))[:12]} -> {str(new_model.get('fingerprint'))[:12]})")
    old = meta.get("params", {})
    changed = [k for k in sorted(set(old) | set(params)) if old.get(k) != params.get(k)]
    if changed:
        k = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        if k == "check_files":
            was, now = old.get(k) or {}, params.get(k) or {}
            files = sorted(f for f in set(was) | set(now) if was.get(f) != now.get(f))
            return (f"the check's file {files[0]} changed since the session started: its verdicts came from the "
                    f"old one{more}")
        return f"parameter {k!r} was {old.get(k)!r}, now {params.get(k)!r}{more}"
    return ""


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> Path:
    try:
        _write_json_atomic(path, obj)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
