"""PythonCheck: loading functions and scripts, return-value conventions, crashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bisector.checks.base import Artifact, CheckResult, Verdict
from bisector.checks.python import PythonCheck, to_result
from bisector.errors import SessionAborted, UserError

SCRIPTS = Path(__file__).parent / "scripts"
FUNCS = SCRIPTS / "check_funcs.py"


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    path = tmp_path / "polygraphy_debug.onnx"
    path.write_text("ok")
    return Artifact(workdir=tmp_path, path=path, iteration=3)


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))


def test_script_convention_is_a_check_function(artifact):
    check = PythonCheck.from_script(FUNCS)
    assert check.run(artifact).verdict is Verdict.GOOD
    artifact.path.write_text("broken")
    result = check.run(artifact)
    assert result.verdict is Verdict.BAD and result.duration_s > 0


@pytest.mark.parametrize(
    "word, verdict",
    [("good", "good"), ("PASS", "good"), ("bad", "bad"), ("fail", "bad"), ("Skip", "skip")],
)
def test_verdict_words(artifact, word, verdict):
    artifact.path.write_text(word)
    assert PythonCheck.from_script(f"{FUNCS}:says_word").run(artifact).verdict is Verdict(verdict)


def test_unknown_word_is_a_user_error(artifact):
    artifact.path.write_text("maybe")
    with pytest.raises(UserError, match="not a verdict"):
        PythonCheck.from_script(f"{FUNCS}:says_word").run(artifact)


def test_module_function_spec_and_artifact_argument(artifact, on_path):
    check = PythonCheck.from_spec("check_funcs:with_artifact")
    assert check.run(artifact).verdict is Verdict.BAD  # iteration 3 is odd
    artifact.iteration = 4
    assert check.run(artifact).verdict is Verdict.GOOD


def test_check_result_is_passed_through(artifact, on_path):
    result = PythonCheck.from_spec("check_funcs:full_result").run(artifact)
    assert result.metrics == {"max_abs": 0.5} and result.output == "max abs diff 0.5"


def test_exception_is_bad_with_traceback(artifact, on_path):
    result = PythonCheck.from_spec("check_funcs:raises").run(artifact)
    assert result.verdict is Verdict.BAD
    assert result.note == "raised RuntimeError: the comparison blew up"
    assert "Traceback" in result.output and "the comparison blew up" in result.output
    assert "RuntimeError" in (artifact.workdir / "check.log").read_text()


def test_exception_skip_and_abort(artifact, on_path):
    assert PythonCheck.from_spec("check_funcs:raises", on_crash="skip").run(artifact).verdict is Verdict.SKIP
    with pytest.raises(SessionAborted, match="RuntimeError"):
        PythonCheck.from_spec("check_funcs:raises", on_crash="abort").run(artifact)


def test_user_error_and_abort_from_the_function_pass_through(artifact):
    def needs_gpu(path):
        raise UserError("no GPU")

    def quits(path):
        raise SessionAborted("enough")

    with pytest.raises(UserError, match="no GPU"):
        PythonCheck(needs_gpu).run(artifact)
    with pytest.raises(SessionAborted):
        PythonCheck(quits).run(artifact)


@pytest.mark.parametrize("func", ["returns_none", "returns_number"])
def test_non_verdict_return_is_a_user_error(artifact, on_path, func):
    with pytest.raises(UserError, match="not a verdict"):
        PythonCheck.from_spec(f"check_funcs:{func}").run(artifact)


def test_numpy_bools_count(artifact):
    a = np.zeros(3)
    assert PythonCheck(lambda p: (a == 0).all()).run(artifact).verdict is Verdict.GOOD
    assert PythonCheck(lambda p: np.array(False)).run(artifact).verdict is Verdict.BAD
    with pytest.raises(UserError):
        to_result(np.array([True, False]))


def test_second_argument_only_when_asked(artifact):
    seen = []

    def tolerant(path, tol=1e-3):  # a defaulted parameter is not the artifact
        seen.append(tol)
        return True

    def named(path, artifact=None):
        seen.append(artifact.iteration)
        return True

    def star(*args):
        seen.append(len(args))
        return True

    for func in (tolerant, named, star):
        PythonCheck(func).run(artifact)
    assert seen == [1e-3, 3, 2]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PythonCheck.from_spec("no_such_module_xyz:check"), "module 'no_such_module_xyz' not found"),
        (lambda: PythonCheck.from_spec("check_funcs:nope"), "defines no function 'nope'"),
        (lambda: PythonCheck.from_spec("check_funcs:not_callable"), "is not a function"),
        (lambda: PythonCheck.from_spec("check_funcs"), "expected module:function"),
        (lambda: PythonCheck.from_script("missing_check.py"), "check script 'missing_check.py' not found"),
        (lambda: PythonCheck.from_script(SCRIPTS / "broken_script.py"), "failed to load: ImportError"),
        (lambda: PythonCheck.from_script(SCRIPTS / "no_check_script.py"), "defines no function 'check'"),
        (lambda: PythonCheck(print, on_crash="explode"), "`on_crash`"),
    ],
)
def test_loading_problems_are_one_line_user_errors(on_path, make, message):
    with pytest.raises(UserError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_main_only_script_gets_a_hint():
    with pytest.raises(UserError) as info:
        PythonCheck.from_script(SCRIPTS / "no_check_script.py")
    assert "main" in (info.value.hint or "")
    assert PythonCheck.from_script(f"{SCRIPTS / 'no_check_script.py'}:main").func() is True


def test_module_in_the_current_directory_is_found(tmp_path, monkeypatch, artifact):
    (tmp_path / "my_local_check.py").write_text("def check(path):\n    return 'skip'\n")
    monkeypatch.chdir(tmp_path)
    assert PythonCheck.from_spec("my_local_check:check").run(artifact).verdict is Verdict.SKIP


def test_terminate_refuses_later_runs(artifact):
    check = PythonCheck(lambda p: True)
    check.terminate()
    with pytest.raises(SessionAborted):
        check.run(artifact)


def test_to_result_keeps_check_results():
    result = CheckResult(Verdict.SKIP, note="n/a")
    assert to_result(result) is result and to_result(Verdict.BAD).verdict is Verdict.BAD
