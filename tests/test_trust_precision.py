"""precision never answers with exit 0 when it cannot vouch for the answer: a check that fails even
the all-fp32 candidate (a broken check), and a keep-set blessed by a check that hides fp16 overflow
(true fp16 models on onnxruntime's CPU provider) but overflows under bisector's emulation."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bisector.cli import main

# A check as a user writes it: runs the candidate on onnxruntime's CPU provider against the fp32 model.
CPU_CHECK = """
import sys, numpy as np, onnxruntime as ort
cand, ref_model = sys.argv[1], sys.argv[2]
x = np.random.default_rng(1).normal(0, 1, (1, 16)).astype(np.float32)
def run(p):
    s = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    return s.run(None, {i.name: x.astype(np.float16) if "16" in i.type else x})[0].astype(np.float64)
got, ref = run(cand), run(ref_model)
sys.exit(0 if np.all(np.isfinite(got)) and np.allclose(got, ref, atol=0.05, rtol=0.05) else 1)
"""


def island(path: Path) -> Path:
    """An overflow island: up = a * 2^20 (over fp16's 65504), mid = Identity (fp16 kernel on the
    CPU), down = * 2^-20. A GPU needs all three in fp32; the CPU provider hides down's overflow."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array(2.0 ** 20, np.float32), "big"),
             numpy_helper.from_array(np.array(2.0 ** -20, np.float32), "small"),
             numpy_helper.from_array(rng.normal(0, 0.5, (16, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
             helper.make_node("Mul", ["a", "big"], ["b"], name="up"),
             helper.make_node("Identity", ["b"], ["c"], name="mid"),
             helper.make_node("Mul", ["c", "small"], ["d"], name="down"),
             helper.make_node("MatMul", ["d", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def run(tmp_path, capsys, name, *extra) -> tuple[int, str, dict]:
    model = island(tmp_path / "island.onnx")
    check = tmp_path / "check.py"
    check.write_text(CPU_CHECK)
    code = main(["precision", str(model), "--precision", "fp16", "-o", str(tmp_path / f"{name}.onnx"), "--session",
                 str(tmp_path / name), "-q", *extra, "--check", sys.executable, str(check), "polygraphy_debug.onnx",
                 str(model)], exit=False)
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    report = tmp_path / name / "result" / "report.json"
    return code, out, json.loads(report.read_text()) if report.exists() else {}


def test_an_answer_the_emulation_fails_is_inconclusive(tmp_path, capsys):
    code, out, report = run(tmp_path, capsys, "true", "--realize", "true")
    assert code == 4, out
    assert "inconclusive: the answer does not hold under bisector's fp16 emulation" in out
    assert "--realize emulate" in out and not (tmp_path / "true.onnx").exists()
    assert report["conclusive"] is False and set(report["result"]["keep_names"]) < {"up", "mid", "down"}
    code, out, report = run(tmp_path, capsys, "emulate", "--realize", "emulate")
    assert code == 0 and report["conclusive"] is True, out
    assert {"up", "mid", "down"} <= set(report["result"]["keep_names"])
    assert (tmp_path / "emulate.onnx").exists()


def test_a_check_that_fails_even_all_fp32_is_inconclusive(tmp_path, capsys):
    code = main(["precision", str(island(tmp_path / "m.onnx")), "--precision", "fp16", "-o", str(tmp_path / "o.onnx"),
                 "--session", str(tmp_path / "s"), "-q", "--check", sys.executable, "-c",
                 "import sys; sys.exit('cannot load ' + sys.argv[1])", "polygraphy_debug.onnx"], exit=False)
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    assert code == 4 and not (tmp_path / "o.onnx").exists()
    assert "check.log: cannot load polygraphy_debug.onnx" in out and "bisector resume" not in out
