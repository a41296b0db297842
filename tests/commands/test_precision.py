"""precision end to end, through the CLI entry point, on fixture models with real onnxruntime runs.

The fp16 overflow fixtures carry their answer. Under the emulation a kept culprit's output is
rounded again where a lowered node reads it (as in the true mixed model, where a Cast sits there),
so the smallest fp32 set is each culprit *and* its compensator (``rescale<i>``).
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bisector import cli
from bisector.backends.target import Target
from bisector.compare.comparator import compare_samples
from bisector.compare.config import CompareConfig
from bisector.data import generate_inputs
from bisector.model.prepare import default_specs
from fixtures import fixture_path
from fixtures.models import FP16_OVERFLOW_COMPENSATORS, FP16_OVERFLOW_CULPRITS, make_fp16_overflow

TOL = ["--atol", "1e-2", "--rtol", "1e-2"]
CONFIG = CompareConfig.from_flags(atol=["1e-2"], rtol=["1e-2"])


def precision(tmp_path: Path, model: Path, *extra: str, check: list[str] | None = None) -> tuple[int, dict]:
    session = tmp_path / "session"
    argv = ["precision", str(model), "--session", str(session), "-q", "-o", str(tmp_path / "mixed.onnx"), *extra]
    if check is not None:
        argv += ["--check", *check]
    code = cli.main(argv, exit=False)
    report = session / "result" / "report.json"
    return code, (json.loads(report.read_text()) if report.exists() else {})


def keep_file(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "session" / "result" / "keep_fp32.json").read_text())


def answer(k: int) -> set[str]:
    return set(FP16_OVERFLOW_CULPRITS[k]) | set(FP16_OVERFLOW_COMPENSATORS[k])


def passes(model: onnx.ModelProto, keep, realize: str = "emulate", samples: int = 1) -> bool:
    data = generate_inputs(default_specs(model), samples=samples, seed=1)
    ref = Target().run(model, None, _tmp(), data)
    out = Target(precision="fp16", keep=frozenset(keep), realize=realize).run(model, None, _tmp(), data)
    return compare_samples(out, ref, CONFIG).passed


def _tmp() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="bisector-test-"))


# ---------------------------------------------------------------------------------------- fp16
@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 3])
def test_compare_check_finds_each_culprit_and_its_compensator(tmp_path, k):
    code, report = precision(tmp_path, fixture_path(f"fp16_overflow_{k}"), "--precision", "fp16", "--compare", *TOL)
    assert code == 0
    doc = keep_file(tmp_path)
    names = {n["name"] for n in doc["nodes"]}
    assert names == answer(k)
    assert set(FP16_OVERFLOW_CULPRITS[k]) <= names
    assert doc["precision"] == "fp16" and doc["realize"] == "emulate" and doc["one_minimal"] is True
    assert all(n["error"] == "inf" and n["tensor"] == f"{n['name']}_out" for n in doc["nodes"])  # they overflow
    n = report["result"]["lowerable"]
    assert report["checks"] <= 2 * k * (n - 1).bit_length() + 1 + 2  # the budget, + 2 endpoints
    model = make_fp16_overflow(k)
    assert passes(model, names)  # the answer passes ...
    for x in names:  # ... and is 1-minimal: dropping any one node fails
        assert not passes(model, names - {x}), x


@pytest.mark.slow
def test_the_written_models_and_files(tmp_path):
    code, report = precision(tmp_path, fixture_path("fp16_overflow_1"), "--precision", "fp16", "--compare", *TOL,
                             "--samples", "2", "--save-inputs", str(tmp_path / "used.json"))
    assert code == 0
    result = tmp_path / "session" / "result"
    from bisector.data import load_inputs

    used, checked = load_inputs(tmp_path / "used.json"), load_inputs(result / "inputs.json")
    assert len(used) == 2 and all((u["x"] == c["x"]).all() for u, c in zip(used, checked))
    mixed = onnx.load(str(tmp_path / "mixed.onnx"))  # -o: the true mixed model, standalone
    inferred = onnx.shape_inference.infer_shapes(mixed)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    by_name = {n.name: n for n in mixed.graph.node}
    assert types.get("matmul6_out") == onnx.TensorProto.FLOAT  # kept: fp32
    assert types.get("matmul5_out") == onnx.TensorProto.FLOAT16  # lowered
    assert by_name["matmul6"].op_type == "MatMul" and any(n.op_type == "Cast" for n in mixed.graph.node)
    assert [i.name for i in mixed.graph.input] == ["x"] and mixed.graph.input[0].type.tensor_type.elem_type == 1
    layers = json.loads((result / "layer_precisions.json").read_text())
    assert layers == {"matmul6": "float32", "rescale6": "float32"}
    assert "--layerPrecisions=matmul6:fp32,rescale6:fp32" in (result / "layer_precisions.txt").read_text()
    md = (result / "report.md").read_text()
    assert "Where precision is lost" in md and "| 1 | `matmul6` |" in md
    # The reproduce command re-checks the answer as the search checked it: it passes.
    repro = report["reproduce"]
    assert repro[:2] == ["bisector", "compare"]
    assert cli.main(repro[1:], exit=False) == 0


@pytest.mark.slow
def test_command_check_gets_the_realized_model_under_polygraphys_name(tmp_path):
    model = fixture_path("fp16_overflow_2")
    inputs, ref = tmp_path / "in.json", tmp_path / "ref.json"
    assert cli.main(["compare", str(model), "--save-inputs", str(inputs), "--save-outputs", str(ref)], exit=False) == 0
    # The console script, not `python -m bisector`: run from the repository root, the check's
    # relative "bisector" would be resolved to the package directory (CommandCheck._from_launch_dir).
    check = [str(Path(sys.executable).parent / "bisector"), "compare", "polygraphy_debug.onnx",
             "--load-inputs", "inputs.json", "--load-outputs", str(ref), *TOL]
    # No --realize: the check runs onnxruntime (bisector compare), so candidates are emulated.
    code, report = precision(tmp_path, model, "--precision", "fp16", "--load-inputs", str(inputs), check=check)
    assert code == 0
    assert {n["name"] for n in keep_file(tmp_path)["nodes"]} == answer(2)
    assert report["result"]["one_minimal"] is True


@pytest.mark.parametrize("argv,expected", [
    (["polygraphy", "run", "polygraphy_debug.onnx", "--onnxrt"], "emulate"),
    (["polygraphy", "run", "polygraphy_debug.onnx", "--trt", "--onnxrt"], "true"),
    (["bisector", "compare", "polygraphy_debug.onnx"], "emulate"),
    (["trtexec", "--onnx=polygraphy_debug.onnx"], "true"),
    (["./my_check.sh"], "true"),
])
def test_the_default_realization_follows_the_check(argv, expected):
    from bisector.cli.options import CompareOptions
    from bisector.cli.precision import default_realize

    assert default_realize(CompareOptions(), argv)[0] == expected
    assert default_realize(CompareOptions(compare=True), None)[0] == "emulate"
    assert default_realize(CompareOptions(compare=True, provider="cuda"), None)[0] == "true"


def test_true_fp16_on_the_cpu_misses_what_the_emulation_catches(tmp_path):
    model = make_fp16_overflow(1)
    assert passes(model, (), realize="true")  # onnxruntime CPU computes the fp16 MatMul in fp32
    assert not passes(model, (), realize="emulate")
    code, _ = precision(tmp_path, fixture_path("fp16_overflow_1"), "--precision", "fp16", "--compare",
                        "--realize", "true", *TOL)
    assert code == 2  # nothing to search for: and the hint says --realize emulate


@pytest.mark.slow
def test_polygraphy_bisect_keeps_a_contiguous_prefix(tmp_path):
    code, report = precision(tmp_path, fixture_path("fp16_overflow_2"), "--precision", "fp16", "--compare",
                             "--mode", "bisect", *TOL)
    assert code == 0
    names = report["result"]["keep_names"]
    order = [n.name for n in make_fp16_overflow(2).graph.node]
    assert names == order[:len(names)] and names[-1] == "rescale9"  # first k nodes, up to the last culprit
    assert report["result"]["one_minimal"] is None


@pytest.mark.slow
def test_resume_reuses_every_verdict(tmp_path):
    args = ("--precision", "fp16", "--compare", *TOL)
    code, first = precision(tmp_path, fixture_path("fp16_overflow_3"), *args)
    assert code == 0
    code, again = precision(tmp_path, fixture_path("fp16_overflow_3"), *args)
    assert code == 0
    # "checks_this_run": the run's own checks, where "checks" counts the whole session (engine.Stats)
    assert again.get("checks_this_run", again["checks"]) == 0 and again["cached"] >= first["checks"]
    assert again["result"]["keep"] == first["result"]["keep"]


def test_sensitivity_names_the_overflowing_tensor(tmp_path):
    from bisector.commands.precision import PrecisionOptions, setup

    st = setup(PrecisionOptions(model=fixture_path("fp16_overflow_3"), precision="fp16"), tmp_path)
    flagged = [st.materializer.names[i] for i in st.strategy.items[:st.strategy.likely]]
    assert flagged == ["matmul2", "rescale2", "matmul6", "rescale6", "matmul10", "rescale10"]
    e = st.errors["matmul6"]
    assert e.nonfinite > 0 and e.fp32_max_abs > 65504 and e.tensor == "matmul6_out"
    assert np.isfinite(st.errors["matmul7"].error) and st.errors["matmul7"].error < 1e-2


# ---------------------------------------------------------------------------------------- int8
def test_int8_exclusion_leaves_the_kept_node_in_fp32(tmp_path):
    from bisector.commands.precision_int8 import Int8Quantizer, quantized_nodes
    from bisector.model.prepare import prepare

    prepared = prepare(fixture_path("convnet"), weights_dir=tmp_path / "weights")
    samples = generate_inputs(default_specs(prepared.model), samples=2, seed=1)
    q = Int8Quantizer(prepared, samples, tmp_path / "int8")
    full = q.quantize(frozenset(), tmp_path / "all.onnx")
    assert {"conv4a", "conv4b", "fc"} <= set(quantized_nodes(full))
    model = q.quantize(frozenset({"conv4a", "fc"}), tmp_path / "keep.onnx")
    prod = {t: n for n in model.graph.node for t in n.output}
    readers = {}
    for n in model.graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n.op_type)
    inits = {t.name: t for t in model.graph.initializer}
    for name in ("conv4a", "fc"):
        node = next(n for n in model.graph.node if n.name == name)
        assert all(prod[t].op_type not in ("QuantizeLinear", "DequantizeLinear") for t in node.input if t in prod)
        assert all(inits[t].data_type == onnx.TensorProto.FLOAT for t in node.input if t in inits)  # fp32 weights
        assert all("QuantizeLinear" not in readers.get(t, []) for t in node.output)
    still = set(quantized_nodes(model))
    assert not still & {"conv4a", "fc"} and {"conv1", "conv4b", "conv6"} <= still  # the others stay int8
    assert (tmp_path / "int8" / "calibration.json").exists()  # calibrated once, reused


@pytest.mark.slow
def test_int8_search_on_a_conv_net(tmp_path):
    code, report = precision(tmp_path, fixture_path("convnet"), "--precision", "int8", "--compare",
                             "--atol", "2e-2", "--rtol", "2e-2")
    assert code == 0
    keep = {n["name"] for n in keep_file(tmp_path)["nodes"]}
    assert keep and report["result"]["one_minimal"] is True
    mixed = onnx.load(str(tmp_path / "mixed.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in mixed.graph.node)
    from bisector.commands.precision_int8 import quantized_nodes

    assert not keep & set(quantized_nodes(mixed))
    assert cli.main(report["reproduce"][1:], exit=False) == 0  # the QDQ answer passes on its own


# ---------------------------------------------------------------------------------------- usage
@pytest.mark.parametrize("extra,message", [
    ((), "needs --precision"), (("--precision", "fp8"), "choose fp16"),
    (("--precision", "fp16", "--mode", "x"), "--mode"), (("--precision", "fp16", "--order", "x"), "--order"),
    (("--precision", "fp16", "--dir", "up"), "--dir"),
])
def test_usage_errors_exit_2(tmp_path, capsys, extra, message):
    code, _ = precision(tmp_path, fixture_path("fp16_overflow_1"), "--compare", *extra)
    assert code == 2
    captured = capsys.readouterr()
    assert message in captured.out + captured.err


def test_control_flow_nodes_do_not_break_the_sensitivity_pass(tmp_path, capsys):
    """A Loop's output run alone in the shadow model has another shape than the recorded one: that
    node gets no own error, and the search goes on (here fp16 breaks nothing: a clear exit 2)."""
    code, _ = precision(tmp_path, fixture_path("control_flow"), "--precision", "fp16", "--compare", *TOL)
    out = capsys.readouterr()
    assert code == 2 and "no failure to search for" in out.out + out.err and "Traceback" not in out.out + out.err
