"""``reduce_report.reproduce_command``: the one reproduce command that ``reduce`` and ``precision``
print and write to report.json, and that it runs through the real entry point."""

from __future__ import annotations

import dataclasses

from bisector.checks.spec import CheckSpec, CompareSpec
from bisector.commands.reduce_report import reproduce_command

CMP = CheckSpec(kind="compare", compare=CompareSpec(atol=("1e-2",), rtol=("1e-2",)))


def with_compare(**changes) -> CheckSpec:
    return dataclasses.replace(CMP, compare=dataclasses.replace(CMP.compare, **changes))


def test_a_check_command_gets_the_answer_for_the_iteration_files():
    argv = ["python", "check.py", "polygraphy_debug.onnx", "--inputs", "inputs.json", "--x={artifact}:{inputs}"]
    assert reproduce_command(CheckSpec.command(argv), "polygraphy_debug.onnx", "/r/checked.onnx", "/r/inputs.json") == [
        "python", "check.py", "/r/checked.onnx", "--inputs", "/r/inputs.json", "--x=/r/checked.onnx:/r/inputs.json"]


def test_reduce_compares_against_the_target_the_flags_describe():
    cmp = with_compare(precision="fp16", provider="cuda", check_error_stat=("mean",), error_quantile=0.9, validate=True)
    assert reproduce_command(cmp, "polygraphy_debug.onnx", "/r/reduced.onnx", "/r/in.json", reference_kind="fp64") == [
        "bisector", "compare", "/r/reduced.onnx", "--load-inputs", "/r/in.json", "--precision", "fp16",
        "--reference", "fp64", "--provider", "cuda", "--atol", "1e-2", "--rtol", "1e-2", "--check-error-stat",
        "mean", "--error-quantile", "0.9", "--validate"]


def test_precision_compares_the_checked_model_against_the_recorded_outputs():
    cmp = with_compare(precision="fp16")  # already in the checked model
    assert reproduce_command(cmp, "polygraphy_debug.onnx", "checked.onnx", "in.json", reference="ref.json") == [
        "bisector", "compare", "checked.onnx", "--load-inputs", "in.json", "--load-outputs", "ref.json",
        "--atol", "1e-2", "--rtol", "1e-2"]


def test_an_engine_is_run_with_polygraphy():
    assert reproduce_command(CheckSpec(kind="interactive"), "polygraphy_debug.engine",
                             "checked.engine", "in.json", reference="ref.json", engine=True) == [
        "polygraphy", "run", "checked.engine", "--model-type", "engine", "--trt", "--load-inputs", "in.json",
        "--load-outputs", "ref.json"]


def test_nothing_to_repeat_after_a_person_answered():
    assert reproduce_command(CheckSpec(kind="interactive"), "polygraphy_debug.onnx", "r.onnx", "in.json") is None
