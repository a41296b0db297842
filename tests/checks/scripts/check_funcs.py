"""Check functions for PythonCheck tests (imported as module 'check_funcs' or loaded as a script)."""

from pathlib import Path

from bisector.checks.base import CheckResult, Verdict


def check(artifact_path):
    """The script convention: good iff the artifact file says 'ok'."""
    return Path(artifact_path).read_text().strip() == "ok"


def says_word(artifact_path):
    return Path(artifact_path).read_text().strip()  # "good", "fail", "skip", ...


def with_artifact(artifact_path, artifact):
    return Verdict.BAD if artifact.iteration % 2 else Verdict.GOOD


def full_result(artifact_path):
    return CheckResult(Verdict.BAD, output="max abs diff 0.5", metrics={"max_abs": 0.5})


def raises(artifact_path):
    raise RuntimeError("the comparison blew up")


def returns_none(artifact_path):
    pass


def returns_number(artifact_path):
    return 3


not_callable = 42
