"""Exit with the next code of a sequence, one per call: flaky.py 0,1,0 (state in ./flaky.count)."""

import sys
from pathlib import Path

codes = [int(c) for c in sys.argv[1].split(",")]
counter = Path("flaky.count")
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
print(f"run {n + 1}: exit {codes[n % len(codes)]}")
sys.exit(codes[n % len(codes)])
