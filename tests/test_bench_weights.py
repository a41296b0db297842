"""The weights benchmark runs end to end on a small model (bench/weights_cost.py --mib 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "weights_cost.py"


def test_weights_benchmark_runs_and_leaves_nothing_behind(tmp_path):
    table = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(BENCH), "--mib", "8", "--repeat", "1", "--dir", str(tmp_path),
                           "--markdown", str(table)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.read_text().splitlines() if line.startswith("| ")}
    assert "no: hard link" in rows["hard link (--weights link)"]
    assert "| yes (" in rows["range copy, own .data (auto, command check, >= 64 MiB)"]
    assert "| yes (" in rows["embed in the protobuf"]
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # the model was deleted
