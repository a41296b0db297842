"""A guard that ends a check's process group after the process running the check was SIGKILLed
(a Ray worker under ``ray.cancel(force=True)``).

``die_with_parent`` kills the check's command with its parent, but what the command started lives
on in its process group; and Ray kills the worker's direct children with it, so the guard must not
be one. :func:`start_guard` starts a small Python (``LAUNCH``) that forks and
leaves its parent at once (the guard is re-parented away from the worker: not to it, since the
worker's subreaper flag is off meanwhile). The guard holds the read end of a pipe whose write end
only the worker has. At EOF without ``done`` the worker is dead: the guard ends the group recorded
in ``WORKDIR/check.pgid``, or last seen there if the directory is gone already (SIGTERM, then
SIGKILL), and removes the directory ``remove`` names (a task's copy of shipped files). Linux only;
elsewhere no guard is started.

Example::

    done = start_guard(workdir)   # before the check runs
    try:
        check.run(artifact)
    finally:
        done()                    # the group is gone: the guard leaves without a signal
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from bisector.checks.process_group import RECORD_NAME

DONE = b"done"
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where `import bisector` finds this package
# The guard's parent leaves at once (before any import: the worker waits only for that), so the
# guard is nobody's direct child in the worker. While it waits for the worker's word it reads the
# check's group record every POLL_S (the engine may delete a cancelled check's directory before
# the worker is dead); it imports bisector only when it has to act (an import costs the busy node
# CPU on every check).
POLL_S = 0.05
LAUNCH = ("import os, select, sys\nif os.fork() > 0:\n    os._exit(0)\n"
          f"record, seen, word = os.path.join(sys.argv[1], {RECORD_NAME!r}), '', b''\n"
          "while True:\n"
          f"    if select.select([0], [], [], {POLL_S})[0]:\n"
          "        chunk = os.read(0, 64)\n        word += chunk\n        if not chunk:\n            break\n"
          "        continue\n"
          "    try:\n        with open(record) as f:\n            seen = f.read() or seen\n"
          "    except OSError:\n        pass\n"
          f"if word != {DONE!r}:\n"
          "    sys.path.insert(0, sys.argv[2])\n    from bisector.checks.guard import main\n"
          "    main(sys.argv[1], seen, *sys.argv[3:])\n")


def _subreaper(on: bool) -> None:
    import ctypes

    from bisector.checks.process_group import PR_SET_CHILD_SUBREAPER

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def start_guard(workdir: Path, remove: Path | None = None) -> Callable[[], None]:
    """Start the guard of the check about to run in ``workdir``; return the call that dismisses it.
    ``remove``: a directory the guard deletes if the worker dies (the caller's to delete otherwise)."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    read_end, write_end = os.pipe()
    _subreaper(False)  # the guard's parent exits at once: its orphan must not come back to us
    try:
        extra = [str(remove)] if remove is not None else []
        subprocess.run([sys.executable, "-S", "-c", LAUNCH, str(workdir), PACKAGE_ROOT, *extra], stdin=read_end,
                       start_new_session=True, check=False, timeout=60)
    finally:
        os.close(read_end)
        _subreaper(True)  # as adopt_orphans left it: the command check wants it on

    def dismiss() -> None:
        try:
            os.write(write_end, DONE)
        finally:
            os.close(write_end)

    return dismiss


def guard(workdir: Path, seen: str = "", remove: Path | None = None) -> None:
    """The worker died without its word: end the check's group (recorded in the workdir, or as
    last ``seen`` there) and delete ``remove``."""
    from bisector.checks.process_group import GroupRecord, _end, _members, remove_record

    record = GroupRecord.read(Path(workdir) / RECORD_NAME) or GroupRecord.parse(seen)
    if record is not None:
        _end(sum(_members([record]), []))
        remove_record(workdir)
    if remove is not None:
        import shutil

        shutil.rmtree(remove, ignore_errors=True)


def main(workdir: str, seen: str = "", remove: str | None = None) -> None:
    """The guard process (see ``LAUNCH``)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    guard(Path(workdir), seen, Path(remove) if remove else None)
