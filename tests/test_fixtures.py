"""The fixtures keep their promises: valid, runnable, deterministic models; faults that the real
``faulty_check`` command sees (as a subprocess) exactly when the culprit is present; a threshold
fault that only real activations trigger; fp16 overflow caused by exactly the named culprits.

fp16 is checked by emulation, as in ../shared/notes/ONNXRUNTIME.md: the graph stays fp32, weights
are rounded to fp16 values, and every tensor a low-precision node produces goes through
Cast(fp16) -> Cast(fp32), which onnxruntime keeps (a true fp16 model on the CPU would not overflow).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bisector.data import save_inputs
from fixtures import fixture_path
from fixtures.build import build_all
from fixtures.faults import FAULT_KINDS, apply_fault, faulted_nodes
from fixtures.faulty_check import compare, generate_inputs, parse_fault
from fixtures.light import available, load_light
from fixtures.models import (
    ACCUMULATED_ERROR_NODES, FP16_MAX, FP16_OVERFLOW_COMPENSATORS, FP16_OVERFLOW_CULPRITS, REGISTRY,
    make_accumulated_error, make_chain, make_external, make_fp16_overflow, save_with_external_data,
)

REPO = Path(__file__).resolve().parent.parent
FAULTS_ON_CHAIN = {"scale": "relu2", "bias": "matmul3", "nan": "tanh3", "threshold": "matmul6"}
# convnet's relu4 reaches 5.25 on Polygraphy's default input (79 of 1024 values above 2.0); fed
# random [0, 1) at its input (a cut at add_skip4_out), a Relu stays below 1.0 < 2.0.
THRESHOLD_NODE, THRESHOLD_CUT, THRESHOLD = "relu4", "add_skip4_out", 2.0
EXPECTED_NODES = {"chain": 20, "unnamed": 20, "convnet": 34, "diamond": 58, "transformer": 33,
                  "control_flow": 10, "dynamic": 12, "ir3": 12, "external": 12, "wide_1000": 1000,
                  "wide_10000": 10000, "fp16_overflow_1": 38, "fp16_overflow_2": 39,
                  "fp16_overflow_3": 40, "accumulated_error": 69}
FP16_ATOL = FP16_RTOL = 1e-2


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feed: dict | None = None) -> list[np.ndarray]:
    return session(model).run(None, feed if feed is not None else generate_inputs(model)[0])


def faulty_check(*args, cwd=REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fixtures.faulty_check", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def emulate_fp16(model: onnx.ModelProto, keep=()) -> onnx.ModelProto:
    """fp32 graph that rounds like fp16 everywhere except the nodes in ``keep`` (module docstring)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = set(keep)
    kept_inputs = {i for n in m.graph.node if n.name in keep for i in n.input}
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT and t.name not in kept_inputs:
            rounded = numpy_helper.to_array(t).astype(np.float16).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(rounded, t.name))
    nodes = []
    for node in m.graph.node:
        nodes.append(node)
        if node.name in keep:
            continue
        for i, out in enumerate(node.output):
            node.output[i] = f"{out}__fp32"
            nodes.append(helper.make_node("Cast", [f"{out}__fp32"], [f"{out}__fp16"], name=f"{out}__to16",
                                          to=TensorProto.FLOAT16))
            nodes.append(helper.make_node("Cast", [f"{out}__fp16"], [out], name=f"{out}__to32", to=TensorProto.FLOAT))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return m


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("fixtures"), ["chain", "convnet", "control_flow", "external"])


# --- generated models -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_model_is_valid_runs_and_is_deterministic(name):
    model = REGISTRY[name]()
    onnx.checker.check_model(model, full_check=True)
    assert len(model.graph.node) == EXPECTED_NODES[name]
    assert model.SerializeToString() == REGISTRY[name]().SerializeToString()
    assert model.SerializeToString() != REGISTRY[name](seed=1).SerializeToString()
    outputs = run(model)
    assert all(np.isfinite(o).all() and 0 < np.abs(o).max() < 100 for o in outputs)
    names = [n.name for n in model.graph.node]
    if name == "unnamed":
        assert names.count("") == 4 and len(set(names)) == len(names) - 3
    else:
        assert all(names) and len(set(names)) == len(names)
    if name == "ir3":
        assert model.ir_version == 3 and model.opset_import[0].version == 9
        assert {t.name for t in model.graph.initializer} <= {i.name for i in model.graph.input}
    else:
        assert model.ir_version == 9 and model.opset_import[0].version == 17


def test_dynamic_batch_is_symbolic_and_runs_at_batch_3():
    model = REGISTRY["dynamic"]()
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {"Shape", "Gather", "Reshape"} <= {n.op_type for n in model.graph.node}
    (y,) = run(model, {"x": np.random.default_rng(0).random((3, 16), dtype=np.float32)})
    assert y.shape == (3, 8)


def test_control_flow_has_named_subgraph_nodes():
    model = REGISTRY["control_flow"]()
    ops = {n.op_type: n for n in model.graph.node}
    assert "If" in ops and "Loop" in ops
    body = helper.get_attribute_value(ops["Loop"].attribute[0])
    assert [n.name for n in body.node] == ["loop1_body_matmul", "loop1_body_tanh", "loop1_body_decay",
                                           "loop1_body_add", "loop1_body_cond"]


def test_external_data_round_trip(tmp_path):
    model = make_external()
    before = model.SerializeToString()
    path = save_with_external_data(model, tmp_path / "ext.onnx")
    assert model.SerializeToString() == before
    assert (tmp_path / "ext.onnx.data").stat().st_size > 4_000_000 and path.stat().st_size < 10_000
    path = save_with_external_data(model, path)  # rewriting does not append to the old data file
    assert (tmp_path / "ext.onnx.data").stat().st_size < 4_300_000
    np.testing.assert_array_equal(run(onnx.load(str(path)))[0], run(model)[0])


def test_build_is_byte_for_byte_deterministic(tmp_path, built):
    names = list(built)
    again = build_all(tmp_path, names)
    for name in names:
        assert again[name].read_bytes() == built[name].read_bytes(), name
    data = built["external"].with_name("external.onnx.data")
    assert data.read_bytes() == again["external"].with_name("external.onnx.data").read_bytes()
    assert fixture_path("chain").read_bytes() == built["chain"].read_bytes()


# --- light models -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", available())
def test_light_model_has_random_weights_and_logits(name):
    model = load_light(name)
    onnx.checker.check_model(model)
    graph = model.graph
    assert model.ir_version == 9
    assert not {i.name for i in graph.input} & {t.name for t in graph.initializer}
    assert all(n.name for n in graph.node) and len({n.name for n in graph.node}) == len(graph.node)
    assert not {"ConstantOfShape", "Softmax"} & {n.op_type for n in graph.node}
    (logits,) = run(model)
    assert np.isfinite(logits).all() and logits.std() > 0.1 and len(np.unique(logits)) > 100
    assert np.abs(logits).max() < 1000


def test_light_includes_resnet50_and_squeezenet_and_is_deterministic():
    assert {"resnet50", "squeezenet"} <= set(available())
    assert load_light("squeezenet").SerializeToString() == load_light("squeezenet").SerializeToString()


# --- faults and the faulty_check command -----------------------------------------------------

@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_fault_kind_fails_only_with_culprit_present(built, kind):
    culprit = FAULTS_ON_CHAIN[kind]
    spec = f"{kind}:{culprit}:0.5" if kind == "threshold" else f"{kind}:{culprit}"
    bad = faulty_check(built["chain"], "--fault", spec)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "DIFFER" in bad.stdout
    good = faulty_check(built["chain"], "--fault", f"{kind}:not_in_model")
    assert good.returncode == 0, good.stdout + good.stderr


def test_apply_fault_names_inserted_nodes_after_culprit_and_copies_when_absent():
    model = make_chain()
    faulted = apply_fault(model, "threshold", "relu2", threshold=0.5, factor=3.0)
    onnx.checker.check_model(faulted, full_check=True)
    new = [n.name for n in faulted.graph.node if n.name.startswith("relu2__fault_")]
    assert len(new) == 5 and faulted_nodes(faulted) == ["relu2"]
    assert apply_fault(model, "scale", "absent").SerializeToString() == model.SerializeToString()
    with pytest.raises(ValueError):
        apply_fault(model, "scale", "relu2", value=1.0)


def test_fault_inside_if_branch_and_loop_body(built):
    assert faulty_check(built["control_flow"], "--fault", "bias:if1_then_mul").returncode == 1
    assert faulty_check(built["control_flow"], "--fault", "scale:loop1_body_tanh").returncode == 1
    assert faulty_check(built["control_flow"], "--fault", "bias:if1_else_tanh").returncode == 0  # not taken


def test_faulty_check_reads_external_data_from_another_cwd(built, tmp_path):
    script = REPO / "fixtures" / "faulty_check.py"
    cmd = [sys.executable, str(script), str(built["external"]), "--fault", "bias:relu2"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr


def test_faulty_check_usage_errors_exit_2(built, tmp_path):
    assert faulty_check(built["chain"], "--fault", "melt:relu2").returncode == 2
    assert faulty_check(built["chain"], "--fault", "nan:relu2:3").returncode == 2
    assert faulty_check(tmp_path / "missing.onnx").returncode == 2
    assert faulty_check(built["chain"], "--load-inputs", tmp_path / "missing.json").returncode == 2
    assert faulty_check(built["chain"], "--bogus-flag").returncode == 2
    assert parse_fault("scale:a:b:2.5") == ("scale", "a:b", {"factor": 2.5})
    assert parse_fault("nan:x:y") == ("nan", "x:y", {})


def test_compare_tolerates_matching_non_finite_values():
    ref = np.array([1.0, np.nan, np.inf], np.float32)
    assert compare(ref, ref.copy(), 1e-3, 1e-3) is None
    assert compare(ref, ref + np.float32(5e-4), 1e-3, 1e-3) is None
    assert "non-finite" in compare(ref, np.array([np.nan, np.nan, np.inf], np.float32), 1e-3, 1e-3)
    assert compare(ref, np.array([1.0, np.nan, -np.inf], np.float32), 1e-3, 1e-3)
    assert compare(ref, np.array([1.1, np.nan, np.inf], np.float32), 1e-3, 1e-3).startswith("1 of 3")


def test_threshold_fault_needs_real_activations(built, tmp_path):
    """Full model: fails. Cut at add_skip4_out with random [0, 1) data: passes. Same cut fed the
    recorded activations: fails. This is why reduce must feed recorded values into cut tensors."""
    spec = f"threshold:{THRESHOLD_NODE}:{THRESHOLD}"
    model = onnx.load(str(built["convnet"]))
    feed = generate_inputs(model)[0]
    cut_value, relu = run(with_outputs(model, [THRESHOLD_CUT, f"{THRESHOLD_NODE}_out"]), feed)[1:]
    assert relu.max() > 2 * THRESHOLD and (relu > THRESHOLD).sum() > 50
    cut = tmp_path / "cut.onnx"
    onnx.utils.extract_model(str(built["convnet"]), str(cut), [THRESHOLD_CUT], ["logits"])
    recorded = save_inputs([{THRESHOLD_CUT: cut_value}], tmp_path / "recorded.json")

    assert faulty_check(built["convnet"], "--fault", spec).returncode == 1
    assert faulty_check(cut, "--fault", spec).returncode == 0
    assert faulty_check(cut, "--fault", spec, "--load-inputs", recorded).returncode == 1


# --- fp16 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 3])
def test_fp16_overflow_comes_from_exactly_the_culprits(k):
    model, clean = make_fp16_overflow(k), make_fp16_overflow(0)
    culprits = FP16_OVERFLOW_CULPRITS[k]
    assert len(culprits) == k and len(FP16_OVERFLOW_COMPENSATORS[k]) == k
    assert max(np.abs(numpy_helper.to_array(t)).max() for t in model.graph.initializer) < FP16_MAX
    feed = generate_inputs(model)[0]
    tensors = [o for n in model.graph.node for o in n.output if o != "y"]
    y, *acts = run(with_outputs(model, tensors), feed)
    np.testing.assert_array_equal(y, run(clean, feed)[0])  # 2**16 * 2**-16 is exact in fp32
    overflowing = {t.removesuffix("_out") for t, a in zip(tensors, acts) if np.abs(a).max() > FP16_MAX}
    assert overflowing == set(culprits)

    assert not np.isfinite(run(emulate_fp16(model), feed)[0]).all()
    kept = run(emulate_fp16(model, keep=culprits), feed)[0]
    np.testing.assert_allclose(kept, y, atol=FP16_ATOL, rtol=FP16_RTOL)
    for missing in culprits:
        partial = [c for c in culprits if c != missing]
        assert not np.isfinite(run(emulate_fp16(model, keep=partial), feed)[0]).all()


def test_fp16_clean_model_and_accumulated_error():
    clean = make_fp16_overflow(0)
    np.testing.assert_allclose(run(emulate_fp16(clean))[0], run(clean)[0], atol=FP16_ATOL, rtol=FP16_RTOL)
    model = make_accumulated_error()
    y = run(model)[0]
    scale = np.abs(y).max()
    assert np.abs(run(emulate_fp16(model))[0] - y).max() > 0.01 * scale
    assert np.abs(run(emulate_fp16(model, keep=ACCUMULATED_ERROR_NODES))[0] - y).max() < 0.002 * scale
