"""The process group of a check command: tie it to bisector's life, signal it, end all of it.

A command check runs in its own session (``start_new_session=True``), so its process id is also
its process group id, and whatever it starts stays in that group unless it leaves on purpose.

Example::

    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent())
    ...
    signal_group(proc.pid, signal.SIGTERM)  # from another thread: ask the whole group to stop
    kill_group(proc)                        # SIGTERM, SIGKILL after KILL_GRACE_S; reaps the leader
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Iterable

log = logging.getLogger(__name__)

KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL of the check's process group
GONE_POLL_S = 0.01  # how often kill_group looks whether the group has ended
PROC_DIR = "/proc"  # Linux: tells running group members from zombies
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent():
    """A ``preexec_fn`` that makes the kernel SIGKILL the command when the thread that started it
    ends (Linux ``PR_SET_PDEATHSIG``), so a check does not outlive a ``kill -9`` of bisector; None
    elsewhere. The engine starts checks from its pool's worker threads, and each of them waits in
    ``CommandCheck.run`` until the command and its group are gone: the signal never comes
    early. Only the command itself gets it, not what it starts (those stay in its process group)."""
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
    """End the whole process group: SIGTERM, then SIGKILL after ``KILL_GRACE_S``; reap the leader."""
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


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of the group still runs (zombies do not count)."""
    proc.poll()  # reap the leader, so a zombie leader does not keep the group "alive"
    if not signal_group(proc.pid, 0):
        return False
    if not os.path.isdir(PROC_DIR):
        return True
    # kill(0) also succeeds for zombies, and an init that never reaps orphans (some containers)
    # would keep them forever: look for a member that is not a zombie.
    return any(state != "Z" for state in _group_states(proc.pid))


def _group_states(pgid: int) -> Iterable[str]:
    """The states (R, S, Z, ...) of the processes in group ``pgid``, from /proc (Linux)."""
    for entry in os.scandir(PROC_DIR):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat"), "rb") as f:
                stat = f.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if len(fields) > 2 and fields[2] == str(pgid):
            yield fields[0]
