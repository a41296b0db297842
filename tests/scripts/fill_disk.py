"""fixtures/faulty_check.py that fills the disk on its Nth run, after checking (so its own verdict
is right, and every later check would run on a full disk).

    fill_disk.py COUNTER N FILLER FAULTY_CHECK_ARGS...

COUNTER counts the runs (a file outside the disk to fill); on run N, after the check, FILLER is
written until the disk is full. Exits with faulty_check's code.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = b"\0" * 4096


def main() -> int:
    counter, n, filler, rest = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    runs = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(runs))
    code = subprocess.call([sys.executable, str(ROOT / "fixtures" / "faulty_check.py"), *rest])
    if runs == n:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(fd, BLOCK)
        except OSError:
            pass
        finally:
            os.close(fd)
    return code


if __name__ == "__main__":
    sys.exit(main())
