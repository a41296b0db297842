"""TensorRT <= 10.11 weak typing for ``bisector precision --precision-constraints``.

The pure parts run everywhere: the version gate, and the per-layer precision plan built from a
keep-set and network layers (written as TensorRT 10's ONNX parser describes them). The CLI's
refusals run through the entry point. Building real engines needs TensorRT <= 10.11 and a GPU, so
that test skips here with the reason.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import onnx
import pytest

from bisector import cli
from bisector.backends import tensorrt as trt_backend
from bisector.backends.tensorrt import NetworkLayer, require_weak_typing
from bisector.backends.trtexec_args import parse_layer_precisions_arg
from bisector.commands.precision_trt import (
    ENGINE_ARTIFACT,
    LayerConstraint,
    check_weak_typing,
    layer_nodes,
    precision_plan,
    trtexec_command,
    trtexec_flags,
)
from bisector.errors import MissingDependency, UserError
from fixtures import fixture_path
from fixtures.models import FP16_OVERFLOW_COMPENSATORS, FP16_OVERFLOW_CULPRITS


def _weak_trt_here() -> tuple[str | None, str]:
    """(None, "") when TensorRT <= 10.11 imports here; else the UserError's message and a skip reason."""
    try:
        trt_backend.weak_typing_trt()
    except MissingDependency as exc:
        return exc.message, f"{exc.message}: TensorRT cannot be installed here (see ../shared/notes/TENSORRT.md)"
    except UserError as exc:
        return exc.message, exc.message
    return None, ""


NO_WEAK_TRT, NO_WEAK_TRT_REASON = _weak_trt_here()
FLOAT = (("FLOAT", True),)


def layer(index, name, type_="MATRIX_MULTIPLY", metadata="", outputs=FLOAT):
    return NetworkLayer(index, name, type_, metadata, outputs)


# ---------------------------------------------------------------- version gate
@pytest.mark.parametrize("version", ["10.0.1.6", "10.8.0.43", "10.11.0.33"])
def test_weak_typing_through_10_11(version):
    assert require_weak_typing(version)[:2] <= (10, 11)


@pytest.mark.parametrize("version", ["10.12.0.36", "10.13.2", "11.0.0.1", "11.1.0b2"])
def test_weak_typing_refused_from_10_12(version):
    with pytest.raises(UserError) as info:
        require_weak_typing(version)
    exc = info.value
    assert f"TensorRT {version}" in exc.message and "removed in 11" in exc.message and "\n" not in str(exc)
    assert "`constraints`" in exc.hint and "mixed.onnx" in exc.hint


def test_build_engine_refuses_unknown_constraints_before_importing_tensorrt():
    with pytest.raises(UserError, match="choose obey or prefer"):
        trt_backend.build_engine("model.onnx", strongly_typed=False, fp16=True, precision_constraints="strict")


def test_check_weak_typing_refuses_bad_values_before_importing_tensorrt():
    with pytest.raises(UserError, match="choose obey or prefer"):
        check_weak_typing("fp16", "strict")
    with pytest.raises(UserError, match="fp16 or bf16, not int8") as info:
        check_weak_typing("int8", "obey")
    assert "QDQ" in info.value.hint


def test_check_weak_typing_needs_tensorrt_10_11_or_older():
    if NO_WEAK_TRT is None:
        check_weak_typing("fp16", "prefer")
    else:
        with pytest.raises(UserError) as info:
            check_weak_typing("fp16", "prefer")
        assert info.value.message == NO_WEAK_TRT


# ---------------------------------------------------------------- layer -> ONNX node
def test_layer_nodes_from_metadata_then_names():
    nodes = {"mm", "relu", "relu_1", "add"}
    assert layer_nodes(layer(0, "anything", metadata="[ONNX Layer: mm]"), nodes) == ("mm",)
    fused = "[ONNX Layer: /conv1/Conv]\x1f[ONNX Layer: /relu1/Relu]"  # \x1f separates fused nodes
    assert layer_nodes(layer(0, "x", metadata=fused), nodes) == ("/conv1/Conv", "/relu1/Relu")
    assert layer_nodes(layer(0, "mm"), nodes) == ("mm",)
    assert layer_nodes(layer(0, "mm_7"), nodes) == ("mm",)  # the parser's unique name for a further layer
    assert layer_nodes(layer(0, "relu_1"), nodes) == ("relu_1",)  # a node's own name wins
    assert layer_nodes(layer(0, "add_x"), nodes) == ()
    assert layer_nodes(layer(0, "ONNXTRT_Broadcast_3"), nodes) == ()


# ---------------------------------------------------------------- the plan
def test_plan_constrains_exactly_the_kept_nodes_layers():
    """A network as the parser builds it from matmul -> rescale -> add -> relu, weights as constants."""
    layers = [
        layer(0, "w6", "CONSTANT"),
        layer(1, "matmul6", metadata="[ONNX Layer: matmul6]"),
        layer(2, "rescale6_factor", "CONSTANT", metadata="[ONNX Layer: rescale6]"),
        layer(3, "rescale6", "ELEMENTWISE", metadata="[ONNX Layer: rescale6]"),
        layer(4, "rescale6_1", "SHUFFLE", metadata="[ONNX Layer: rescale6]"),
        layer(5, "add6", "ELEMENTWISE", metadata="[ONNX Layer: add6]"),
        layer(6, "relu6", "ACTIVATION", metadata="[ONNX Layer: relu6]"),
    ]
    nodes = ["matmul6", "rescale6", "add6", "relu6"]
    plan = precision_plan(layers, {"matmul6", "rescale6"}, nodes)
    assert plan.constraints == (LayerConstraint(1, "matmul6", "matmul6", (0,)),
                                LayerConstraint(3, "rescale6", "rescale6", (0,)),
                                LayerConstraint(4, "rescale6_1", "rescale6", (0,)))
    assert plan.unmatched == ()
    assert plan.layer_precisions() == {"matmul6": "fp32", "rescale6": "fp32", "rescale6_1": "fp32"}
    assert precision_plan(layers, set(), nodes).constraints == ()
    assert precision_plan(reversed(layers), {"matmul6", "rescale6"}, nodes).layer_precisions().keys() == \
        plan.layer_precisions().keys()  # same layers whatever the listing order


def test_plan_skips_what_polygraphy_skips_and_reports_unmatched_nodes():
    layers = [
        layer(0, "shape", "SHAPE", "[ONNX Layer: shape]", (("INT64", False),)),  # shape tensor
        layer(1, "argmax", "TOPK", "[ONNX Layer: argmax]", (("FLOAT", True), ("INT32", True))),
        layer(2, "q", "QUANTIZE", "[ONNX Layer: q]", (("INT8", True),)),
        layer(3, "split", "SLICE", "[ONNX Layer: split]", (("FLOAT", True), ("HALF", True))),
    ]
    plan = precision_plan(layers, {"shape", "argmax", "q", "split", "folded"}, ["shape", "argmax", "q", "split"])
    assert plan.constraints == (LayerConstraint(2, "q", "q", ()), LayerConstraint(3, "split", "split", (0, 1)))
    assert plan.unmatched == ("argmax", "folded", "shape")


def test_plan_without_metadata_uses_layer_names():
    """TensorRT before the parser wrote metadata: names are the only link."""
    layers = [layer(0, "matmul3"), layer(1, "matmul3_12", "SHUFFLE"), layer(2, "matmul9"), layer(3, "w3", "CONSTANT")]
    plan = precision_plan(layers, {"matmul3"}, ["matmul3", "matmul9"])
    assert [c.name for c in plan.constraints] == ["matmul3", "matmul3_12"]


def test_trtexec_flags_name_the_kept_layers():
    assert trtexec_flags("fp16", []) == ["--fp16"]
    assert trtexec_flags("bf16", ["matmul6", "rescale6"]) == [
        "--bf16", "--precisionConstraints=obey", "--layerPrecisions=matmul6:fp32,rescale6:fp32",
        "--layerOutputTypes=matmul6:fp32,rescale6:fp32"]


def test_trtexec_flags_quote_names_with_colons_and_survive_a_shell():
    names = ["matmul6", "/enc/MatMul:0", 'say "hi"', "a b", "x=1", "back\\slash:1"]
    flags = trtexec_flags("fp16", names)
    assert "'/enc/MatMul:0':fp32" in flags[2]  # both of trtexec's readings give the quoted name
    assert shlex.split(trtexec_command(flags)) == ["trtexec", "--onnx=MODEL.onnx", *flags]
    for flag in flags[2:]:
        assert parse_layer_precisions_arg(flag) == dict.fromkeys(names, "fp32")


@pytest.mark.parametrize("name", ["a,b", "it's", "*", ""])
def test_trtexec_flags_name_the_layer_trtexec_cannot_express(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        trtexec_flags("fp16", ["matmul6", name])


def test_an_inexpressible_kept_layer_leaves_the_answer_and_says_why(tmp_path):
    model = onnx.load(str(fixture_path("fp16_overflow_1")))
    for n in model.graph.node:
        n.name = {"matmul6": "matmul,6", "rescale6": "rescale:6"}.get(n.name, n.name)
    path = tmp_path / "renamed.onnx"
    onnx.save(model, str(path))
    code = _precision(tmp_path, "--precision", "fp16", "--compare", "--atol", "1e-2", "--rtol", "1e-2",
                      model=path)
    assert code == 0
    result = tmp_path / "session" / "result"
    assert json.loads((result / "layer_precisions.json").read_text()) == {"matmul,6": "float32",
                                                                          "rescale:6": "float32"}
    text = (result / "layer_precisions.txt").read_text()
    assert "trtexec: not possible here" in text and "'matmul,6'" in text and "layer.precision" in text
    report = json.loads((result / "report.json").read_text())
    assert report["result"]["trtexec_flags"] is None and "'matmul,6'" in report["result"]["trtexec_error"]
    assert "trtexec cannot express it" in (result / "report.md").read_text()


# ---------------------------------------------------------------- the CLI
def _precision(tmp_path: Path, *extra: str, model: Path | None = None) -> int:
    model = model or fixture_path("fp16_overflow_1")
    argv = ["precision", str(model), "--session", str(tmp_path / "session"), "-q", *extra]
    return cli.main(argv, exit=False)


@pytest.mark.parametrize("extra, words", [
    (("--precision", "fp16", "--precision-constraints", "obey", "--compare"), "--compare cannot run"),
    (("--precision", "fp16", "--precision-constraints", "obey", "--realize", "true", "--check", "true"),
     "choose one"),
    (("--precision", "int8", "--precision-constraints", "obey", "--check", "true"), "fp16 or bf16, not int8"),
    (("--precision", "fp16", "--precision-constraints", "always", "--check", "true"), "choose obey or prefer"),
])
def test_cli_refuses_what_weak_typing_cannot_do(tmp_path, capsys, extra, words):
    assert _precision(tmp_path, *extra) == 2
    captured = capsys.readouterr()
    assert words in captured.out + captured.err
    assert not (tmp_path / "session").exists()  # refused before a session was created


@pytest.mark.skipif(NO_WEAK_TRT is None, reason="TensorRT <= 10.11 is installed here: the refusal does not apply")
def test_cli_without_weak_tensorrt_is_a_one_line_error(tmp_path, capsys):
    assert _precision(tmp_path, "--precision", "fp16", "--precision-constraints", "obey", "--check", "true") == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert NO_WEAK_TRT in text and "Traceback" not in text
    assert not (tmp_path / "session").exists()


# ---------------------------------------------------------------- real TensorRT (skipped here)
@pytest.mark.skipif(NO_WEAK_TRT is not None, reason=NO_WEAK_TRT_REASON)
def test_real_weak_engines_keep_the_culprit_and_compensator(tmp_path):
    """On TensorRT <= 10.11 with a GPU: every candidate is an engine; the answer's plan constrains the
    layers of matmul6 and rescale6, and the search's check runs the engine with polygraphy."""
    pytest.importorskip("polygraphy")
    import shutil

    if shutil.which("polygraphy") is None:
        pytest.skip("the polygraphy command is not on PATH")
    ref = tmp_path / "ref.json"
    assert cli.main(["compare", str(fixture_path("fp16_overflow_1")), "--save-outputs", str(ref),
                     "--save-inputs", str(tmp_path / "inputs.json")], exit=False) in (0, 1)
    code = _precision(tmp_path, "--precision", "fp16", "--precision-constraints", "obey", "--check", "polygraphy",
                      "run", ENGINE_ARTIFACT, "--model-type", "engine", "--trt", "--load-inputs",
                      str(tmp_path / "inputs.json"), "--load-outputs", str(ref), "--atol", "1e-2", "--rtol", "1e-2")
    assert code == 0
    result = tmp_path / "session" / "result"
    keep = {n["name"] for n in json.loads((result / "keep_fp32.json").read_text())["nodes"]}
    assert keep == set(FP16_OVERFLOW_CULPRITS[1]) | set(FP16_OVERFLOW_COMPENSATORS[1])
    assert (result / "checked.engine").stat().st_size > 0
    layers = json.loads((result / "layer_precisions.json").read_text())
    assert {"matmul6", "rescale6"} <= set(layers)
