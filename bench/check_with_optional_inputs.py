"""One check command for both tools: ``fixtures/faulty_check.py``, counted, with inputs when given.

    python bench/check_with_optional_inputs.py --counter FILE MODEL --fault KIND:NODE[:PARAM] ...

- appends one line to ``FILE`` per call (``O_APPEND``, one ``write``), so checks are counted the same
  way for Polygraphy and bisector, whatever either tool says about itself;
- adds ``--load-inputs inputs.json`` when ``inputs.json`` exists in the working directory.
  bisector writes one beside every candidate (the values the full model produced at the cut
  tensors); Polygraphy never does, so its checks get faulty_check's default inputs (Polygraphy's
  data loader: seed 1, uniform [0, 1)), which is what its own ``polygraphy run`` check would use;
- then runs ``fixtures.faulty_check.main`` in this process (no second interpreter), and exits
  with its code (0 match, 1 differ, 2 usage, 3 runtime error).

The argv given to both tools is identical; only the files each tool leaves in the check's working
directory differ.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INPUTS_NAME = "inputs.json"


def record(counter: str, argv: list[str]) -> None:
    line = f"{time.time():.3f}\t{os.getpid()}\t{os.getcwd()}\t{' '.join(argv)}\n".encode()
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    counter = None
    if len(argv) >= 2 and argv[0] == "--counter":
        counter, argv = argv[1], argv[2:]
    if counter:
        record(counter, argv)
    if "--load-inputs" not in argv and os.path.isfile(INPUTS_NAME):
        argv = [*argv, "--load-inputs", INPUTS_NAME]
    sys.path.insert(0, str(ROOT))
    from fixtures.faulty_check import main as faulty_main

    return faulty_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
