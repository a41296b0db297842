"""Answers that rest on noise are not given with exit 0: a check that timed out on the answer, and
a session whose check file was edited since its verdicts were given."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fixtures import fixture_path
from tests.helpers import bisector, executable, one_error_line

FAULTY = Path(__file__).resolve().parent.parent / "fixtures" / "faulty_check.py"


def test_an_answer_whose_only_failure_is_a_timeout_is_inconclusive(tmp_path):
    # A correct check that hangs once, on iteration 1, whose candidate does not hold the fault.
    executable(tmp_path / "hang_once.py", f"""\
        import json, subprocess, sys, time
        if json.load(open("iter.json"))["iteration"] == 1:
            time.sleep(30)
        sys.exit(subprocess.call([sys.executable, {str(FAULTY)!r}, *sys.argv[1:]]))
        """)
    proc = bisector("reduce", str(fixture_path("chain")), "-o", "r.onnx", "--session", "s", "-q", "--json",
                    "--iter-info", "iter.json", "--check-timeout", "3", "--check", str(tmp_path / "hang_once.py"),
                    "polygraphy_debug.onnx", "--fault", "scale:relu4", "--load-inputs", "inputs.json", cwd=tmp_path)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 4 and doc["exit_code"] == 4 and doc["conclusive"] is False, proc.stderr
    assert "relu4" not in doc["result"]["node_names"]  # the search followed the timeout
    assert "timed out" in doc["result"]["doubt"] and not (tmp_path / "r.onnx").exists()
    assert "(iteration 1: timeout after 3 s)" in doc["result"]["doubt"]
    assert "inconclusive: the answer's only failing check timed out" in " ".join(proc.stderr.split())


def test_a_session_refuses_to_go_on_after_its_check_file_changed(tmp_path):
    check = tmp_path / "check.py"
    check.write_text(f"import subprocess, sys\nsys.exit(subprocess.call([sys.executable, {str(FAULTY)!r}, "
                     f"*sys.argv[1:], '--fault', 'scale:tanh3']))\n")
    argv = ["reduce", str(fixture_path("chain")), "-o", "r.onnx", "--session", "s", "-q", "--check", sys.executable,
            "check.py", "polygraphy_debug.onnx", "--load-inputs", "inputs.json"]
    assert bisector(*argv, cwd=tmp_path).returncode == 0
    check.write_text(check.read_text().replace("tanh3", "relu4"))  # the check's bug, fixed
    again = bisector(*argv, cwd=tmp_path)
    assert again.returncode == 2
    assert f"the check's file {check} changed since the session started" in one_error_line(again.stderr)
    resumed = bisector("resume", "s", cwd=tmp_path)
    assert resumed.returncode == 2 and "changed since the session started" in resumed.stderr


def test_json_gives_one_object_on_a_usage_error_too(tmp_path):
    proc = bisector("reduce", "missing.onnx", "-o", "r.onnx", "--json", "--check", "true", cwd=tmp_path)
    assert proc.returncode == 2 and json.loads(proc.stdout) == {"exit_code": 2,
                                                         "error": f"{tmp_path / 'missing.onnx'}: no such file"}
    nan = bisector("reduce", str(fixture_path("chain")), "-o", "r.onnx", "--check-timeout", "nan", "--check", "true",
                   cwd=tmp_path)
    assert nan.returncode == 2 and "--check-timeout nan" in one_error_line(nan.stderr)
