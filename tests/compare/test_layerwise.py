"""`bisector compare --outputs mark all`: layer by layer, on fixture faults and the fp16 fixtures, with
real onnxruntime runs (and a real `polygraphy` reading what it saves)."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from bisector.backends.target import Target
from bisector.cli import main
from bisector.cli.compare import reduce_line
from bisector.cli.options import CompareOptions
from bisector.commands.compare_layers import run_layers
from bisector.compare.config import CompareConfig
from bisector.compare.layers import (Marked, jump, marking_note, rank_nodes, shown_rows, sparkline,
                                     tensor_error)
from fixtures import fixture_path
from fixtures.faults import apply_fault
from fixtures.models import make_diamond

import numpy as np

TOL = ["--atol", "1e-2", "--rtol", "1e-2"]
CULPRIT = "branch_a_add"  # in diamond: a small bias there grows downstream
FAULT_NODE = f"{CULPRIT}__fault_bias"  # apply_fault's node that computes the faulty tensor
FAULT_TENSOR = f"{CULPRIT}_out"


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- fp16 (done-when)
def test_fp16_overflow_names_the_overflowing_node_first_and_shows_the_growth(capsys):
    model = str(fixture_path("fp16_overflow_1"))
    assert main(["compare", model, "--precision", "fp16", "--outputs", "mark", "all"], exit=False) == 1
    out = capsys.readouterr().out
    diagnosis = out[out.index("suspect:"):]
    assert diagnosis.startswith("suspect: matmul6 (MatMul)")  # the culprit before anything else
    assert "first non-finite tensor: matmul6_out" in diagnosis
    assert "largest own error: matmul6 (MatMul) inf" in diagnosis
    assert "relative error along the graph: |" in diagnosis and "!" in diagnosis.split("|")[1]
    for realize in ("emulate", "true"):
        assert main(["compare", model, "--precision", "fp16", "--realize", realize, "--outputs", "mark", "all",
                     "--json", *TOL], exit=False) == 1
        layers = _json(capsys)["layers"]
        assert layers["first_nonfinite"] == "matmul6_out" and layers["ranking"][0]["node"] == "matmul6"


def test_keeping_the_culprit_and_its_compensator_fp32_leaves_no_overflow(capsys):
    model = str(fixture_path("fp16_overflow_1"))
    main(["compare", model, "--precision", "fp16", "--keep-fp32", "matmul6", "rescale6", "--outputs", "mark", "all",
          "--json", *TOL], exit=False)
    layers = _json(capsys)["layers"]
    assert layers["first_nonfinite"] is None and layers["rows"][-1]["tensor"] == "y" and layers["rows"][-1]["passed"]
    own = {r["node"]: r["own_error"] for r in layers["rows"]}
    assert own["matmul6"] < 1e-3 and own["rescale6"] < 1e-3  # kept fp32: at most the rounding of what they read
    # keeping only the culprit: the Cast into the fp16 rescale6 overflows, and the table says where
    assert main(["compare", model, "--precision", "fp16", "--keep-fp32", "matmul6", "--outputs", "mark", "all",
                 "--json", *TOL], exit=False) == 1
    layers = _json(capsys)["layers"]
    assert layers["first_nonfinite"] == "rescale6_out" and layers["ranking"][0]["node"] == "rescale6"


# ---------------------------------------------------------------- fixture faults
@pytest.fixture
def faulted(tmp_path):
    """(clean model, faulted model, clean mark-all outputs, inputs) in tmp_path."""
    clean = make_diamond()
    onnx.save(clean, tmp_path / "clean.onnx")
    onnx.save(apply_fault(clean, "bias", CULPRIT, value=0.05), tmp_path / "bad.onnx")
    code = main(["compare", str(tmp_path / "clean.onnx"), "--outputs", "mark", "all", "--save-inputs",
                 str(tmp_path / "in.json"), "--save-outputs", str(tmp_path / "clean.json")], exit=False)
    assert code == 0
    return tmp_path


def test_the_first_divergent_tensor_is_the_injected_one_and_own_error_beats_accumulated(faulted, capsys):
    capsys.readouterr()
    code = main(["compare", str(faulted / "bad.onnx"), "--outputs", "mark", "all", "--load-inputs",
                 str(faulted / "in.json"), "--load-outputs", str(faulted / "clean.json"), "--json"], exit=False)
    assert code == 1
    layers = _json(capsys)["layers"]
    assert layers["first_failing"] == FAULT_TENSOR
    rows = layers["rows"]
    assert all(r["passed"] for r in rows[:[r["tensor"] for r in rows].index(FAULT_TENSOR)])
    # accumulated error points downstream of the culprit, by max abs and by relative error alike
    worst_abs = max(rows, key=lambda r: r["comparison"]["abs_stats"]["max"])
    worst_rel = max(rows, key=lambda r: r["rel_l2"])
    assert worst_abs["node"] != FAULT_NODE and worst_rel["node"] != FAULT_NODE
    assert layers["ranked_by"] == "own error"
    assert layers["ranking"][0]["node"] == FAULT_NODE and len(layers["ranking"]) == 1  # nothing else adds error


def test_polygraphy_command_line_fail_fast_stops_at_the_injected_tensor(faulted, capsys):
    capsys.readouterr()
    argv = ["compare", str(faulted / "bad.onnx"), "--onnxrt", "--onnx-outputs", "mark", "all", "--fail-fast",
            "--load-inputs", str(faulted / "in.json"), "--load-outputs", str(faulted / "clean.json"), "--warm-up", "2"]
    assert main(argv, exit=False) == 1
    captured = capsys.readouterr()
    assert "--warm-up: no effect" in captured.err
    assert f"first {FAULT_TENSOR} ({FAULT_NODE}); --fail-fast stopped there" in captured.out
    assert main([*argv, "--json"], exit=False) == 1
    layers = _json(capsys)["layers"]
    assert layers["rows"][-1]["tensor"] == FAULT_TENSOR == layers["stopped_at"]
    assert len(layers["rows"]) < layers["marked"]


def test_trt_outputs_spelling_and_named_tensors(faulted, capsys):
    capsys.readouterr()
    argv = ["compare", str(faulted / "bad.onnx"), "--load-inputs", str(faulted / "in.json"), "--load-outputs",
            str(faulted / "clean.json"), "--json"]
    assert main([*argv, "--trt-outputs", "add8_out", "join_add_out"], exit=False) == 1
    layers = _json(capsys)["layers"]
    assert [r["tensor"] for r in layers["rows"]] == ["add8_out", "join_add_out"]
    assert [r["passed"] for r in layers["rows"]] == [True, False]
    assert main([*argv, "--outputs", "no_such_tensor"], exit=False) == 2
    assert "--outputs names 'no_such_tensor'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("polygraphy", path=str(Path(sys.executable).parent)) is None,
                    reason="polygraphy is not installed in this environment")
def test_polygraphy_reads_the_saved_mark_all_outputs(faulted):
    polygraphy = shutil.which("polygraphy", path=str(Path(sys.executable).parent))
    doc = json.loads((faulted / "clean.json").read_text())
    assert doc["polygraphy_class"] == "RunResults" and len(doc["lst"]) == 2  # the target and the reference
    run = lambda model: subprocess.run(
        [polygraphy, "run", str(faulted / model), "--onnxrt", "--onnx-outputs", "mark", "all", "--load-inputs",
         str(faulted / "in.json"), "--load-outputs", str(faulted / "clean.json")], capture_output=True, text=True)
    good = run("clean.onnx")
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
    assert "branch_a_scale_out" in good.stdout + good.stderr  # every tensor was read and compared
    bad = run("bad.onnx")
    assert bad.returncode != 0 and FAULT_TENSOR in bad.stdout + bad.stderr


def test_trt_without_tensorrt_is_one_line_naming_the_providers(capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("TensorRT is available here")
    assert main(["compare", str(fixture_path("chain")), "--trt", "--onnxrt", "--outputs", "mark", "all"],
                exit=False) == 2
    err = capsys.readouterr().err
    assert "--trt: TensorRT is not available here" in err and "--provider cpu or cuda or tensorrt" in err


# ---------------------------------------------------------------- marking (TensorRT's weakness)
def test_marking_check_runs_the_plain_model_and_stays_quiet_when_nothing_changes(tmp_path):
    """On TensorRT marking changes fusion; onnxruntime on the CPU is where both runs can be compared
    here (true fp16 on the CPU: the marked matmul6_out overflows, the graph output passes both ways)."""
    run = run_layers(fixture_path("fp16_overflow_1"), Target(precision="fp16", realize="true"),
                     CompareConfig(atol=1e-2, rtol=1e-2), outputs=["mark", "all"], shapes={}, workdir=tmp_path,
                     check_marking=True)
    assert run.report.first_nonfinite == "matmul6_out" and run.report.row("y").passed
    assert run.report.marking is None and not run.report.reduce_next


def test_marking_note_and_the_reduce_line_that_goes_on():
    assert marking_note(True, True, "x") is None and marking_note(False, False, "x") is None
    assert "pass with every tensor marked but fail without" in marking_note(True, False, "onnxruntime tensorrt")
    assert "fail with every tensor marked but pass without" in marking_note(False, True, "onnxruntime tensorrt")
    line = reduce_line(Path("m.onnx"), CompareOptions(provider="tensorrt", precision="fp16", atol=["1e-2"]))
    assert line == "bisector reduce m.onnx -o reduced.onnx --compare --provider tensorrt --precision fp16 --atol 1e-2"


# ---------------------------------------------------------------- the pure parts
def _row(i, tensor, node, inputs, t, r):
    return tensor_error(Marked(i, tensor, node, "Op", inputs), [np.asarray(t)], [np.asarray(r)], CompareConfig())


def test_jump_ranks_the_node_that_makes_the_error_not_the_ones_that_carry_it():
    from bisector.compare.layers import diagnose

    rows = [_row(0, "a", "na", [], [1.0, 1.0], [1.0, 1.0]),
            _row(1, "b", "nb", ["a"], [1.1, 1.0], [1.0, 1.0]),  # the culprit: 7% relative error from nothing
            _row(2, "c", "nc", ["b"], [110.0, 100.0], [100.0, 100.0]),  # scaled: bigger abs error, same rel
            _row(3, "d", "nd", ["c"], [math.inf, 1.0], [1.0, 1.0])]
    report = diagnose(rows, 4)
    assert report.ranked_by == "jump" and report.first_failing == "b" and report.first_nonfinite == "d"
    assert [e["node"] for e in report.ranking] == ["nd", "nb"]  # inf first, then b's jump; c only carries
    assert report.suspect == "nd" and report.rows[2].jump == pytest.approx(1.0)
    assert jump(math.inf, math.inf) == 1.0 and jump(0.0, 0.0) == 1.0


def test_measured_own_errors_rank_by_node_and_ties_keep_topological_order():
    rows = [_row(0, "a", "na", [], [1.0], [1.0]), _row(1, "b", "nb", [], [1.0], [1.0])]
    rows[0].own_error, rows[1].own_error = 0.5, 0.5
    assert [e["node"] for e in rank_nodes(rows, measured=True)] == ["na", "nb"]


def test_sparkline_marks_exact_and_non_finite_and_bins_long_graphs():
    assert sparkline([0.0, 1e-3, 1e-1, math.nan, None]) == "_▁█! "
    assert len(sparkline([1e-3] * 500, width=80)) <= 80
    assert sparkline([1e-3] * 200 + [math.inf], width=10)[-1] == "!"


def test_long_tables_keep_the_remarkable_rows_and_elide_the_rest():
    from bisector.compare.layers import diagnose

    rows = [_row(i, f"t{i}", f"n{i}", [f"t{i - 1}"] if i else [], [1.0 if i < 50 else 2.0], [1.0])
            for i in range(100)]
    report = diagnose(rows, 100)
    shown = shown_rows(report, limit=20)
    assert 50 in shown and 0 in shown and 99 in shown and None in shown and len(shown) < 20
