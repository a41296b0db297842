"""InteractiveCheck driven through io.StringIO streams."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bisector.checks.base import Artifact, Verdict
from bisector.checks.interactive import InteractiveCheck
from bisector.errors import SessionAborted

PROMPT_7 = "Is iteration 7 good or bad? [g]ood / [b]ad / [s]kip / [r]etry / [q]uit: "


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    return Artifact(
        workdir=tmp_path,
        path=tmp_path / "polygraphy_debug.onnx",
        iteration=7,
        inputs_path=tmp_path / "inputs.json",
        description="12 nodes: Conv_3 .. Relu_9",
    )


def ask(artifact: Artifact, typed: str):
    out = io.StringIO()
    result = InteractiveCheck(io.StringIO(typed), out).run(artifact)
    return result, out.getvalue()


@pytest.mark.parametrize(
    "typed, verdict",
    [
        ("g\n", Verdict.GOOD),
        ("Good\n", Verdict.GOOD),
        ("p\n", Verdict.GOOD),  # Polygraphy's [p]ass
        ("PASS\n", Verdict.GOOD),
        ("b\n", Verdict.BAD),
        ("f\n", Verdict.BAD),  # Polygraphy's [f]ail
        ("Fail\n", Verdict.BAD),
        ("s\n", Verdict.SKIP),
        ("  skip it  \n", Verdict.SKIP),
        ("b", Verdict.BAD),  # no trailing newline
    ],
)
def test_answers(artifact, typed, verdict):
    result, _ = ask(artifact, typed)
    assert result.verdict is verdict and result.note == "answered by hand"


def test_shows_the_artifact_and_prompts(artifact, tmp_path):
    _, shown = ask(artifact, "g\n")
    assert shown == (
        "Iteration 7: 12 nodes: Conv_3 .. Relu_9\n"
        f"  artifact: {tmp_path / 'polygraphy_debug.onnx'}\n"
        f"  inputs:   {tmp_path / 'inputs.json'}\n" + PROMPT_7
    )


def test_no_inputs_no_description(tmp_path):
    art = Artifact(workdir=tmp_path, path=tmp_path / "m.onnx", iteration=0)
    _, shown = ask(art, "g\n")
    assert shown.startswith(f"Iteration 0\n  artifact: {tmp_path / 'm.onnx'}\nIs iteration 0")
    assert "  inputs:" not in shown


def test_anything_else_reprompts(artifact):
    result, shown = ask(artifact, "\nx\nyes\n?\nb\n")
    assert result.verdict is Verdict.BAD
    assert shown.count(PROMPT_7) == 5 and shown.count("Please answer") == 4
    assert shown.count("artifact:") == 1


def test_retry_reprints_the_info(artifact):
    result, shown = ask(artifact, "r\nretry\ng\n")
    assert result.verdict is Verdict.GOOD
    assert shown.count("artifact:") == 3 and shown.count(PROMPT_7) == 3


@pytest.mark.parametrize("typed", ["q\n", "Quit\n", "", "x\n"])  # "" and "x" then EOF
def test_quit_and_eof_abort(artifact, typed):
    with pytest.raises(SessionAborted, match="quit at the prompt"):
        ask(artifact, typed)


def test_one_check_answers_many_iterations(tmp_path):
    check = InteractiveCheck(io.StringIO("g\nb\ns\n"), io.StringIO())
    arts = [Artifact(tmp_path, tmp_path / "m.onnx", i) for i in range(3)]
    assert [check.run(a).verdict for a in arts] == [Verdict.GOOD, Verdict.BAD, Verdict.SKIP]


def test_terminate_refuses_to_ask(artifact):
    check = InteractiveCheck(io.StringIO("g\n"), io.StringIO())
    check.terminate()
    with pytest.raises(SessionAborted):
        check.run(artifact)
