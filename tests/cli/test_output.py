"""Output a user can trust and script: results on stdout, diagnostics on stderr, one JSON object
with --json, --version, -q without progress lines, a shape hint that works, counts in English."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fixtures import fixture_path
from tests.helpers import bisector, faulty


def test_compare_prints_its_result_on_stdout_and_json_alone_with_json(tmp_path):
    proc = bisector("compare", str(fixture_path("chain")), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "compare" in proc.stdout and "PASS" in proc.stdout
    proc = bisector("compare", str(fixture_path("fp16_overflow_1")), "--precision", "fp16", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)  # stdout holds the one object, nothing else
    assert doc["passed"] is False and doc["exit_code"] == 1 and doc["comparison"]
    assert "FAIL" in proc.stderr


def test_reduce_json_is_one_summary_and_q_prints_no_iteration(tmp_path):
    proc = bisector("reduce", str(fixture_path("chain")), "-o", "r.onnx", "--session", "s", "-q", "--json",
                    "--check", *faulty(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["strategy"] == "reduce" and doc["conclusive"] is True and doc["exit_code"] == 0
    assert doc["result"]["node_names"] == ["relu4"] and "iterations" not in doc
    assert doc["result"]["output"] == str(tmp_path / "r.onnx")  # written paths are absolute
    assert "iteration " not in proc.stderr and "culprit" in proc.stderr  # -q: no progress, the answer stays
    plain = bisector("reduce", str(fixture_path("chain")), "-o", "r2.onnx", "--session", "s2",
                     "--check", *faulty(), cwd=tmp_path)
    assert "iteration 0:" in plain.stderr and "culprit" in plain.stdout  # not a terminal: a line per check


def test_version():
    proc = bisector("--version", cwd=fixture_path("chain").parent)
    assert proc.returncode == 0 and proc.stdout.startswith("bisector ")


def test_the_hint_for_a_dynamic_input_gives_a_shape_that_works(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).random((8, 3, 7, 7)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[7, 7], strides=[2, 2]),
             helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2])]
    graph = helper.make_graph(nodes, "d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "dyn.onnx"))
    proc = bisector("compare", "dyn.onnx", cwd=tmp_path)
    assert proc.returncode == 2
    hint = next(line for line in proc.stderr.splitlines() if "hint:" in line)
    shape = hint.split("--input-shapes ")[1].split(" ")[0]
    assert shape != "x:[1,3,1,1]"
    again = bisector("compare", "dyn.onnx", "--input-shapes", shape, cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_one_node_is_one_node(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="only")]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "one.onnx"))
    proc = bisector("reduce", "one.onnx", "-o", "r.onnx", "--session", "s", "--check", sys.executable, "-c",
                    "import sys; sys.exit(1)", cwd=tmp_path)
    assert "1 nodes" not in proc.stdout + proc.stderr and "(1 node)" in proc.stderr
