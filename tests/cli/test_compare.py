"""`bisector compare` through the real entry point: exit codes, the fp16 story, bad input."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from bisector.cli import main
from bisector.data import load_inputs, load_outputs, save_inputs
from fixtures import fixture_path
from fixtures.models import make_chain, save_with_external_data

TOL = ["--atol", "1e-2", "--rtol", "1e-2"]


def test_fp16_overflow_fails_emulated_and_passes_with_the_overflowing_nodes_kept(capsys):
    model = str(fixture_path("fp16_overflow_1"))
    assert main(["compare", model, "--precision", "fp16", *TOL], exit=False) == 1
    out = capsys.readouterr().out  # the result goes to stdout, diagnostics to stderr
    assert "FAIL" in out and "NaN" in out  # a readable report, not a bare exit code
    assert main(["compare", model, "--precision", "fp16", "--keep-fp32", "matmul6", "rescale6", *TOL], exit=False) == 0


def test_true_fp16_on_the_cpu_hides_the_overflow_that_the_emulation_shows():
    model = str(fixture_path("fp16_overflow_1"))
    assert main(["compare", model, "--precision", "fp16", "--realize", "true", *TOL], exit=False) == 0
    assert main(["compare", model, "--precision", "fp16", "--realize", "emulate", *TOL], exit=False) == 1


def test_keep_file_and_the_fp64_reference(tmp_path):
    model = str(fixture_path("fp16_overflow_1"))
    keep = tmp_path / "keep.json"
    keep.write_text(json.dumps({"precision": "fp16", "nodes": [{"name": "matmul6"}, {"name": "rescale6"}]}))
    assert main(["compare", model, "--precision", "fp16", "--keep-fp32", f"@{keep}", *TOL], exit=False) == 0
    assert main(["compare", str(fixture_path("chain")), "--reference", "fp64", "--atol", "1e-4"], exit=False) == 0


def test_inputs_and_outputs_round_trip(tmp_path):
    model = str(fixture_path("chain"))
    args = ["compare", model, "--samples", "2", "--seed", "3", "--val-range", "[-1,1]"]
    assert main([*args, "--save-inputs", str(tmp_path / "in.json"), "--save-outputs", str(tmp_path / "out.json")],
                exit=False) == 0
    samples = load_inputs(tmp_path / "in.json")
    assert len(samples) == 2 and samples[0]["x"].min() < 0
    assert main(["compare", model, "--load-inputs", str(tmp_path / "in.json"),
                 "--load-outputs", str(tmp_path / "out.json")], exit=False) == 0
    runs = load_outputs(tmp_path / "out.json")
    assert len(next(iter(runs.values()))) == 2


def test_compare_as_a_check_command_exits_0_1_2(tmp_path):
    model = str(fixture_path("fp16_overflow_1"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "bisector", "compare", *a], capture_output=True,
                                    text=True)
    assert run(model, *TOL).returncode == 0
    assert run(model, "--precision", "fp16", *TOL).returncode == 1
    bad = run(str(tmp_path / "missing.onnx"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no such file" in bad.stderr


def _bad_model_files(tmp_path):
    (tmp_path / "text.onnx").write_text("not a model at all")
    data = make_chain().SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "ext").mkdir()
    ext = save_with_external_data(make_chain(), tmp_path / "ext" / "m.onnx")
    for p in (tmp_path / "ext").iterdir():
        if p.suffix == ".data":
            p.unlink()
    return {"missing": tmp_path / "nope.onnx", "not onnx": tmp_path / "text.onnx",
            "truncated": tmp_path / "truncated.onnx", "missing external data": ext}


@pytest.mark.parametrize("case", ["missing", "not onnx", "truncated", "missing external data"])
def test_bad_model_files_give_one_line_and_exit_2(tmp_path, capsys, case):
    path = _bad_model_files(tmp_path)[case]
    assert main(["compare", str(path)], exit=False) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip() and "hint" not in line]) == 1


def test_shape_problems_name_the_flag(capsys):
    dyn = str(fixture_path("dynamic"))
    assert main(["compare", dyn], exit=False) == 2
    assert "--input-shapes" in capsys.readouterr().err
    assert main(["compare", dyn, "--input-shapes", "nope:[1,16]"], exit=False) == 2
    assert "not an input" in capsys.readouterr().err
    assert main(["compare", dyn, "--input-shapes", "x:[3,16]"], exit=False) == 0


def test_inputs_with_wrong_names_are_refused(tmp_path, capsys):
    save_inputs([{"wrong": np.zeros((1, 16), np.float32)}], tmp_path / "in.json")
    assert main(["compare", str(fixture_path("chain")), "--load-inputs", str(tmp_path / "in.json")], exit=False) == 2
    assert "wrong" in capsys.readouterr().err


def test_ir14_model_is_accepted(tmp_path):
    m = make_chain()
    m.ir_version = 14
    onnx.save(m, tmp_path / "ir14.onnx")
    assert main(["compare", str(tmp_path / "ir14.onnx")], exit=False) == 0
