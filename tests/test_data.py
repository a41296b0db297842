"""bisector.data: round trips, Polygraphy interop in both directions (real `polygraphy run`
subprocesses and Polygraphy's own JSON code), synthetic inputs, flag parsing and bad files."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bisector.model.shapes import parse_shapes
from bisector.data import (
    encode_array,
    generate_inputs,
    load_inputs,
    load_outputs,
    parse_val_range,
    save_inputs,
    save_outputs,
)
from bisector.errors import UserError

POLYGRAPHY = str(Path(sys.executable).with_name("polygraphy"))

# name -> (onnx type, numpy dtype, shape); outputs are Relu(x), h + h, i + i, Not(b)
TINY_INPUTS = {
    "x": (TensorProto.FLOAT, np.float32, [1, 4]),
    "h": (TensorProto.FLOAT16, np.float16, [3]),
    "i": (TensorProto.INT64, np.int64, [3]),
    "b": (TensorProto.BOOL, np.bool_, [2]),
}
TINY_OUTPUTS = {"/m/relu:0": "x", "hh": "h", "ii": "i", "nb": "b"}


def assert_samples_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert list(a) == list(e)
        for name in e:
            assert a[name].dtype == np.asarray(e[name]).dtype and a[name].shape == np.shape(e[name]), name
            np.testing.assert_array_equal(a[name], e[name])


def tiny_outputs(sample):
    return {"/m/relu:0": np.maximum(sample["x"], 0), "hh": sample["h"] + sample["h"],
            "ii": sample["i"] + sample["i"], "nb": ~sample["b"]}


def polygraphy(*args, cwd):
    return subprocess.run([POLYGRAPHY, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 4-node model (ir_version 9, opset 17) and Polygraphy's own files from running it."""
    d = tmp_path_factory.mktemp("tiny")
    inputs = [helper.make_tensor_value_info(n, t, s) for n, (t, _, s) in TINY_INPUTS.items()]
    outputs = [helper.make_tensor_value_info(o, TINY_INPUTS[i][0], TINY_INPUTS[i][2]) for o, i in TINY_OUTPUTS.items()]
    nodes = [helper.make_node("Relu", ["x"], ["/m/relu:0"]), helper.make_node("Add", ["h", "h"], ["hh"]),
             helper.make_node("Add", ["i", "i"], ["ii"]), helper.make_node("Not", ["b"], ["nb"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, d / "tiny.onnx")
    run = polygraphy("run", "tiny.onnx", "--onnxrt", "--iterations", "3", "--seed", "7",
                     "--val-range", "x:[-2,2]", "[0,3]", "--save-inputs", "in.json", "--save-outputs", "out.json",
                     cwd=d)
    assert run.returncode == 0, run.stdout + run.stderr
    run = polygraphy("run", "tiny.onnx", "--onnxrt", "--iterations", "2", "--save-inputs", "indir",
                     "--save-outputs", "outdir", cwd=d)
    assert run.returncode == 0, run.stdout + run.stderr
    return d


def tiny_specs():
    return {n: (dt, tuple(s)) for n, (_, dt, s) in TINY_INPUTS.items()}


# ---------------------------------------------------------------- round trips
MIXED = [
    {"f32": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32),
     "f16": np.array([0.5, -1.25, 65504.0], np.float16), "f64": np.array(np.pi),
     "i64": np.array([[-(2**62), 0, 7]], np.int64), "u8": np.arange(5, dtype=np.uint8),
     "bool": np.array([True, False, True]), "empty": np.zeros((0, 4), np.float32),
     "/scope/name:0": np.ones((1, 1, 2), np.float32)},
    {"f32": np.full((2, 3), np.nan, np.float32), "f16": np.array([np.inf, 0, 1], np.float16),
     "f64": np.array(-0.0), "i64": np.array([[1, 2, 3]], np.int64), "u8": np.full(5, 255, np.uint8),
     "bool": np.array([False, False, True]), "empty": np.zeros((0, 4), np.float32),
     "/scope/name:0": np.zeros((1, 1, 2), np.float32)},
]


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_inputs_round_trip(tmp_path, suffix):
    path = save_inputs(MIXED, tmp_path / f"inputs{suffix}")
    assert_samples_equal(load_inputs(path), MIXED)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_outputs_round_trip_several_runners(tmp_path, suffix):
    runs = {"onnxrt-runner-N0-11/22/26-05:01:53": MIXED, "trt:runner": MIXED[:1]}
    loaded = load_outputs(save_outputs(runs, tmp_path / f"outputs{suffix}"))
    assert list(loaded) == list(runs)
    for name in runs:
        assert_samples_equal(loaded[name], runs[name])


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_outputs_single_runner_forms(tmp_path, suffix):
    assert_samples_equal(load_outputs(save_outputs(MIXED, tmp_path / f"a{suffix}"))["bisector"], MIXED)
    loaded = load_outputs(save_outputs(MIXED[0], tmp_path / f"b{suffix}", runner_name="mine"))
    assert list(loaded) == ["mine"]
    assert_samples_equal(loaded["mine"], MIXED[:1])


def test_saved_outputs_have_polygraphys_structure(tmp_path):
    doc = json.loads(save_outputs({"r": [{"y": np.ones(2)}]}, tmp_path / "o.json").read_text())
    assert doc["polygraphy_class"] == "RunResults" and doc["lst"][0][0] == "r"
    iteration = doc["lst"][0][1][0]
    assert iteration["polygraphy_class"] == "IterationResult" and iteration["runner_name"] == "r"
    assert iteration["runtime"] == 0.0
    assert iteration["outputs"]["y"]["polygraphy_class"] == "LazyArray"
    assert iteration["outputs"]["y"]["values"]["polygraphy_class"] == "ndarray"


def test_plain_npz_reads_as_one_sample(tmp_path):
    np.savez(tmp_path / "plain.npz", x=np.ones(3), y=np.zeros(2, np.int64))
    assert_samples_equal(load_inputs(tmp_path / "plain.npz"), [{"x": np.ones(3), "y": np.zeros(2, np.int64)}])
    assert list(load_outputs(tmp_path / "plain.npz")) == ["bisector"]


# ---------------------------------------------------------------- Polygraphy reads ours
def test_polygraphy_run_reads_our_inputs_and_outputs(tiny, tmp_path):
    samples = generate_inputs(tiny_specs(), samples=2, seed=5, val_range={"x": (-1, 1), "": (0, 3)})
    save_inputs(samples, tmp_path / "ours_in.json")
    save_outputs([tiny_outputs(s) for s in samples], tmp_path / "ours_out.json", runner_name="reference")
    args = ["run", tiny / "tiny.onnx", "--onnxrt", "--load-inputs", "ours_in.json"]
    run = polygraphy(*args, "--load-outputs", "ours_out.json", "--save-outputs", "theirs.json", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASSED" in run.stdout + run.stderr
    theirs = next(iter(load_outputs(tmp_path / "theirs.json").values()))
    assert_samples_equal(theirs, [tiny_outputs(s) for s in samples])

    wrong = [tiny_outputs(s) for s in samples]
    wrong[1]["/m/relu:0"] = wrong[1]["/m/relu:0"] + 1.0  # polygraphy must see the values, not just parse
    save_outputs(wrong, tmp_path / "wrong_out.json", runner_name="reference")
    run = polygraphy(*args, "--load-outputs", "wrong_out.json", cwd=tmp_path)
    assert run.returncode != 0 and "FAILED" in run.stdout + run.stderr


def test_polygraphy_python_api_reads_our_files(tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    save_inputs(MIXED, tmp_path / "in.json")
    assert_samples_equal([dict(s) for s in load_json(str(tmp_path / "in.json"))], MIXED)
    save_outputs({"a": MIXED, "b": MIXED[1:]}, tmp_path / "out.json")
    results = RunResults.load(str(tmp_path / "out.json"))
    assert list(results.keys()) == ["a", "b"]
    assert results["a"][1].runner_name == "a"
    assert_samples_equal([{k: results["a"][i][k] for k in MIXED[i]} for i in range(2)], MIXED)


# ---------------------------------------------------------------- we read Polygraphy's
def test_we_read_polygraphy_run_files(tiny):
    inputs = load_inputs(tiny / "in.json")
    # Polygraphy's default data loader, seed 7, per-input and default ranges: we generate the same
    assert_samples_equal(inputs, generate_inputs(tiny_specs(), samples=3, seed=7,
                                                 val_range=parse_val_range(["x:[-2,2]", "[0,3]"])))
    outputs = load_outputs(tiny / "out.json")
    (runner, iterations), = outputs.items()
    assert runner.startswith("onnxrt-runner")
    assert_samples_equal(iterations, [tiny_outputs(s) for s in inputs])


def test_we_read_polygraphy_per_iteration_directories(tiny):
    inputs = load_inputs(tiny / "indir")
    assert_samples_equal(inputs, generate_inputs(tiny_specs(), samples=2))
    (iterations,) = load_outputs(tiny / "outdir").values()
    assert_samples_equal(iterations, [tiny_outputs(s) for s in inputs])


def test_we_read_polygraphy_python_api_files(tmp_path):
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json

    save_json(MIXED, str(tmp_path / "in.json"))
    assert_samples_equal(load_inputs(tmp_path / "in.json"), MIXED)
    results = RunResults()
    results.append(("r0", [IterationResult(dict(s), runtime=0.5, runner_name="r0") for s in MIXED]))
    results.append(("r1", [IterationResult(dict(MIXED[0]), runner_name="r1")]))
    results.save(str(tmp_path / "out.json"))
    loaded = load_outputs(tmp_path / "out.json")
    assert list(loaded) == ["r0", "r1"]
    assert_samples_equal(loaded["r0"], MIXED)


def test_legacy_type_markers(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    payload = encode_array(arr)["array"]
    legacy = {"__polygraphy_encoded_ndarray": "polygraphy_serialized_json_type", "array": payload}
    noted = {"polygraphy_serialized_json_type": "ndarray", "array": payload}
    (tmp_path / "in.json").write_text(json.dumps([{"a": legacy, "b": noted}]))
    assert_samples_equal(load_inputs(tmp_path / "in.json"), [{"a": arr, "b": arr}])
    run_results = {"__polygraphy_encoded_RunResults": "polygraphy_serialized_json_type", "lst": [["old", [
        {"__polygraphy_encoded_IterationResult": "polygraphy_serialized_json_type", "runtime": 1.0,
         "runner_name": "old", "outputs": {
             "y": {"__polygraphy_encoded_LazyNumpyArray": "polygraphy_serialized_json_type", "values": legacy},
             "z": noted}}]]]}
    (tmp_path / "out.json").write_text(json.dumps(run_results))
    assert_samples_equal(load_outputs(tmp_path / "out.json")["old"], [{"y": arr, "z": arr}])


# ---------------------------------------------------------------- generated inputs
@pytest.mark.parametrize("seed", [1, 42])
@pytest.mark.parametrize("val_range", [None, {"x": (-1, 1), "": (0, 5)}, (2, 3), {"x": (float("-inf"), float("inf"))}])
def test_generate_inputs_matches_polygraphy_data_loader(seed, val_range):
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import DataLoader

    specs = {"x": (np.float32, (2, 3)), "h": (np.float16, (4,)), "i": (np.int64, (5,)), "u": (np.uint8, (3,)),
             "b": (np.bool_, (6,)), "d": (np.float64, ())}
    meta = TensorMetadata()
    for name, (dtype, shape) in specs.items():
        meta.add(name, dtype, shape)
    loader = DataLoader(seed=seed, iterations=3, input_metadata=meta, val_range=val_range)
    ours = generate_inputs(specs, samples=3, seed=seed, val_range=val_range)
    assert_samples_equal(ours, [dict(loader[i]) for i in range(3)])


def test_generate_inputs_defaults():
    (sample,) = generate_inputs({"x": (np.float32, ("batch", 3)), "i": ("int32", (None, -1)), "b": (bool, (50,))})
    assert sample["x"].shape == (1, 3) and sample["i"].shape == (1, 1)
    assert ((0 <= sample["x"]) & (sample["x"] < 1)).all() and sample["i"].dtype == np.int32
    assert set(np.unique(sample["b"])) == {False, True}
    assert_samples_equal(generate_inputs({"x": (np.float32, (3,))}), generate_inputs({"x": (np.float32, (3,))}))


def test_generate_inputs_errors():
    with pytest.raises(UserError, match="val_range"):
        generate_inputs({"u": (np.uint8, (2,))}, val_range=(-5, 3))
    with pytest.raises(UserError, match="cannot generate"):
        generate_inputs({"s": (np.str_, (2,))})


# ---------------------------------------------------------------- flag parsing
def test_parse_val_range():
    assert parse_val_range(["x:[0,2]", "[-1,1]"]) == {"x": (0, 2), "": (-1, 1)}
    assert parse_val_range(["in:0:[0.5, inf]"]) == {"in:0": (0.5, float("inf"))}
    assert parse_val_range(None) == {}
    for bad in (["x:5"], ["x:[1]"], ["x:[1,2,3]"], ["x:[a,b]"], ["x:[3,1]"]):
        with pytest.raises(UserError, match="`val_range`"):
            parse_val_range(bad)


def test_parse_shapes():
    assert parse_shapes(["x:[1,3,224,224]", "y:[4]"]) == {"x": [1, 3, 224, 224], "y": [4]}
    assert parse_shapes(["in:0:[batch, 3]", "s:[]"]) == {"in:0": ["batch", 3], "s": []}
    for bad in (["x"], ["x:1,3"], [":[1]"], ["x:[1,,3]"], ["x:[1.5]"], ["x:[-1]"], ["x:[1,3"]):
        with pytest.raises(UserError, match="`input_shapes`"):
            parse_shapes(bad)


# ---------------------------------------------------------------- bad files
def corrupt_npy_payload() -> str:
    return base64.b64encode(b"\x93NUMPY not really").decode()


@pytest.mark.parametrize("content, message", [
    ("not json {", "JSONDecodeError"),
    ("42", "found a int"),
    ("[1, 2]", "found a int"),
    ("[]", "no samples"),
    ('[{"x": 3}]', "input 'x' is a int"),
    ('[{"x": {"polygraphy_class": "Tensor", "tensor": ""}}]', "unsupported object type 'Tensor'"),
    ('[{"x": {"polygraphy_class": "ndarray"}}]', "KeyError"),
    ('[{"x": {"polygraphy_class": "ndarray", "array": "%s"}}]' % corrupt_npy_payload(), "ValueError"),
    ('{"lst": [], "polygraphy_class": "RunResults"}', "holds outputs"),
])
def test_bad_inputs_files(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(UserError, match="not a Polygraphy inputs") as info:
        load_inputs(tmp_path / "bad.json")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content, message", [
    ("", "JSONDecodeError"),
    ("[]", "an inputs file"),
    ('{"lst": 3, "polygraphy_class": "RunResults"}', "not a list of [runner_name, iterations] pairs"),
    ('{"lst": [["r", 5]], "polygraphy_class": "RunResults"}', "iterations are not a list"),
    ('{"lst": [["r", [7]]], "polygraphy_class": "RunResults"}', "an iteration is a int"),
    ('{"lst": [["r", [{"outputs": 1, "runtime": 0, "runner_name": "r", "polygraphy_class": "IterationResult"}]]],'
     ' "polygraphy_class": "RunResults"}', "'outputs' is not an object"),
])
def test_bad_outputs_files(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(UserError, match="not a Polygraphy outputs") as info:
        load_outputs(tmp_path / "bad.json")
    assert message in str(info.value)


def test_missing_files_and_directories(tmp_path):
    with pytest.raises(UserError, match="no such inputs file"):
        load_inputs(tmp_path / "nope.json")
    with pytest.raises(UserError, match="no such outputs file"):
        load_outputs(tmp_path / "nope.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .json files"):
        load_inputs(tmp_path / "empty")
    (tmp_path / "bad.npz").write_bytes(b"PK not a zip")
    with pytest.raises(UserError, match="not a Polygraphy inputs JSON or .npz"):
        load_inputs(tmp_path / "bad.npz")
    save_outputs(MIXED, tmp_path / "outputs.npz")
    with pytest.raises(UserError, match="holds outputs"):
        load_inputs(tmp_path / "outputs.npz")
    np.savez(tmp_path / "badkeys.npz", __runners__=np.array(["r"]), **{"x/0/y": np.ones(1)})
    with pytest.raises(UserError, match="unexpected key 'x/0/y'"):
        load_outputs(tmp_path / "badkeys.npz")
