"""What the CLI refuses before a search starts, and the mistakes it guards against: each bad flag is
one line and exit 2, a relative --session still gives checks paths that work, a check that never
reads the candidate is pointed out, and a session that stopped in its set-up can be run again."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from bisector.cli import main
from fixtures import fixture_path
from tests.helpers import bisector, faulty

FAULTY = [sys.executable, str(Path(__file__).resolve().parents[2] / "fixtures" / "faulty_check.py")]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv), exit=False)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("extra,message", [
    (("--seed", "-5"), "--seed must be 0 or more"),
    (("-j", "0"), "-j/--jobs must be at least 1"),
    (("--vote", "foo"), "--vote 'foo': choose any, majority or all"),
    (("--atol", "1e-3"), "--atol sets the in-process comparison (--compare), which --check does not use"),
    (("--provider", "cuda"), "--provider sets the in-process comparison"),
    (("--iter-artifact", "../victim.onnx"), "must be a plain file name"),
    (("--events", "/proc/none/events.jsonl"), "cannot write /proc/none/events.jsonl"),
    (("--iterations", "0"), "--samples/--iterations must be at least 1"),
])
def test_bad_flags_are_refused_before_the_search(tmp_path, capsys, extra, message):
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"),
                    "--session", str(tmp_path / "s"), "-q", *extra, "--check", "true")
    assert code == 2 and message in out
    assert "Traceback" not in out
    assert not (tmp_path / "s" / "journal.jsonl").exists()


def test_the_answer_never_overwrites_the_input_model(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(fixture_path("chain").read_bytes())
    before = model.read_bytes()
    for command in (["reduce"], ["precision", "--precision", "fp16"]):
        code, out = run(capsys, *command, str(model), "-o", str(model), "--session", str(tmp_path / command[0]),
                        "--check", "true")
        assert code == 2 and "is the input model" in out
    assert model.read_bytes() == before


def test_unwritable_outputs_are_refused_up_front(tmp_path, capsys):
    code, out = run(capsys, "compare", str(fixture_path("chain")), "--save-outputs", "/proc/none/out.json")
    assert code == 2 and "cannot write /proc/none/out.json" in out and "Traceback" not in out
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", "/proc/none/r.onnx",
                    "--session", str(tmp_path / "s"), "--check", "true")
    assert code == 2 and "cannot write /proc/none/r.onnx" in out
    assert not (tmp_path / "s").exists()  # refused before a session was opened


def test_placeholders_are_absolute_when_the_session_is_relative(tmp_path, capsys, monkeypatch):
    """Checks run in the iteration directory: {artifact} and {inputs} must not be relative to
    where bisector was started, or every check fails to load its model and the answer is wrong."""
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", "r.onnx", "--session", "rel", "-q",
                    "--check", *FAULTY, "{artifact}", "--fault", "scale:relu4", "--load-inputs", "{inputs}")
    assert code == 0, out
    assert json.loads((tmp_path / "rel" / "result" / "report.json").read_text())["result"]["node_names"] == ["relu4"]
    assert "warning" not in out


def test_a_check_that_names_the_input_model_is_pointed_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.onnx"
    model.write_bytes(fixture_path("chain").read_bytes())
    code, out = run(capsys, "reduce", "m.onnx", "-o", "r.onnx", "--session", "s", "-q",
                    "--check", *FAULTY, str(model), "--fault", "scale:relu4")
    assert "warning: the check command names the input model m.onnx, not the candidate" in " ".join(out.split())


def test_a_session_that_stopped_in_its_set_up_runs_again_with_the_corrected_command(tmp_path, capsys):
    head = ["reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"), "--session", str(tmp_path / "s"), "-q"]
    check = ["--check", *FAULTY, "polygraphy_debug.onnx", "--fault", "scale:relu4", "--load-inputs", "inputs.json"]
    code, out = run(capsys, *head, "--weights", "foo", *check)  # refused in the set-up
    assert code == 2 and "--weights 'foo'" in out
    assert (tmp_path / "s" / "session.json").exists()
    code, out = run(capsys, *head, *check)
    assert code == 0, out
    # A session with verdicts is never started over: a changed command is refused.
    code, out = run(capsys, *head, "--cut-feed", "random", *check)
    assert code == 2 and "holds a different session" in out
    # Neither is a directory holding anything bisector did not write.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me\n")
    (tmp_path / "mine" / "session.json").write_text(json.dumps({"strategy": "precision", "command": ["bisector"],
                                                                "params": {}, "model": None}))
    code, out = run(capsys, *head[:4], "--session", str(tmp_path / "mine"), *check)
    assert code == 2 and "holds a different session" in out and (tmp_path / "mine" / "notes.txt").exists()
    # Nor a --session directory that existed before: its inputs.json may be the user's.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "inputs.json").write_text("[]")
    at_data = [*head[:4], "--session", str(tmp_path / "data"), "-q"]
    assert run(capsys, *at_data, "--weights", "foo", *check)[0] == 2
    code, out = run(capsys, *at_data, *check)
    assert code == 2 and "holds a different session" in out and (tmp_path / "data" / "inputs.json").exists()


@pytest.mark.slow
def test_resume_can_write_the_answer_elsewhere(tmp_path, chain_model):
    first = bisector("reduce", "m.onnx", "-o", "r.onnx", "--session", "s", "-q", "--check", *faulty(), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = bisector("resume", "s", "-o", "elsewhere.onnx", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "elsewhere.onnx").read_bytes() == (tmp_path / "r.onnx").read_bytes()


# ------------------------------------------------------------------------------- Polygraphy replays
def polygraphy_replay(tmp_path: Path, steps: list[tuple[int, bool]]) -> Path:
    """A replay in the format ``polygraphy debug reduce`` writes (keys ``_N<i>_outputs``)."""
    doc = {f"_N{i}_outputs": {"state": {"num_nodes": n}, "iteration_info": {"iteration": i}, "success": ok,
                              "polygraphy_class": "IterationContext"} for i, (n, ok) in enumerate(steps)}
    path = tmp_path / "polygraphy_debug_replay.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_polygraphy_replay_gives_each_verdict_to_the_cone_of_its_size(tmp_path, capsys):
    """On the 20-node chain the node cones have 1 to 20 nodes, so each outputs step of a replay names
    one candidate: its verdict goes to that candidate, whatever order this search asks in."""
    replay = polygraphy_replay(tmp_path, [(12, False), (5, True), (8, True)])  # relu4 is the 12th node
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"),
                    "--session", str(tmp_path / "s"), "-q", "--load-debug-replay", str(replay),
                    "--check", *FAULTY, "polygraphy_debug.onnx", "--fault", "scale:relu4", "--load-inputs", "inputs.json")
    assert code == 0, out
    assert "imported 3 verdict(s)" in " ".join(out.split())
    entries = [json.loads(line) for line in (tmp_path / "s" / "journal.jsonl").read_text().splitlines()]
    imported = {e["label"].split(",")[0]: e["verdict"] for e in entries if e["source"] == "import"}
    assert imported == {"outputs of relu4": "bad", "outputs of add2": "good", "outputs of add3": "good"}
    assert json.loads((tmp_path / "s" / "result" / "report.json").read_text())["result"]["node_names"] == ["relu4"]


def test_a_polygraphy_replay_of_another_graph_is_not_imported(tmp_path, capsys):
    """unnamed.onnx holds Constant nodes that bisector folds: Polygraphy's node counts do not fit."""
    import onnx as _onnx

    model = fixture_path("chain")
    m = _onnx.load(str(model))
    const = _onnx.helper.make_node("Constant", [], ["one"], value=_onnx.helper.make_tensor("v", 1, [], [1.0]))
    mul = _onnx.helper.make_node("Mul", [m.graph.output[0].name, "one"], ["y2"], name="times_one")
    m.graph.node.extend([const, mul])
    m.graph.output[0].name = "y2"
    _onnx.save(m, str(tmp_path / "with_constant.onnx"))
    replay = polygraphy_replay(tmp_path, [(11, False)])
    code, out = run(capsys, "reduce", str(tmp_path / "with_constant.onnx"), "-o", str(tmp_path / "r.onnx"),
                    "--session", str(tmp_path / "s"), "-q", "--load-debug-replay", str(replay),
                    "--check", *FAULTY, "polygraphy_debug.onnx", "--fault", "scale:relu4", "--load-inputs", "inputs.json")
    assert code == 0, out
    text = " ".join(out.split())
    assert "imported 0 verdict(s)" in text and "is not the one Polygraphy reduced" in text


@pytest.mark.slow
def test_polygraphys_own_replay_cannot_mislead_the_search(tmp_path, capsys):
    import subprocess

    check = [*FAULTY, "polygraphy_debug.onnx", "--fault", "scale:relu4"]
    polygraphy = Path(sys.executable).with_name("polygraphy")
    done = subprocess.run([str(polygraphy), "debug", "reduce", str(fixture_path("chain")), "-o", "pg.onnx",
                           "--mode", "bisect", "--check", *check], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"), "--mode", "bisect",
                    "--session", str(tmp_path / "s"), "-q", "--load-debug-replay",
                    str(tmp_path / "polygraphy_debug_replay.json"), "--check", *check, "--load-inputs", "inputs.json")
    assert code == 0, out
    assert json.loads((tmp_path / "s" / "result" / "report.json").read_text())["result"]["node_names"] == ["relu4"]
    imported = int(re.search(r"imported (\d+) verdict", out)[1])
    assert imported >= 3  # Polygraphy's outputs steps, each matched to the cone of its size


def test_a_check_that_loads_the_full_models_inputs_is_pointed_out(tmp_path, capsys):
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"), "--session",
                    str(tmp_path / "s"), "-q", "--check", *FAULTY, "polygraphy_debug.onnx", "--fault", "scale:relu4",
                    "--load-inputs", "my_data.json")
    assert "warning: the check loads my_data.json, not the inputs.json bisector writes" in " ".join(out.split())


@pytest.mark.parametrize("argv,message", [
    (["reduce", "--bogus"], "bisector: error: No such option: --bogus"),
    (["reduce", "m.onnx", "-j", "x"], "bisector: error: Invalid value for '-j' / '--jobs'"),
    (["nope"], "bisector: error: No such command 'nope'"),
])
def test_typer_usage_errors_are_one_line(capsys, argv, message):
    code, out = run(capsys, *argv)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert code == 2 and lines[0].startswith(message) and len(lines) == 2 and "--help" in lines[1]
    assert "Usage:" not in out


def test_a_check_that_fails_everything_is_inconclusive_and_writes_no_answer(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nprint('loading the candidate')\nsys.exit('no module named onnx2')\n")
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"), "--session",
                    str(tmp_path / "s"), "-q", "--check", sys.executable, str(broken), "polygraphy_debug.onnx")
    flat = " ".join(out.split())
    assert code == 4, out
    assert not (tmp_path / "r.onnx").exists() and "not written:" in flat
    assert "first failing check:" in flat and "check.log: no module named onnx2" in flat
    report = json.loads((tmp_path / "s" / "result" / "report.json").read_text())
    assert report["conclusive"] is False
    assert [r["phase"] for r in report["iterations"]][-1] == "control"
    assert "**Inconclusive:**" in (tmp_path / "s" / "result" / "report.md").read_text()
    # --force-output writes it all the same, and still exits 4
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r3.onnx"), "--session",
                    str(tmp_path / "s3"), "-q", "--force-output", "--check", "false")
    assert code == 4 and (tmp_path / "r3.onnx").exists()


def test_a_culprit_at_the_first_node_is_confirmed_by_the_control_check(tmp_path, capsys):
    """Every candidate holds the first node, so none passes: the control (everything but the answer)
    passes and the answer stands."""
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"), "--session",
                    str(tmp_path / "s"), "-q", "--check", *FAULTY, "polygraphy_debug.onnx", "--fault",
                    "scale:matmul1", "--load-inputs", "inputs.json")
    assert code == 0, out
    report = json.loads((tmp_path / "s" / "result" / "report.json").read_text())
    assert report["conclusive"] is True and report["result"]["node_names"] == ["matmul1"]
    assert (tmp_path / "r.onnx").exists() and "inconclusive" not in out
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r2.onnx"), "--session",
                    str(tmp_path / "s2"), "-q", "--check", *FAULTY, "polygraphy_debug.onnx", "--fault", "scale:relu4",
                    "--load-inputs", "inputs.json")
    assert code == 0 and "inconclusive" not in out
    report = json.loads((tmp_path / "s2" / "result" / "report.json").read_text())
    assert "control" not in {r["phase"] for r in report["iterations"]}


def test_the_answer_and_the_min_good_model_need_two_files(tmp_path, capsys):
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "x.onnx"), "--min-good",
                    str(tmp_path / "x.onnx"), "--check", "true")
    assert code == 2 and "-o and --min-good name the same file" in out


def test_a_data_loader_script_imports_modules_beside_it(tmp_path, capsys):
    (tmp_path / "helper_mod.py").write_text("import numpy as np\nSAMPLE = {'x': np.ones((1, 16), np.float32)}\n")
    (tmp_path / "loader.py").write_text("from helper_mod import SAMPLE\n\ndef load_data():\n    yield SAMPLE\n")
    code, out = run(capsys, "compare", str(fixture_path("chain")), "--data-loader-script", str(tmp_path / "loader.py"))
    assert code == 0, out


def test_reduce_refuses_a_reference_it_does_not_use(tmp_path, capsys):
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"), "--reference", "fp64",
                    "--compare")
    assert code == 2 and "--reference fp64: reduce compares candidates with the full model's own activations" in out


def test_a_session_in_the_models_own_directory_keeps_the_users_weight_file(tmp_path, capsys):
    import shutil

    import onnx

    for f in ("external.onnx", "external.onnx.data"):
        shutil.copy(fixture_path("external").with_name(f), tmp_path / f)
    code, out = run(capsys, "precision", str(tmp_path / "external.onnx"), "--precision", "fp16", "-o",
                    str(tmp_path / "mixed.onnx"), "--session", str(tmp_path), "-q", "--compare")
    assert code in (0, 2), out  # the answer does not matter here
    data = tmp_path / "external.onnx.data"
    assert data.exists() and data.stat().st_nlink == 1  # the session's links are gone, the user's file is not
    onnx.load(str(tmp_path / "external.onnx"))
