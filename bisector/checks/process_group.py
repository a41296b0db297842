"""The process group of a check command: tie it to bisector's life, signal it, end all of it, and
end it still after bisector itself was killed.

A command check runs in its own session (``start_new_session=True``), so its process id is also
its process group id, and whatever it starts stays in that group unless it leaves on purpose.
``PR_SET_PDEATHSIG`` kills only the command itself with bisector: a wrapper (``sh -c``,
``./check.sh``) dies, and its workload lives on, holding the GPU. So the group is also recorded,
while it runs, in ``check.pgid`` in the iteration directory (:class:`GroupRecord`), and
:func:`kill_leftovers` ends what a killed bisector left behind when the session runs again.

On Linux, bisector is also the subreaper of its checks (``PR_SET_CHILD_SUBREAPER``): while it
lives, what a check leaves behind is re-parented to it, not to init, and :func:`kill_group` reaps
it, so no zombies stay, even under an init that never reaps them (some containers).

Example::

    adopt_orphans()                         # once in the process that runs checks (Linux)
    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent())
    write_record(workdir, proc.pid)         # workdir/check.pgid
    ...
    signal_group(proc.pid, signal.SIGTERM)  # from another thread: ask the whole group to stop
    kill_group(proc)                        # SIGTERM, SIGKILL after KILL_GRACE_S; reaps the group
    remove_record(workdir)
    ...
    kill_leftovers(session_root)            # the next run: groups whose bisector was killed

Everything that reads ``/proc`` is Linux only; elsewhere no record is written and
``kill_leftovers`` finds nothing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

log = logging.getLogger(__name__)

KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL of the check's process group
GONE_POLL_S = 0.01  # how often kill_group looks whether the group has ended
PROC_DIR = "/proc"  # Linux: tells running group members from zombies
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
RECORD_NAME = "check.pgid"  # in the iteration directory while the check's group runs
RECORD_TMP = RECORD_NAME + ".tmp"  # written first, then renamed
BOOT_ID = "/proc/sys/kernel/random/boot_id"  # start times count from this boot
PID_NS = "/proc/self/ns/pid"  # pids name processes in this namespace only
DEAD_STATES = ("Z", "X")  # zombie, dead: /proc/<pid>/stat field 3
START_FIELD = 22  # /proc/<pid>/stat: start time, clock ticks after boot


def die_with_parent():
    """A ``preexec_fn`` that makes the kernel SIGKILL the command when the thread that started it
    ends (Linux ``PR_SET_PDEATHSIG``), so a check does not outlive a ``kill -9`` of bisector; None
    elsewhere. The engine starts checks from its pool's worker threads, and each of them waits in
    ``CommandCheck.run`` until the command and its group are gone: the signal never comes
    early. Only the command itself gets it, not what it starts (those stay in its process group,
    which :func:`write_record` records for :func:`kill_leftovers`)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # bisector died before prctl: nobody would send the signal
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def adopt_orphans() -> None:
    """Make this process the subreaper of its descendants (Linux ``PR_SET_CHILD_SUBREAPER``; no-op
    elsewhere): a check's process that loses its parent (a wrapper that exits before its workload)
    is re-parented here, not to init, and :func:`kill_group` reaps it with its group. Safe beside
    ``subprocess``: the reaping waits only for such adopted members of a check's own group, never
    for a process that a ``Popen`` waits for. Idempotent; it lasts for the life of the process."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.debug("PR_SET_CHILD_SUBREAPER failed: errno %d", ctypes.get_errno())


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # macOS answers EPERM for a group of zombies only
        return False


def kill_group(proc: subprocess.Popen) -> None:
    """End the whole process group: SIGTERM, then SIGKILL after ``KILL_GRACE_S``; reap the leader,
    and the members this process adopted (see :func:`adopt_orphans`)."""
    if _group_alive(proc):
        if proc.returncode is not None:
            log.warning("check command left processes behind; terminating its process group")
        signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(GONE_POLL_S)
        if _group_alive(proc):
            signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    _reap_adopted(proc.pid)


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of the group still runs (zombies do not count)."""
    proc.poll()  # reap the leader, so a zombie leader does not keep the group "alive"
    if not signal_group(proc.pid, 0):
        return False
    if not os.path.isdir(PROC_DIR):
        return True
    # kill(0) also succeeds for zombies, and an init that never reaps orphans (some containers)
    # would keep them forever: look for a member that is not a zombie.
    return any(p.state not in DEAD_STATES for p in _processes() if p.pgid == proc.pid)


def _reap_adopted(pgid: int) -> None:
    """Reap the zombies of group ``pgid`` that were re-parented to this process. The group's only
    child of ours that a ``Popen`` waits for is its leader (pid ``pgid``), which is left alone; a
    process of another group is never waited for."""
    if not signal_group(pgid, 0) or not os.path.isdir(PROC_DIR):  # no member left, not even a zombie
        return
    me = os.getpid()
    for p in _processes():
        if p.pgid == pgid and p.pid != pgid and p.ppid == me and p.state == "Z":
            try:
                os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                pass


# -- what /proc says of a process -----------------------------------------------------------------
class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` that tell a process and its group."""

    pid: int
    state: str  # R, S, D, Z, ...
    ppid: int
    pgid: int
    sid: int
    start: int  # field 22: clock ticks after boot; with the pid, it names one process for good


def _stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat``, or None if there is no such process (or no /proc)."""
    try:
        with open(os.path.join(PROC_DIR, str(pid), "stat"), "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": field 3 on
    try:
        return ProcStat(int(pid), fields[0], int(fields[1]), int(fields[2]), int(fields[3]),
                        int(fields[START_FIELD - 3]))
    except (IndexError, ValueError):
        return None


def _processes() -> Iterator[ProcStat]:
    for entry in os.scandir(PROC_DIR):
        if entry.name.isdigit():
            p = _stat(int(entry.name))
            if p is not None:
                yield p


def _alive(pid: int, start: int) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``start`` (not a later one that
    got its pid)."""
    p = _stat(pid)
    return p is not None and p.start == start and p.state not in DEAD_STATES


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _where() -> tuple[str, str]:
    """This boot and this pid namespace: a record from elsewhere names other processes."""
    try:
        ns = os.readlink(PID_NS)
    except OSError:
        ns = ""
    return _read_text(BOOT_ID), ns


# -- the record of a running group ----------------------------------------------------------------
@dataclass(frozen=True)
class GroupRecord:
    """``check.pgid``: a running check's process group, as JSON, and who runs it. Enough to find the
    group after bisector is killed, and never to take another for it: pids and group ids are
    reused, so the leader's and the owner's start times (``/proc/<pid>/stat`` field 22) come with
    them, and the boot and pid namespace those numbers mean something in."""

    pgid: int
    leader_pid: int
    leader_start: int
    owner_pid: int  # the bisector that runs the check: while it lives, the group is its own
    owner_start: int
    boot_id: str
    pid_ns: str

    @classmethod
    def read(cls, path: Path) -> "GroupRecord | None":
        """The record in ``path``, or None if it is unreadable or not one."""
        try:
            return cls.parse(Path(path).read_text())
        except OSError:
            return None

    @classmethod
    def parse(cls, text: str) -> "GroupRecord | None":
        """The record ``text`` holds (a ``check.pgid`` file's), or None if it is not one."""
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            return None


def write_record(workdir: Path, pid: int) -> Path | None:
    """Record the group of ``pid`` (started with ``start_new_session``) in ``workdir/check.pgid``,
    atomically (written beside it, then renamed). None, with nothing written, where there is no
    /proc to tell the processes by, or if the record cannot be written (the check runs anyway)."""
    leader, owner = _stat(pid), _stat(os.getpid())
    if leader is None or owner is None:
        return None
    boot_id, pid_ns = _where()
    record = GroupRecord(pgid=pid, leader_pid=pid, leader_start=leader.start, owner_pid=owner.pid,
                         owner_start=owner.start, boot_id=boot_id, pid_ns=pid_ns)
    path, tmp = Path(workdir) / RECORD_NAME, Path(workdir) / RECORD_TMP
    try:
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot record the check's process group in %s: %s", path, exc)
        return None
    return path


def remove_record(workdir: Path) -> None:
    """The group is done (reaped or killed): forget it."""
    for name in (RECORD_NAME, RECORD_TMP):
        try:
            (Path(workdir) / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.debug("cannot remove %s: %s", Path(workdir) / name, exc)


def kill_leftovers(session_root: Path) -> int:
    """End the check processes that a killed bisector left running in ``session_root``'s
    iteration directories; return how many were ended.

    For each record (``iterations/*/check.pgid``) whose bisector no longer runs: every process of
    its group that started no earlier than the recorded leader gets SIGTERM, then SIGKILL after
    ``KILL_GRACE_S`` (all groups at once), and the record is removed. Left alone: a record whose
    bisector runs (the groups are its own), and one from another pid namespace. Never signalled: a
    process that merely reuses the numbers, i.e. one that started before the leader, is in another
    session, or is in a group whose leader's pid now names a later process (a group id is not
    reused while a member of the group lives). A record from before a reboot is only removed.
    Linux only: 0 elsewhere.
    """
    if not os.path.isdir(PROC_DIR):
        return 0
    boot_id, pid_ns = _where()
    iterations = Path(session_root) / "iterations"
    done, orphaned = [], []  # records to remove; records of a dead bisector, with their path
    for path in sorted(iterations.glob(f"*/{RECORD_NAME}")) + sorted(iterations.glob(f"*/{RECORD_TMP}")):
        record = GroupRecord.read(path)
        if record is None or record.boot_id != boot_id:
            done.append(path)  # not a record, or its processes ended with the boot they ran in
        elif record.pid_ns == pid_ns and not _alive(record.owner_pid, record.owner_start):
            orphaned.append((path, record))
    members = _members([record for _, record in orphaned])
    _end(sum(members, []))
    for (path, record), group in zip(orphaned, members):
        if group:
            log.warning("ended %d process%s of the check in %s, left running by a killed bisector (pid %d)",
                        len(group), "" if len(group) == 1 else "es", path.parent, record.owner_pid)
        done.append(path)
    for path in done:
        try:
            path.unlink()
        except OSError:
            pass
    return sum(len(group) for group in members)


def _members(records: list[GroupRecord]) -> list[list[ProcStat]]:
    """The running processes of each record's group, from one look at /proc (none if the leader's
    pid names a later process: the recorded group ended long ago)."""
    if not records:
        return []
    me = os.getpid()
    running = [p for p in _processes() if p.state not in DEAD_STATES and p.pid != me]
    out = []
    for r in records:
        leader = _stat(r.leader_pid)
        if leader is not None and leader.start != r.leader_start:
            out.append([])
            continue
        out.append([p for p in running if p.pgid == r.pgid and p.sid == r.pgid and p.start >= r.leader_start])
    return out


def _end(processes: list[ProcStat]) -> None:
    """SIGTERM, then SIGKILL, each of ``processes`` still running; wait for them to go (up to
    ``KILL_GRACE_S`` each time)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        processes = [p for p in processes if _signal_same(p, sig)]
        deadline = time.monotonic() + KILL_GRACE_S
        while processes and time.monotonic() < deadline:
            time.sleep(GONE_POLL_S)
            processes = [p for p in processes if _alive(p.pid, p.start)]
        if not processes:
            return
    for p in processes:
        log.warning("process %d of a check left by a killed bisector survives SIGKILL (state D?)", p.pid)


def _signal_same(p: ProcStat, sig: int) -> bool:
    """Send ``sig`` to ``p`` if its pid still names that process (same start time); False if it is
    gone. Through a pidfd where there is one, so the pid cannot change hands in between."""
    try:
        fd = os.pidfd_open(p.pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd (Python < 3.9, Linux < 5.3): check, then kill
        fd = None
    try:
        if not _alive(p.pid, p.start):
            return False
        if fd is None:
            os.kill(p.pid, sig)
        else:
            signal.pidfd_send_signal(fd, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            os.close(fd)
