"""What an iteration directory keeps once its candidate is checked: the check's log and files,
never bisector's artifact and weights. Real precision sessions with a real command check."""

from __future__ import annotations

import sys
import textwrap

from fixtures import fixture_path
from tests.helpers import bisector, report

# Fails iff conv4a runs in int8 (reads a DequantizeLinear output); leaves a file of its own.
CHECK = textwrap.dedent('''\
    import sys, onnx
    model = onnx.load(sys.argv[1])
    open("mine.txt", "w").write("the check's own file\\n")
    prod = {o: n.op_type for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == "conv4a")
    sys.exit(1 if any(prod.get(t) == "DequantizeLinear" for t in node.input) else 0)
''')


def test_int8_iterations_keep_the_checks_log_and_files(tmp_path):
    """int8 candidates carry their weights in the iteration directory itself: the clean-up removes
    the artifact and its inputs, not everything beside them (it once removed the check's log too)."""
    (tmp_path / "check.py").write_text(CHECK)
    proc = bisector("precision", str(fixture_path("convnet")), "--precision", "int8", "-o", "q.onnx", "--session",
                    "s", "-q", "--check", sys.executable, str(tmp_path / "check.py"), "polygraphy_debug.onnx",
                    cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report(tmp_path / "s")["result"]["keep_names"] == ["conv4a"]
    iterations = sorted(p for p in (tmp_path / "s" / "iterations").iterdir() if p.is_dir())
    assert iterations
    for it in iterations:
        assert {p.name for p in it.iterdir()} == {"check.log", "mine.txt"}, it
