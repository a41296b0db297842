"""RepeatCheck: votes, early stopping, flake rate, logs; with a scripted check and a real command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bisector.checks.base import Artifact, Check, CheckResult, Verdict
from bisector.checks.command import CommandCheck
from bisector.checks.repeat import VOTES, RepeatCheck, combine, settled
from bisector.errors import SessionAborted, UserError

SCRIPTS = Path(__file__).parent / "scripts"
G, B, S = Verdict.GOOD, Verdict.BAD, Verdict.SKIP


class Scripted(Check):
    """A check that answers from a list, in order (no process)."""

    def __init__(self, verdicts, error: Exception | None = None):
        self.verdicts = list(verdicts)
        self.calls = 0
        self.error = error
        self.terminated = False

    def run(self, artifact: Artifact) -> CheckResult:
        if self.error is not None and self.calls == len(self.verdicts):
            raise self.error
        verdict = self.verdicts[self.calls]
        self.calls += 1
        return CheckResult(verdict, exit_code=self.calls, output=f"run {self.calls}",
                           duration_s=0.5, metrics={"max_abs": self.calls})

    def terminate(self) -> None:
        self.terminated = True


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    return Artifact(workdir=tmp_path, path=tmp_path / "polygraphy_debug.onnx", iteration=0)


@pytest.mark.parametrize(
    "verdicts, vote, want",
    [
        ([G, G, B], "any", B),
        ([G, G, G], "any", G),
        ([G, S, S], "any", G),
        ([S, S, S], "any", S),
        ([B, B, G], "all", G),
        ([B, B, B], "all", B),
        ([B, S, B], "all", B),  # skips do not count
        ([S, S], "all", S),
        ([B, B, G], "majority", B),
        ([B, G, G], "majority", G),
        ([B, G], "majority", G),  # a tie is good: bad needs more than half
        ([B, G, S, S, B], "majority", B),  # 2 of 3 counted
        ([S, S, S], "majority", S),
    ],
)
def test_combine(verdicts, vote, want):
    assert combine(verdicts, vote) is want


@pytest.mark.parametrize(
    "done, remaining, vote, want",
    [
        ([B], 4, "any", B),
        ([G, G], 3, "any", None),
        ([G], 4, "all", G),
        ([B, B], 3, "all", None),
        ([B, B, B], 2, "majority", B),  # 3 of 5
        ([G, G, G], 2, "majority", G),
        ([B, B, G], 2, "majority", None),
        ([S, S], 0, "any", S),
        ([S], 2, "all", None),
    ],
)
def test_settled(done, remaining, vote, want):
    assert settled(done, remaining, vote) is want


@given(st.lists(st.sampled_from([G, B, S]), min_size=1, max_size=9), st.sampled_from(VOTES))
def test_stopping_early_never_changes_the_verdict(verdicts, vote):
    art = Artifact(workdir=Path("/nonexistent-bisector-test"), path=Path("m.onnx"), iteration=0)
    full = RepeatCheck(Scripted(verdicts), len(verdicts), vote, stop_early=False).run(art)
    inner = Scripted(verdicts)
    early = RepeatCheck(inner, len(verdicts), vote).run(art)
    assert early.verdict is full.verdict is combine(verdicts, vote)
    assert early.metrics["runs"] == [v.value for v in verdicts[: inner.calls]]
    assert settled(verdicts[: inner.calls], len(verdicts) - inner.calls, vote) is not None
    if inner.calls > 1:  # it did not stop before it could
        assert settled(verdicts[: inner.calls - 1], len(verdicts) - inner.calls + 1, vote) is None


def test_metrics_note_and_evidence(artifact):
    result = RepeatCheck(Scripted([G, B, G, G]), repeat=4, vote="majority").run(artifact)
    assert result.verdict is G
    assert result.metrics["runs"] == ["good", "bad", "good"]  # 3 of 4 good: settled after 3
    assert result.metrics["flake_rate"] == pytest.approx(1 / 3)
    assert result.metrics["vote"] == "majority" and result.metrics["max_abs"] == 3
    assert result.output == "run 3" and result.exit_code == 3  # last run that agreed
    assert result.duration_s == pytest.approx(1.5)
    assert result.note.startswith("1 of 3 counted runs bad (3/4 made, vote majority)")


def test_all_skipped_is_skip_with_zero_flake_rate(artifact):
    result = RepeatCheck(Scripted([S, S]), repeat=2).run(artifact)
    assert result.verdict is S and result.metrics["flake_rate"] == 0.0


def test_inner_errors_pass_through(artifact):
    with pytest.raises(SessionAborted):
        RepeatCheck(Scripted([G], error=SessionAborted("q")), repeat=3).run(artifact)
    with pytest.raises(UserError):
        RepeatCheck(Scripted([G, G], error=UserError("gone")), repeat=3).run(artifact)


def test_terminate_forwards_and_refuses(artifact):
    inner = Scripted([G, G, G])
    check = RepeatCheck(inner, repeat=3)
    check.terminate()
    assert inner.terminated
    with pytest.raises(SessionAborted):
        check.run(artifact)


def test_options_are_checked():
    with pytest.raises(UserError, match="`repeat`"):
        RepeatCheck(Scripted([]), repeat=0)
    with pytest.raises(UserError, match="`vote`"):
        RepeatCheck(Scripted([]), vote="most")


def test_flaky_command_keeps_every_log(artifact):
    # exits 0, 1, 0, 1, 0 on successive calls: bad under "any", good under "majority"
    inner = CommandCheck([sys.executable, str(SCRIPTS / "flaky.py"), "0,1,0,1,0"])
    result = RepeatCheck(inner, repeat=5, vote="majority", stop_early=False).run(artifact)
    assert result.verdict is G
    assert result.metrics["runs"] == ["good", "bad", "good", "bad", "good"]
    assert result.metrics["flake_rate"] == pytest.approx(0.4)
    for i in range(1, 6):
        assert (artifact.workdir / f"check.run{i}.log").read_text().startswith(f"run {i}:")
    assert (artifact.workdir / "check.log").read_text() == "run 5: exit 0\n"
    assert inner.should_show(result) is RepeatCheck(inner).should_show(result) is False


def test_any_stops_at_the_first_bad_command_run(artifact):
    inner = CommandCheck([sys.executable, str(SCRIPTS / "flaky.py"), "0,1,0"])
    result = RepeatCheck(inner, repeat=10, vote="any").run(artifact)
    assert result.verdict is B and result.metrics["runs"] == ["good", "bad"]
    assert result.metrics["flake_rate"] == 0.5
    assert (artifact.workdir / "check.log").read_text() == "run 2: exit 1\n"
    assert not (artifact.workdir / "check.run3.log").exists()
