"""The parts of ``bench/gpu_check.py`` and ``bench/gpu_precision.py`` that need no GPU and no torch:
argument and file resolution, the Dropout rewrite, the verdict rule, and the planted faults."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bisector.model.precision import rewrite

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gc = _load("gpu_check")
gp = _load("gpu_precision")


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return gc.onnxrt_outputs(model, [{model.graph.input[0].name: x}])[0][model.graph.output[0].name]


def test_args_defaults_and_usage_errors():
    args = gc.parse_args(["m.onnx"])
    assert (args.device, args.atol, args.rtol, args.reference, args.seed) == ("cuda", 1e-2, 1e-2, "onnxrt", 1)
    with pytest.raises(SystemExit):
        gc.parse_args(["m.onnx", "--atol", "-1"])
    assert gc.main(["m.onnx", "--device", "tpu"]) == gc.EXIT_USAGE
    assert gc.main([str(ROOT / "no_such.onnx")]) == gc.EXIT_USAGE  # before torch is imported


def test_inputs_come_from_the_flag_then_bisector_then_the_working_directory(tmp_path):
    given = tmp_path / "given.json"
    given.write_text("[]")
    assert gc.inputs_path(given, {"BISECTOR_INPUTS": "b.json"}, tmp_path) == given
    assert gc.inputs_path(None, {"BISECTOR_INPUTS": "b.json"}, tmp_path) == Path("b.json")
    assert gc.inputs_path(None, {}, tmp_path) is None  # generated then
    (tmp_path / "inputs.json").write_text("[]")
    assert gc.inputs_path(None, {}, tmp_path) == tmp_path / "inputs.json"
    with pytest.raises(gc.CheckError):
        gc.inputs_path(tmp_path / "missing.json", {}, tmp_path)


def test_reference_is_the_flag_or_the_session_model(tmp_path):
    with pytest.raises(gc.CheckError, match="--reference-model"):
        gc.reference_model_path(None, {})
    ref = tmp_path / "s" / "reference" / "reference.onnx"
    ref.parent.mkdir(parents=True)
    ref.write_bytes(b"")
    assert gc.reference_model_path(None, {"BISECTOR_SESSION": str(tmp_path / "s")}) == ref
    assert gc.reference_model_path(ref, {}) == ref


def test_dropout_becomes_identity_with_its_name():
    node = helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop", ratio=0.5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    assert gc.for_torch(model) == 1
    [n] = model.graph.node
    assert (n.op_type, n.name, list(n.input), list(n.output), len(n.attribute)) == ("Identity", "drop", ["x"], ["y"], 0)


def test_judge_uses_elementwise_tolerances_and_fails_non_finite():
    ref = [{"y": np.array([1.0, 2.0, 0.0], np.float32)}]
    good = gc.judge([{"y": np.array([1.005, 2.01, 0.005], np.float32)}], ref, 1e-2, 1e-2)
    assert good.passed and good.nonfinite == 0 and good.max_abs == pytest.approx(0.01, rel=1e-3)
    off = gc.judge([{"y": np.array([1.5, 2.0, 0.0], np.float32)}], ref, 1e-2, 1e-2)
    assert not off.passed and any(line.startswith("FAIL") for line in off.lines)
    inf = gc.judge([{"y": np.array([np.inf, 2.0, 0.0], np.float32)}], ref, 1e9, 1e9)
    assert not inf.passed and inf.nonfinite == 1 and inf.max_abs == np.inf


def test_type_summary_counts_casts_and_initializers():
    from fixtures.models import make_fp16_overflow

    mixed = rewrite(make_fp16_overflow(1), "fp16", keep=frozenset({"matmul6", "rescale6"}), realize="true")
    text = gc.type_summary(mixed)
    assert "Casts to: FLOAT 2, FLOAT16 2" in text and "FLOAT16" in text.split("initializers:")[1]


def test_island_is_exact_in_fp32_and_needs_all_three_nodes_in_fp16():
    from fixtures.models import make_chain

    model, planted = gp.with_islands(make_chain(), [0.5])
    assert planted == ["island1_up", "island1_id", "island1_down"]
    clean = make_chain()
    x = np.random.default_rng(0).random([d.dim_value for d in clean.graph.input[0].type.tensor_type.shape.dim],
                                        dtype=np.float32) * 4
    assert np.array_equal(_ort(model, x), _ort(clean, x))  # powers of two cancel exactly
    keep_all_but = [frozenset(planted) - {n} for n in planted]
    for keep in [frozenset(), *keep_all_but]:
        out = _ort(rewrite(model, "fp16", keep=keep, realize="emulate"), x)
        assert not np.isfinite(out).all(), sorted(keep)
    assert np.isfinite(_ort(rewrite(model, "fp16", keep=frozenset(planted), realize="emulate"), x)).all()


def test_conv_bn_pair_cancels_in_fp32_and_overflows_in_fp16():
    from fixtures.models import make_convnet

    clean = make_convnet()
    model, pair = gp.scale_conv_bn(make_convnet(), fraction=0.0)
    kinds = {n.name: n.op_type for n in model.graph.node}
    assert [kinds[n] for n in pair] == ["Conv", "BatchNormalization"]
    x = np.random.default_rng(0).random([d.dim_value for d in clean.graph.input[0].type.tensor_type.shape.dim],
                                        dtype=np.float32)
    np.testing.assert_allclose(_ort(model, x), _ort(clean, x), rtol=1e-4, atol=1e-4)
    assert not np.isfinite(_ort(rewrite(model, "fp16", keep=frozenset({pair[1]}), realize="emulate"), x)).all()


def test_candidates_list_each_keep_set_once():
    got = gp.candidates([["a", "b"], ["b", "a"], ["a", "b", "c"]])
    keeps = [k for _, k in got]
    assert keeps[0] == frozenset() and len(keeps) == len(set(keeps))
    assert frozenset({"a", "b", "c"}) in keeps and frozenset({"c", "b"}) in keeps
    assert len(keeps) == 1 + 3 + 3  # {}, {a,b}, {b}, {a}, {a,b,c}, {b,c}, {a,c}


def test_tables_count_agreement_and_flag_a_different_keep_set():
    row = {"label": "keep {a}", "keep": ["a"], "emulate": True, "emulate_max_abs": 0.001, "device": False,
           "device_max_abs": float("inf"), "dtypes": {"float16": 3, "float32": 1}}
    results = [{"case": "c", "tol": 0.01, "planted": ["a"], "verdicts": [row],
                "emulate": {"lowerable": 4, "checks": 3, "keep": ["a"]},
                "true": {"lowerable": 4, "checks": 5, "keep": ["a", "b"]}}]
    text = gp.tables(results, "cpu")
    assert "| c | 4 | 0.01 | {a} | 3, {a} | 5, {a, b} | **no** | 0 of 1 |" in text
    assert "| c | keep {a} | good (0.001) | bad (inf/NaN) | 3 / 1 |" in text
    assert text.endswith("Keep-sets equal on 0 of 1 cases; verdicts agree on 0 of 1.")
