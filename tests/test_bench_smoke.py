"""The reduce benchmark runs end to end on its smallest case (bisector and Polygraphy bisect on chain)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "reduce_vs_polygraphy.py"


@pytest.mark.slow
def test_reduce_benchmark_runs_on_chain(tmp_path):
    pytest.importorskip("polygraphy")
    out, table = tmp_path / "out.json", tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(BENCH), "--only", "chain", "--tools", "pg-bisect", "bisector",
                           "--workdir", str(tmp_path / "runs"), "--json", str(out), "--markdown", str(table)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [case] = json.loads(out.read_text())
    bis, pg = case["runs"]["bisector"], case["runs"]["pg-bisect"]
    assert bis["status"] == pg["status"] == "ok"
    assert bis["node_names"] == ["relu4"] and bis["recheck_fails"]
    assert bis["checks"] == bis["self_reported_checks"]  # the wrapper's count agrees with the tool's
    assert 0 < bis["checks"] <= case["bound"]
    assert pg["checks"] > 0 and pg["has_culprit"]
    assert "| chain | chain | 20 |" in table.read_text()
