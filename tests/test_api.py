"""The runner without the CLI: reduce and precision driven through ``bisector.api.run`` with real
checks, and a session's command, check and run options rebuilt from its ``session.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bisector import api
from bisector.checks.spec import CheckSpec, CompareSpec
from bisector.commands.precision import PrecisionCommand, PrecisionOptions
from bisector.commands.reduce import ReduceCommand, ReduceOptions
from bisector.commands.results import PrecisionResult, ReduceResult
from bisector.errors import UserError
from fixtures import fixture_path

FAULTY = CheckSpec.command([sys.executable, str(Path(__file__).resolve().parent.parent / "fixtures" / "faulty_check.py"),
                            "polygraphy_debug.onnx", "--fault", "scale:relu4", "--load-inputs", "inputs.json"])


def test_reduce_runs_without_the_cli_and_resumes_from_its_session(tmp_path):
    command = ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=tmp_path / "r.onnx"))
    first = api.run(command, FAULTY, api.RunOptions(session=tmp_path / "s"))
    assert first.exit_code == 0 and isinstance(first.report.result, ReduceResult)
    assert first.report.result.node_names == ("relu4",) and (tmp_path / "r.onnx").exists()
    stored = json.loads((tmp_path / "s" / "session.json").read_text())["spec"]
    assert stored["command"]["name"] == "reduce" and stored["check"]["argv"][-3:] == ["scale:relu4", "--load-inputs",
                                                                                      "inputs.json"]

    again, check, options = api.resume(tmp_path / "s", output=tmp_path / "elsewhere.onnx")
    assert type(again) is ReduceCommand and check == FAULTY and options.session == tmp_path / "s"
    assert again.options == command.replace(output=tmp_path / "elsewhere.onnx").options
    second = api.run(again, check, options)
    assert second.outcome.stats.run_checks == 0 and second.report.result == first.report.result
    assert (tmp_path / "elsewhere.onnx").exists()


def test_precision_runs_without_the_cli(tmp_path):
    command = PrecisionCommand(PrecisionOptions(model=fixture_path("fp16_overflow_1"), output=tmp_path / "m.onnx",
                                                precision="fp16", write_inputs=False))
    check = CheckSpec(kind="compare", compare=CompareSpec(atol=("1e-2",), rtol=("1e-2",)))
    done = api.run(command, check, api.RunOptions(session=tmp_path / "p"))
    assert done.exit_code == 0 and isinstance(done.report.result, PrecisionResult)
    assert set(done.report.result.keep_names) == {"matmul6", "rescale6"}
    report = json.loads((tmp_path / "p" / "result" / "report.json").read_text())
    assert report["result"]["keep_names"] == list(done.report.result.keep_names) and report["conclusive"] is True
    rebuilt, rebuilt_check, _ = api.resume(tmp_path / "p")
    assert rebuilt.options == command.options and rebuilt_check == check


def test_a_confined_resume_writes_inside_the_session(tmp_path):
    command = ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=tmp_path / "r.onnx"))
    api.run(command, FAULTY, api.RunOptions(session=tmp_path / "s"))
    again, _, _ = api.resume(tmp_path / "s", confine=True)
    assert again.options.output == tmp_path / "s" / "result" / "r.onnx"


def test_an_old_or_damaged_spec_is_a_user_error(tmp_path):
    command = ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=tmp_path / "r.onnx"))
    api.run(command, FAULTY, api.RunOptions(session=tmp_path / "s"))
    meta_path = tmp_path / "s" / "session.json"
    meta = json.loads(meta_path.read_text())
    meta["spec"]["command"]["options"]["no_such_field"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="no field 'no_such_field'"):
        api.resume(tmp_path / "s")
    del meta["spec"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="older bisector"):
        api.resume(Path(tmp_path / "s"))


def test_relative_paths_given_to_the_api_work_from_any_directory(tmp_path, monkeypatch):
    import os
    import shutil

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    shutil.copy(fixture_path("chain"), work / "m.onnx")
    (work / "m.onnx").chmod(0o600)
    monkeypatch.chdir(work)
    before = os.umask(0o022)
    try:
        api.run(ReduceCommand(ReduceOptions(model=Path("m.onnx"), output=Path("out/r.onnx"))),
                CheckSpec(kind="command", argv=FAULTY.argv), api.RunOptions(session=Path("s")))
        assert os.umask(0o022) == 0o022  # the session's umask (from a 0600 model) is not left behind
    finally:
        os.umask(before)
    stored = json.loads((work / "s" / "session.json").read_text())["spec"]
    assert stored["command"]["options"]["model"] == str(work / "m.onnx")
    assert stored["check"]["launch_dir"] == str(work)
    monkeypatch.chdir(elsewhere)
    command, check, options = api.resume(work / "s", output=elsewhere / "once.onnx")
    api.run(command, check, options)
    assert (elsewhere / "once.onnx").exists()
    again, _, _ = api.resume(work / "s")  # -o was for that resume only
    assert again.options.output == work / "out" / "r.onnx"
