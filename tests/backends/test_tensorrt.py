"""TensorRT backend: the text formats on recorded samples (tests/backends/data/trt/README.md says
what each is modelled on), the lazy import, and the pure logic of the version gates and the timing
cache. Whatever needs TensorRT's own behaviour (flags, caches, builds, runs) is a real-TensorRT test
that skips, with the reason, where tensorrt cannot be installed."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bisector.backends import tensorrt as trt_backend
from bisector.backends import trt_cache
from bisector.backends.trt_parse import (
    AutotuneRecord,
    normalize_dtype,
    op_layers,
    parse_autotune_log,
    parse_engine_information,
    parse_layer_information,
)
from bisector.backends.trt_replay import ReplayAlgorithm, ReplayTensor, parse_tactic_replay, tactic_replay_to_json
from bisector.backends.trtexec_args import layer_precisions_arg, parse_layer_precisions_arg
from bisector.errors import MissingDependency, UserError

DATA = Path(__file__).parent / "data" / "trt"


def _have_trt() -> bool:
    try:
        trt_backend.import_trt()
        return True
    except MissingDependency:
        return False


HAVE_TRT = _have_trt()
NO_TRT_REASON = ("TensorRT cannot be installed on this machine: PyPI has only stubs "
                 "(see ../shared/notes/TENSORRT.md)")
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason=NO_TRT_REASON)

# The engine both inspector samples describe: (name, tactic, layer type, precision, onnx nodes).
EXPECTED_LAYERS = [
    ("/conv1/Conv + /relu1/Relu", "0x5e2f3c8a1b7d9e01", "CaskConvolution", "fp32", ("/conv1/Conv", "/relu1/Relu")),
    ("Reformatting CopyNode for Input Tensor 0 to /flatten/Reshape", "0x00000000000003ea", "Reformat", "fp16", ()),
    ("matMul1_myl0_0", "sm80_xmma_gemm_f16f16_f16f32_f32_nn_n_tilesize32x32x64_stage3_warpsize2x1x2_tensor16x8x16",
     "gemm", "fp16", ("matMul1",)),
    ("__myl_TraMaxSubExpSum_myl0_1", "__myl_TraMaxSubExpSum_0x2f6d0be3a9c14e7780b1f7aa6c55d913", "kgen", "fp32",
     ("softmax",)),
    ("matMul2_myl0_2", "sm80_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize32x32x64_stage3_warpsize2x1x2_tensor16x8x8",
     "gemm", "fp32", ("matMul2",)),
]
IO = ["input", "weight1", "weight2", "output"]


def _summary(layers):
    return [(x.name, x.tactic, x.layer_type, x.precision, x.onnx_nodes) for x in layers]


def _tensors(layers):
    return [[(t.name, t.dims, t.datatype) for t in x.inputs + x.outputs] for x in layers]


# ---------------------------------------------------------------- engine inspector JSON
@pytest.mark.parametrize("sample", ["engine_info_10x.json", "engine_info_11x.json"])
def test_engine_information_10x_and_11x(sample):
    info = parse_engine_information((DATA / sample).read_text())
    assert _summary(info.layers) == EXPECTED_LAYERS
    assert info.io_tensors == IO  # 10.x "Bindings" (names), 11.x "I/O Tensors" (objects)


def test_10x_and_11x_tensors_agree():
    """11.x split Format/Datatype (and one tensor spells it DataType): same dtypes and dims."""
    ten = parse_layer_information(json.loads((DATA / "engine_info_10x.json").read_text()))
    eleven = parse_layer_information((DATA / "engine_info_11x.json").read_bytes())
    assert _tensors(ten) == _tensors(eleven)
    assert ten[0].inputs[0].format == "Row major linear FP32"
    assert eleven[0].inputs[0].format == "Row major linear"
    assert eleven[2].inputs[0].format is None  # Myelin tensors carry no format


def test_myelin_layers_report_tactic_name():
    conv, reformat, mm1, softmax, _ = parse_layer_information((DATA / "engine_info_10x.json").read_text())
    assert conv.tactic == conv.tactic_value and conv.tactic_name.startswith("sm80_xmma_fprop")
    assert mm1.tactic_value is None and mm1.tactic == mm1.tactic_name  # no TacticValue at all
    assert softmax.tactic_value == "0x0000000000000000" and softmax.tactic == softmax.tactic_name
    assert reformat.tactic_name is None and reformat.tactic == "0x00000000000003ea"


def test_single_layer_json_and_unknown_keys():
    """get_layer_information(i, JSON) gives one object; odd values and unknown keys are tolerated."""
    layer = {"Name": "x", "LayerType": "Shuffle", "TacticValue": 1002, "FutureKey": {"a": [1]},
             "Inputs": "not a list", "Outputs": [{"Name": "y", "Dimensions": "[2,3]", "Datatype": "BFloat16"},
                                                 "bare_name", 7]}
    (info,) = parse_layer_information(json.dumps(layer))
    assert (info.name, info.tactic, info.layer_type, info.inputs) == ("x", "0x3ea", "Shuffle", ())
    assert [(t.name, t.dims, t.datatype) for t in info.outputs] == [("y", (2, 3), "bf16"), ("bare_name", None, None)]
    assert info.precision == "bf16"
    assert parse_layer_information([layer, "name_only"])[1].name == "name_only"


def test_layer_names_only():
    """ProfilingVerbosity.LAYER_NAMES_ONLY: layers are bare strings, with no tactic."""
    info = parse_engine_information((DATA / "engine_info_names_only.json").read_text())
    assert [x.name for x in info.layers] == [row[0] for row in EXPECTED_LAYERS]
    assert all(x.tactic is None and x.layer_type is None for x in info.layers)
    assert parse_layer_information('"just one name"')[0].name == "just one name"  # one layer's JSON


def test_oneline_layers():
    """LayerInformationFormat.ONELINE text, one layer a line (a bare name is a name)."""
    conv, mm1, mm2 = parse_layer_information((DATA / "layer_info_oneline.txt").read_text())
    assert _summary([conv]) == EXPECTED_LAYERS[:1]
    assert [(t.name, t.dims, t.datatype) for t in conv.inputs] == [("input", (1, 3, 8, 8), "fp32")]
    assert (mm1.name, mm1.tactic, mm1.layer_type, mm1.precision) == EXPECTED_LAYERS[2][:4]
    assert [t.name for t in mm1.inputs] == ["/flatten/Reshape_output_0", "weight1", "__mye34matMul1_alpha"]
    assert [t.name for t in mm1.outputs] == ["__myln_k_arg__bb1_4"]
    assert (mm2.name, mm2.tactic) == ("matMul2_myl0_2", None)


@pytest.mark.parametrize("text, name", [
    ("Row major linear FP32", "fp32"), ("Channel major FP16 format where channel % 8 == 0", "fp16"),
    ("Half", "fp16"), ("Float", "fp32"), ("BFloat16", "bf16"), ("DataType.BF16", "bf16"),
    ("Thirty-two wide channel vectorized row major Int8 format.", "int8"), ("Row major linear Int64 format", "int64"),
    ("Unknown format", None), ("", None),
])
def test_normalize_dtype(text, name):
    assert normalize_dtype(text) == name


# ---------------------------------------------------------------- VERBOSE build log
def test_autotune_log_with_noise():
    records = parse_autotune_log((DATA / "autotune_verbose_trtexec.log").read_text().splitlines())
    assert [(r.op, r.key, r.selected, r.cost_ms) for r in records] == [
        ("matMul1", "0x2c0a5e9d14b7f3a8c6e1d2f0b9a87654", "0x71c2f8e0ad3b5", 0.00512),
        ("matMul2", "0xb7e41c0a9d2f5e3810c6a7b4d9e2f013", "0x665ded9abbf88", 0.008192),  # upper-case in log
        ("/conv1/Conv + /relu1/Relu", "0x0f1e2d3c4b5a69788796a5b4c3d2e1f0", "0x5e2f3c8a1b7d9e01", None),  # "Writing"
        ("matMul3", "0x9a8b7c6d5e4f30211203f4e5d6c7b8a9", None, None),  # log ends before the selection
    ]  # "softmax(key: 0x1234)" is not a 32-digit key: ignored
    mm1 = records[0]
    assert [t.tactic_hash for t in mm1.tactics] == ["0x71c2f8e0ad3b5", "0x4a9e01c6b2f17", "0x19d3b7a5e0c42"]
    assert mm1.tactics[1].kernel.startswith("sm80_xmma_gemm") and mm1.tactics[1].cost_ms == 0.0053248


def test_autotune_log_as_bisector_writes_it():
    """build_engine(verbose_log_path=...) writes "[V] message" lines; a failed-verification line
    between the table and the selection is skipped."""
    (rec,) = parse_autotune_log((DATA / "autotune_verbose_bisector.log").read_text())
    assert rec == AutotuneRecord("matMul1", "0x2c0a5e9d14b7f3a8c6e1d2f0b9a87654", "0x4a9e01c6b2f17", 0.0053248,
                                 rec.tactics)
    assert len(rec.tactics) == 2


def test_autotune_log_edge_cases():
    assert parse_autotune_log("") == []
    # a multi-line message (table and selection in one logger call), reordered columns, no header
    text = ("Autotuning op a(b)(key: 0x" + "ab" * 16 + "):\n"
            "kernel_name, tactic_hash, tactic_id, cost(in ms)\n"
            "k1, 0x11, 0, 0.5\n"  # does not start with "id, cost": not a row
            "The selected tactic is (tactic hash, cost(in ms)):0x11,nan\n"
            "Autotuning op c(key: 0x" + "cd" * 16 + ")\n"
            "   1, 0.25, 1.0, 0.5, kern, 0x22,\n")  # a row before any header: ignored
    a, c = parse_autotune_log([text])
    assert (a.op, a.selected, a.tactics) == ("a(b)", "0x11", ())
    assert a.cost_ms != a.cost_ms  # nan
    assert (c.op, c.selected, c.tactics) == ("c", None, ())


def test_op_layers_by_prefix():
    records = parse_autotune_log((DATA / "autotune_verbose_trtexec.log").read_text())
    layers = parse_layer_information((DATA / "engine_info_10x.json").read_text())
    mapping = op_layers(records, layers)
    assert mapping["matMul1"] == ["matMul1_myl0_0"]
    assert mapping["/conv1/Conv + /relu1/Relu"] == ["/conv1/Conv + /relu1/Relu"]
    assert mapping["matMul3"] == []


# ---------------------------------------------------------------- Polygraphy tactic replay
def test_tactic_replay_round_trip():
    raw = json.loads((DATA / "tactic_replay_polygraphy.json").read_text())
    replay = parse_tactic_replay(raw)
    assert list(replay) == ["/conv1/Conv + /relu1/Relu",
                            "Reformatting CopyNode for Input Tensor 0 to /flatten/Reshape", "/head/MatMul"]
    conv = replay["/conv1/Conv + /relu1/Relu"]
    assert (conv.implementation, conv.tactic) == (2147483681, 6782146592836410881)
    assert conv.inputs == (ReplayTensor("FLOAT", (192, 64, 8, 1), -1, -1),)
    assert replay["/head/MatMul"].inputs[0] == ReplayTensor("HALF", (64, 1), None, None)
    assert replay["/head/MatMul"].tactic < 0
    assert tactic_replay_to_json(replay) == raw  # byte-for-byte the object Polygraphy wrote
    assert parse_tactic_replay(json.dumps(tactic_replay_to_json(replay))) == replay


def test_tactic_replay_markers_are_nested():
    obj = tactic_replay_to_json({"l": ReplayAlgorithm(1, 2, (ReplayTensor("INT8", (1,)),), ())})
    assert obj["polygraphy_class"] == "TacticReplayData"
    assert obj["replay"]["l"]["polygraphy_class"] == "Algorithm"
    assert obj["replay"]["l"]["inputs"][0] == {"dtype": "DataType.INT8", "strides": [1], "vectorized_dim": None,
                                              "components_per_element": None, "polygraphy_class": "TensorInfo"}


def test_tactic_replay_legacy_and_unmarked():
    legacy = {"replay": {"l": {"implementation": 3, "tactic": 4, "inputs": [], "outputs": [
        {"dtype": "DataType.HALF", "strides": [2, 1], "vectorized_dim": None, "components_per_element": None,
         "polygraphy_serialized_json_type": "TensorInfo"}], "__polygraphy_encoded_Algorithm": "polygraphy_serialized_json_type"}},
        "polygraphy_serialized_json_type": "TacticReplayData"}
    assert parse_tactic_replay(legacy)["l"] == ReplayAlgorithm(3, 4, (), (ReplayTensor("HALF", (2, 1)),))
    assert parse_tactic_replay({"replay": {}}) == {}


@pytest.mark.parametrize("bad, words", [
    ("not json", "not JSON"),
    ({"polygraphy_class": "RunResults", "lst": []}, "RunResults"),
    ({"polygraphy_class": "TacticReplayData"}, "no 'replay'"),
    ({"replay": {"l": {"implementation": 1, "polygraphy_class": "Algorithm"}}}, "'l' is malformed"),
    ({"replay": {"l": {"implementation": 1, "tactic": 2, "inputs": [{"polygraphy_class": "ndarray"}]}}}, "ndarray"),
])
def test_tactic_replay_bad_files(bad, words):
    with pytest.raises(UserError, match=words):
        parse_tactic_replay(bad)


# ---------------------------------------------------------------- trtexec precision flags
def test_layer_precisions_arg_matches_trtexec_help():
    assert layer_precisions_arg({"layer_1": "fp32", "*": "fp16"}) == "--layerPrecisions=*:fp16,layer_1:fp32"
    assert (layer_precisions_arg({"*": "fp16", "layer_1": ["fp32", "fp16"]}, flag="--layerOutputTypes")
            == "--layerOutputTypes=*:fp16,layer_1:fp32+fp16")
    assert layer_precisions_arg({"a": "float32", "b": "half", "c": "BF16"}) == "--layerPrecisions=a:fp32,b:fp16,c:bf16"


def test_layer_precisions_arg_round_trip_names_with_colons():
    mapping = {"/enc/MatMul:0": "fp32", "x": "fp16"}
    assert layer_precisions_arg(mapping) == "--layerPrecisions='/enc/MatMul:0':fp32,x:fp16"
    assert parse_layer_precisions_arg(layer_precisions_arg(mapping)) == mapping
    assert parse_layer_precisions_arg("'Input:0':fp32") == {"Input:0": "fp32"}  # 10.x: the quoted name
    assert parse_layer_precisions_arg("Input:0:fp32") == {"Input:0": "fp32"}  # else: before the last ':'
    with pytest.raises(ValueError, match="two single quotes"):
        parse_layer_precisions_arg("'a'b':fp32")


@pytest.mark.parametrize("mapping, flag", [
    ({"a,b": "fp32"}, "--layerPrecisions"), ({"it's": "fp32"}, "--layerPrecisions"),
    ({"a": "fp64"}, "--layerPrecisions"), ({"a": ["fp32", "fp16"]}, "--layerPrecisions"),
    ({"a": "fp32"}, "--layerDeviceTypes"),
])
def test_layer_precisions_arg_rejects(mapping, flag):
    with pytest.raises(ValueError) as info:
        layer_precisions_arg(mapping, flag=flag)
    name = next(iter(mapping))
    assert repr(name) in str(info.value) or flag in str(info.value)  # says which name (or flag)


# ---------------------------------------------------------------- lazy import and version gates
def test_import_trt_missing_is_one_line_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependency) as info:
        trt_backend.import_trt()
    exc = info.value
    assert not isinstance(exc, ImportError) and isinstance(exc, UserError)
    assert exc.message == "tensorrt is not installed" and "\n" not in str(exc)
    assert "bisector[tensorrt]" in exc.hint and exc.__suppress_context__


def test_import_trt_stub_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(MissingDependency, match="stub"):
        trt_backend.import_trt()


KEY_A, KEY_B, KEY_C = "0x" + "a1" * 16, "0x" + "b2" * 16, "0x" + "c3" * 16


# ---------------------------------------------------------------- timing cache: the pure parts
def test_valid_entries_skip_invalid_hashes_and_lower_the_keys():
    rows = [(KEY_A.upper().replace("0X", "0x"), 0x665DED9ABBF88, 0.011), (KEY_B, trt_cache.INVALID_TACTIC_HASH, 1.0)]
    assert trt_cache.valid_entries(rows) == {KEY_A: (0x665DED9ABBF88, 0.011)}
    assert trt_cache.valid_entries([]) == {}


def test_forced_value_keeps_a_valid_timing_else_one_millisecond():
    assert trt_cache.forced_value(0x665DED9ABBF88, 0.011, "0x393e4ef8ad243") == (0x393E4EF8AD243, 0.011)
    assert trt_cache.forced_value(trt_cache.INVALID_TACTIC_HASH, 0.5, 7) == (7, trt_cache.FORCED_TIMING_MS)
    for bad_ms in (float("nan"), float("inf"), -1.0):
        assert trt_cache.forced_value(1, bad_ms, 7) == (7, trt_cache.FORCED_TIMING_MS)


@pytest.mark.parametrize("tactic, value", [("0x665ded9abbf88", 0x665DED9ABBF88), ("0X10", 16), (16, 16), (0, 0),
                                           (2**64 - 2, 2**64 - 2)])
def test_tactic_hash_value(tactic, value):
    assert trt_cache.tactic_hash_value(tactic) == value


@pytest.mark.parametrize("tactic", ["tactic7", "", -1, 2**64 - 1, 2**64])
def test_tactic_hash_value_refuses(tactic):
    with pytest.raises(UserError, match="tactic hash"):
        trt_cache.tactic_hash_value(tactic)


def test_force_tactic_refuses_bad_arguments_before_importing_tensorrt():
    with pytest.raises(TypeError, match="force_tactics"):
        trt_cache.force_tactic(b"serialized", KEY_A, 1)  # would edit a throwaway copy
    with pytest.raises(UserError, match="not a timing cache key"):
        trt_cache.force_tactic(object(), "0x1234", 1)
    with pytest.raises(UserError, match="not a tactic hash"):
        trt_cache.force_tactic(object(), KEY_A, "fast")


# ---------------------------------------------------------------- build precision gates (pure)
@pytest.mark.parametrize("version, strongly_typed, words", [
    ("11.0.0.1", False, "must be written into the ONNX graph"),
    ("11.1.0", True, "always strongly typed"),
    ("10.8.0", True, "need a weakly typed build"),
])
def test_precision_request_refused(version, strongly_typed, words):
    with pytest.raises(UserError, match=words):
        trt_backend.check_precision_request(version, strongly_typed=strongly_typed, weak=True)


def test_precision_request_allowed(caplog):
    trt_backend.check_precision_request("11.0.0", strongly_typed=True, weak=False)  # graph precision: any version
    trt_backend.check_precision_request("10.8.0.43", strongly_typed=False, weak=True)
    assert not caplog.records
    trt_backend.check_precision_request("10.12.0.36", strongly_typed=False, weak=True)
    assert "deprecates weak typing" in caplog.text


def test_trt_version_parsing():
    assert trt_backend._version_tuple("10.8.0.43") == (10, 8, 0, 43)
    assert trt_backend._version_tuple("11.0.0b2") == (11, 0, 0, 2)


# ---------------------------------------------------------------- real TensorRT (skipped here)
def _tiny_model(path: Path) -> Path:
    """MatMul -> Softmax -> MatMul, the network of NVIDIA's sampleEditableTimingCache."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal((128, 128)).astype(np.float32), n) for n in ("w1", "w2"))
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h"], name="matMul1"),
             helper.make_node("Softmax", ["h"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "w2"], ["output"], name="matMul2")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [128, 128])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [128, 128])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@needs_trt
def test_real_build_read_tactics_and_force_one(tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    log = tmp_path / "build.log"
    engine, cache = trt_backend.build_engine(model, editable_timing_cache=True, verbose_log_path=log)
    layers = trt_backend.layer_tactics(engine)
    assert layers and all(x.tactic for x in layers)
    records = [r for r in parse_autotune_log(log.read_text()) if r.selected and len(r.tactics) > 1]
    if not records:
        pytest.skip("this GPU offered one tactic per op: nothing to force")
    entries = trt_cache.cache_entries(cache)
    rec = records[0]
    assert rec.key in entries and entries[rec.key][0] == int(rec.selected, 16)
    other = next(t.tactic_hash for t in rec.tactics if t.tactic_hash != rec.selected)
    forced = trt_cache.force_tactics(cache, {rec.key: other})
    assert trt_cache.cache_entries(forced)[rec.key][0] == int(other, 16)
    engine2, cache2 = trt_backend.build_engine(model, timing_cache=forced, editable_timing_cache=True)
    assert trt_cache.cache_entries(cache2)[rec.key][0] == int(other, 16)
    assert trt_backend.layer_tactics(engine2)


@needs_trt
def test_real_flags_are_looked_up_by_name():
    trt = trt_backend.import_trt()
    assert trt_backend.builder_flag(trt, "EDITABLE_TIMING_CACHE") == trt.BuilderFlag.EDITABLE_TIMING_CACHE
    with pytest.raises(UserError, match="no BuilderFlag.NO_SUCH_FLAG"):
        trt_backend.builder_flag(trt, "NO_SUCH_FLAG")


@needs_trt
def test_real_timing_cache_refuses_an_unknown_key():
    cache = trt_cache.EditableCache()
    assert trt_cache.cache_entries(cache) == {}
    assert not trt_cache.force_tactic(cache, KEY_C, 1)  # not in the cache: TensorRT says no
    with pytest.raises(UserError, match="refused tactic"):
        trt_cache.force_tactics(cache.serialize(), {KEY_C: 1})


@needs_trt
def test_real_precision_gate_matches_version(tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    if trt_backend.trt_version()[0] >= 11:
        with pytest.raises(UserError, match="ONNX graph"):
            trt_backend.build_engine(model, strongly_typed=False, fp16=True)
    else:
        engine, _ = trt_backend.build_engine(model, strongly_typed=False, layer_precisions={"matMul1": "fp32"})
        assert engine


@needs_trt
def test_real_runner(tmp_path):
    pytest.importorskip("torch", reason="TensorRTRunner needs torch")
    model = _tiny_model(tmp_path / "tiny.onnx")
    engine, _ = trt_backend.build_engine(model, tf32=False)
    x = np.random.default_rng(1).standard_normal((128, 128)).astype(np.float32)
    (out,) = trt_backend.TensorRTRunner(engine).run([{"input": x}])
    assert out["output"].shape == (128, 128) and np.isfinite(out["output"]).all()
