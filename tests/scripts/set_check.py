"""A check on a text artifact listing one item per line (the engine tests' materializer writes it).

    set_check.py ARTIFACT --need 3,17 [--any] [--skip-without 5] [--record FILE] [--sleep S]
        [--journal-lines]

Exit 1 (bad) if every item of --need is listed (--any: if one of them is), else 0 (good).
Exit 125 (skip) if an item of --skip-without is missing (the full candidate is never skipped).
--record appends one JSON line per run: the items, $CUDA_VISIBLE_DEVICES, $BISECTOR_ITERATION,
start and end times, and (--journal-lines) how many lines $BISECTOR_SESSION/journal.jsonl had
when the run started (what earlier checks have already made durable).
"""

import argparse
import json
import os
import sys
import time


def ints(text: str) -> set[int]:
    return {int(x) for x in text.split(",") if x}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--need", type=ints, required=True)
    ap.add_argument("--any", action="store_true")
    ap.add_argument("--skip-without", type=ints, default=set())
    ap.add_argument("--full", type=int, default=None, help="size of the full candidate (never skipped)")
    ap.add_argument("--record")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--journal-lines", action="store_true")
    a = ap.parse_args()
    start = time.time()
    with open(a.artifact) as f:
        items = {int(line) for line in f if line.strip()}
    lines = None
    if a.journal_lines:
        journal = os.path.join(os.environ["BISECTOR_SESSION"], "journal.jsonl")
        lines = 0
        if os.path.exists(journal):
            with open(journal) as f:
                lines = f.read().count("\n")
    if a.sleep:
        time.sleep(a.sleep)
    if a.skip_without - items and len(items) != a.full:
        code = 125
    elif (a.need & items) if a.any else (a.need <= items):
        code = 1
    else:
        code = 0
    if a.record:
        line = json.dumps({"items": sorted(items), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                           "iteration": os.environ.get("BISECTOR_ITERATION"), "start": start, "end": time.time(),
                           "journal_lines": lines, "code": code}) + "\n"
        fd = os.open(a.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, line.encode())
        os.close(fd)
    print(f"items {sorted(items)} -> exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
