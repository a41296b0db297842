"""Fails on the Nth run: ``nth_run.py COUNTER N`` counts its runs in the file COUNTER (created if
missing) and exits 1 on run N (and later runs), 0 before."""

import sys
from pathlib import Path


def main() -> int:
    counter, n = Path(sys.argv[1]), int(sys.argv[2])
    runs = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(runs))
    print(f"run {runs}")
    return 1 if runs >= n else 0


if __name__ == "__main__":
    sys.exit(main())
