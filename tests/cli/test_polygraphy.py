"""A Polygraphy ``debug`` command line with ``polygraphy debug`` replaced by ``bisector`` runs as it
is: its aliases, its logging flags, its data loader script and external data directory, its
iteration info file and artifacts directory, and ``debug precision``'s ``--fp16 -p float32``."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bisector.cli import main
from bisector.cli.polygraphy import take_polygraphy_flags
from bisector.data import save_inputs
from bisector.errors import UserError
from fixtures import fixture_path

FAULTY = [sys.executable, str(Path(__file__).resolve().parents[2] / "fixtures" / "faulty_check.py")]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv), exit=False)
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def test_logging_flags_and_flags_without_effect_are_taken_out():
    argv, notes, v = take_polygraphy_flags(["m.onnx", "-vv", "--no-shape-inference", "--log-format", "timestamp",
                                            "line-info", "--save-external-data", "-o", "r.onnx"])
    assert argv == ["m.onnx", "-o", "r.onnx"] and v.level == logging.DEBUG
    assert [n.split(":")[0] for n in notes] == ["--no-shape-inference", "--log-format", "--save-external-data"]
    assert take_polygraphy_flags(["--verbosity", "backend:ERROR", "info"])[2].level == logging.INFO
    assert take_polygraphy_flags(["--silent"])[2].silent
    with pytest.raises(UserError, match="--fp-to-fp16 is Polygraphy's and cannot work here"):
        take_polygraphy_flags(["--fp-to-fp16"])
    with pytest.raises(UserError, match="--verbosity 'loud'"):
        take_polygraphy_flags(["--verbosity", "loud"])


def test_a_polygraphy_reduce_command_line_runs_as_it_is(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_inputs([{"x": np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)}], tmp_path / "data.json")
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", "reduced.onnx",
                    "--session", "s", "-q", "-v", "--log-file", "bisector.log", "--no-shape-inference",
                    "--save-debug-replay", "replay.json", "--load-input-data", "data.json",
                    "--intermediate-artifact", "polygraphy_debug.onnx", "--iter-info", "iteration.json",
                    "--artifacts", "check.log", "--art-dir", "sorted", "--fail-returncode", "1",
                    "--check-inference", *FAULTY, "polygraphy_debug.onnx", "--fault", "scale:relu4",
                    "--load-inputs", "inputs.json")
    assert code == 0, out
    assert "note: --no-shape-inference: no effect in bisector" in out and "note: --save-debug-replay" in out
    assert json.loads((tmp_path / "s" / "result" / "report.json").read_text())["result"]["node_names"] == ["relu4"]
    assert json.loads((tmp_path / "s" / "iterations" / "0001" / "iteration.json").read_text()) == {"iteration": 1}
    assert sorted(p.name for p in (tmp_path / "sorted" / "bad").iterdir())[0] == "check_N0.log"
    assert "iteration 0: full model (20 nodes) [endpoints] -> bad" in (tmp_path / "bisector.log").read_text()
    assert not (tmp_path / "replay.json").exists()


def test_data_loader_script(tmp_path, capsys):
    script = tmp_path / "loader.py"
    script.write_text("import numpy as np\n\n"
                      "def load_data():\n"
                      "    for i in range(3):\n"
                      "        yield {'x': np.full((1, 16), i, np.float32)}\n\n"
                      "def broken():\n"
                      "    yield [1, 2]\n")
    code, out = run(capsys, "compare", str(fixture_path("chain")), "--data-loader-script", str(script),
                    "--save-inputs", str(tmp_path / "used.json"))
    assert code == 0 and "3 sample(s)" in out
    code, out = run(capsys, "compare", str(fixture_path("chain")), "--data-loader-script", f"{script}:nope")
    assert code == 2 and "defines no function 'nope'" in out
    code, out = run(capsys, "compare", str(fixture_path("chain")), "--data-loader-script", f"{script}:broken")
    assert code == 2 and "sample 0 is a list, not a dict" in out
    code, out = run(capsys, "compare", str(fixture_path("chain")), "--data-loader-script", str(script),
                    "--load-inputs", str(tmp_path / "used.json"))
    assert code == 2 and "choose one" in out


def test_external_data_dir(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "weights").mkdir()
    shutil.copy(fixture_path("external"), tmp_path / "model")
    for f in fixture_path("external").parent.glob("external.onnx.data"):
        shutil.copy(f, tmp_path / "weights")
    model = tmp_path / "model" / "external.onnx"
    code, out = run(capsys, "compare", str(model))
    assert code == 2 and "not found next to the model" in out and "--external-data-dir" in out
    assert run(capsys, "compare", str(model), "--external-data-dir", str(tmp_path / "weights"))[0] == 0
    code, out = run(capsys, "reduce", str(model), "-o", str(tmp_path / "r.onnx"), "--session", str(tmp_path / "s"),
                    "-q", "--ext", str(tmp_path / "weights"),
                    "--check", *FAULTY, "polygraphy_debug.onnx", "--fault", "scale:relu2", "--load-inputs",
                    "inputs.json")
    assert code == 0, out
    assert json.loads((tmp_path / "s" / "result" / "report.json").read_text())["result"]["node_names"] == ["relu2"]


def test_loaded_inputs_that_do_not_fit_name_the_flag(tmp_path, capsys):
    cases = [({"wrong": np.zeros((1, 16), np.float32)}, "--load-inputs names 'wrong'"),
             ({"x": np.zeros((1, 8), np.float32)}, "--load-inputs gives 'x' shape [1, 8], the model says [1, 16]"),
             ({"x": np.zeros((1, 16), np.int64)}, "--load-inputs gives 'x' as int64, the model wants float32")]
    for i, (sample, message) in enumerate(cases):
        save_inputs([sample], tmp_path / f"in{i}.json")
        code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"),
                        "--session", str(tmp_path / f"s{i}"), "--load-inputs", str(tmp_path / f"in{i}.json"),
                        "--check", "true")
        assert code == 2 and message in out, out


def test_polygraphy_precision_flags(tmp_path, capsys):
    args = [str(fixture_path("fp16_overflow_1")), "-o", str(tmp_path / "mixed.onnx"), "-q", "--compare",
            "--atol", "1e-2", "--rtol", "1e-2"]
    code, out = run(capsys, "precision", *args, "--fp16", "-p", "float32", "--session", str(tmp_path / "s"))
    assert code == 0, out
    keep = json.loads((tmp_path / "s" / "result" / "keep_fp32.json").read_text())
    assert keep["precision"] == "fp16" and [n["name"] for n in keep["nodes"]] == ["matmul6", "rescale6"]
    code, out = run(capsys, "precision", *args, "--int8", "-p", "float16")
    assert code == 2 and "bisector keeps them in fp32 only" in out
    code, out = run(capsys, "precision", *args, "--precision", "float32")
    assert code == 2 and "give the precision to lower to" in out


def test_a_tolerance_for_an_output_the_model_lacks_is_pointed_out(capsys):
    code, out = run(capsys, "compare", str(fixture_path("chain")), "--atol", "z:1e-3")
    assert code == 0 and "bisector: warning: --atol names 'z', which is no output of this model" in out


def test_polygraphy_precision_command_line_with_tensorrt_builder_flags(tmp_path, capsys):
    code, out = run(capsys, "precision", str(fixture_path("fp16_overflow_1")), "-o", str(tmp_path / "mixed.onnx"),
                    "-q", "--session", str(tmp_path / "s"), "--fp16", "--precision-constraints", "none",
                    "--model-type", "onnx", "--trt-opt-shapes", "x:[1,64]", "--tf32", "--pool-limit", "workspace:1G",
                    "--compare", "--atol", "1e-2", "--rtol", "1e-2")
    assert code == 0, out
    assert "note: --tf32: no effect in bisector (a TensorRT builder flag" in out and "note: --pool-limit" in out
    code, out = run(capsys, "precision", str(fixture_path("fp16_overflow_1")), "--fp8", "--compare")
    assert code == 2 and "--fp8 is Polygraphy's and cannot work here" in out
    code, out = run(capsys, "precision", str(fixture_path("fp16_overflow_1")), "--fp16", "--model-type", "engine")
    assert code == 2 and "bisector works on ONNX models" in out


@pytest.mark.parametrize("subtool", ["reduce", "precision"])
def test_every_flag_of_polygraphy_debug_is_taken(subtool):
    """Each option of `polygraphy debug reduce|precision` (from Polygraphy's own argparse parser) is
    an option of the bisector command, a logging flag, or a flag noted or refused by
    cli_polygraphy.py with the number of values Polygraphy gives it."""
    import argparse

    import typer.main

    from bisector.cli.app import app
    from bisector.cli.polygraphy import NO_EFFECT, REFUSED
    from polygraphy.tools.debug.subtool.precision import Precision
    from polygraphy.tools.debug.subtool.reduce import Reduce

    tool = {"reduce": Reduce, "precision": Precision}[subtool]()
    sub = argparse.ArgumentParser().add_subparsers()
    tool.setup_parser(sub)
    command = typer.main.get_command(app).commands[subtool]
    ours = {o for p in command.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
    ours |= {"-h", "--help", "--check", "--check-inference", "--model-type", "-v", "--verbose", "--verbosity",
             "--silent", "--log-file"}
    missing, wrong_count = [], []
    for action in sub.choices[tool.name]._actions:
        count = 0 if action.nargs == 0 else {None: 1}.get(action.nargs, action.nargs)
        for flag in action.option_strings:
            if flag in ours or flag in REFUSED:
                continue
            if flag not in NO_EFFECT:
                missing.append(flag)
            elif NO_EFFECT[flag][0] != count:
                wrong_count.append((flag, NO_EFFECT[flag][0], count))
    assert not missing and not wrong_count


def test_flags_with_attached_values_end_a_value_list():
    from bisector.cli.options import split_argv

    assert split_argv(["compare", "--load-inputs", "a.json", "b.json", "-vv", "m.onnx"])[0] == \
        ["compare", "--load-inputs", "a.json", "--load-inputs", "b.json", "-vv", "m.onnx"]
    assert split_argv(["reduce", "m.onnx", "--fail-code", "-1", "2", "-j4"])[0] == \
        ["reduce", "m.onnx", "--fail-code", "-1", "--fail-code", "2", "-j4"]


def test_keep_files_in_every_format_bisector_writes(tmp_path, capsys):
    model = str(fixture_path("fp16_overflow_1"))
    tol = ["--atol", "1e-2", "--rtol", "1e-2"]
    (tmp_path / "layers.json").write_text(json.dumps({"matmul6": "float32", "rescale6": "float32"}))
    (tmp_path / "keep.json").write_text(json.dumps({"precision": "fp16", "nodes": [{"name": "matmul6"},
                                                                                    {"name": "rescale6"}]}))
    (tmp_path / "list.json").write_text(json.dumps(["matmul6", "rescale6"]))
    for name in ("layers.json", "keep.json", "list.json"):
        code, out = run(capsys, "compare", model, "--precision", "fp16", "--keep-fp32", f"@{tmp_path / name}", *tol)
        assert code == 0, (name, out)
    (tmp_path / "bad.json").write_text(json.dumps([{"nam": "x"}]))
    code, out = run(capsys, "compare", model, "--precision", "fp16", "--keep-fp32", f"@{tmp_path / 'bad.json'}")
    assert code == 2 and "is neither a node name" in out and "Traceback" not in out


def test_loaded_outputs_that_do_not_fit_are_usage_errors(tmp_path, capsys):
    chain = str(fixture_path("chain"))
    assert run(capsys, "compare", chain, "--save-outputs", str(tmp_path / "new" / "ref.json"))[0] == 0
    code, out = run(capsys, "compare", chain, "--load-outputs", str(tmp_path / "new" / "ref.json"), "--samples", "2")
    assert code == 2 and "--load-outputs holds 1 sample(s), and this run has 2" in out
    code, out = run(capsys, "compare", str(fixture_path("convnet")), "--load-outputs", str(tmp_path / "new" / "ref.json"))
    assert code == 2 and "none of which the model has" in out


def test_a_tolerance_without_an_output_name_before_the_colon_is_refused(capsys):
    code, out = run(capsys, "compare", str(fixture_path("chain")), "--atol", ":1")
    assert code == 2 and "no output name before ':'" in out
