"""fixtures/faulty_check.py, slowed down, and leaving its pid behind so a test can clean up.

    slow_faulty.py PIDDIR SECONDS FAULTY_CHECK_ARGS...

Writes its pid to PIDDIR/<pid> (so a test can find it and make sure it is gone after bisector is
killed with -9), sleeps SECONDS, then execs faulty_check with the remaining arguments. SECONDS may
name a file holding the number, so a test can change it between runs of one session.
"""

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    piddir, seconds, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    seconds = float(Path(seconds).read_text() if os.path.isfile(seconds) else seconds)
    os.makedirs(piddir, exist_ok=True)
    Path(piddir, str(os.getpid())).touch()
    time.sleep(seconds)
    faulty = str(ROOT / "fixtures" / "faulty_check.py")
    os.execv(sys.executable, [sys.executable, faulty, *rest])


if __name__ == "__main__":
    main()
