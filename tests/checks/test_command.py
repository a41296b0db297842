"""CommandCheck with real subprocesses: verdict rules, placeholders, crashes, timeouts, terminate."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from bisector.checks import process_group
from bisector.checks.base import Artifact, CheckResult, Verdict
from bisector.checks.command import CommandCheck, validate_command
from bisector.checks.verdict_rules import VerdictRules, decide
from bisector.errors import SessionAborted, UserError

SCRIPTS = Path(__file__).parent / "scripts"
PY = sys.executable
G, B, S = Verdict.GOOD, Verdict.BAD, Verdict.SKIP


def emit(*ops: str) -> list[str]:
    return [PY, str(SCRIPTS / "emit.py"), *ops]


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    workdir = tmp_path / "iterations" / "0007"
    workdir.mkdir(parents=True)
    path = workdir / "polygraphy_debug.onnx"
    path.write_text("model")
    return Artifact(workdir=workdir, path=path, iteration=7, session_dir=tmp_path)


def process_gone(pid: int) -> bool:
    """True if ``pid`` has exited (a zombie counts as gone: this container's init never reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def wait_gone(pid: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.02)
    return False


# --- the verdict table -------------------------------------------------------------------------
# Polygraphy 0.53.6, polygraphy/tools/debug/subtool/iterative_debug_args.py,
# CheckCmdArgs.run_check -> nested is_status_success (lines ~207-229 in 0.53.6):
#   [IGN]  `if self.ignore_fail_codes and status.returncode in self.ignore_fail_codes: return True`
#   [RX]   `output = status.stdout.decode() + status.stderr.decode()`;
#          `has_fail_regex = any(regex.search(output) ...)` only when --fail-regex was given
#   [FC]   `if self.fail_codes is not None: failed = returncode in fail_codes; failed &= has_fail_regex`
#   [RXO]  `else: failed = returncode != 0 if has_fail_regex is None else has_fail_regex`
#   [EXCL] --fail-code / --ignore-fail-code: `self.group.add_mutually_exclusive_group()` (parser)
#   [125]  bisector's own addition (git bisect run): exit 125 = skip, checked before all of these.
# Columns: exit code, emitted output ops, fail_codes, ignore_fail_codes, fail_regexes, verdict.
TABLE = [
    # neither flag [RXO, has_fail_regex is None]: non-zero fails, output ignored
    (0, ["out:all good"], None, None, None, G),
    (0, ["err:NaN detected"], None, None, None, G),
    (1, ["out:FAILED"], None, None, None, B),
    (2, [], None, None, None, B),
    (255, [], None, None, None, B),
    # --ignore-fail-code [IGN]: those codes pass whatever the output; others follow the rest
    (1, ["out:FAILED"], None, [1], None, G),
    (1, ["out:NaN"], None, [1], ["NaN"], G),  # ignored code wins over a matching regex
    (2, [], None, [1], None, B),
    (0, ["out:NaN"], None, [1], ["NaN"], B),  # not ignored -> the regex alone decides [RXO]
    (2, ["out:fine"], None, [1], ["NaN"], G),
    # --fail-code [FC]: only those codes fail
    (3, [], [3], None, None, B),
    (1, ["out:FAILED"], [3], None, None, G),
    (0, [], [3], None, None, G),
    (0, [], [0], None, None, B),  # even a zero exit, if listed
    (4, [], [3, 4], None, None, B),
    # --fail-code + --fail-regex [FC]: the code must be listed AND a regex must match
    (3, ["out:got NaN"], [3], None, ["NaN"], B),
    (3, ["out:clean"], [3], None, ["NaN"], G),
    (1, ["out:got NaN"], [3], None, ["NaN"], G),
    (3, ["err:got NaN"], [3], None, ["NaN"], B),  # stderr is searched too [RX]
    # --fail-regex alone [RXO]: the regex decides, whatever the code
    (0, ["out:output mismatch"], None, None, ["mismatch"], B),
    (0, ["out:fine"], None, None, ["mismatch"], G),
    (1, ["out:Traceback"], None, None, ["mismatch"], G),
    (1, ["err:mismatch"], None, None, ["mismatch"], B),
    (0, ["out:inf"], None, None, ["NaN", "inf"], B),  # several regexes: any match fails
    (0, ["out:max diff 3.5e+02"], None, None, [r"diff \d\.\d"], B),  # re.search, not fullmatch
    (0, ["out:nan"], None, None, ["NaN"], G),  # no flags: case-sensitive
    # exit 125 [125]: skip before every Polygraphy rule
    (125, [], None, None, None, S),
    (125, ["out:NaN"], None, None, ["NaN"], S),
    (125, [], [125], None, None, S),
    (125, [], None, [125], None, S),
]


def table_id(row) -> str:
    code, ops, fc, ifc, rx, want = row
    return f"exit{code}-{'+'.join(ops) or 'silent'}-fc{fc}-ifc{ifc}-rx{rx}-{want.value}"


@pytest.mark.parametrize("row", TABLE, ids=table_id)
def test_verdict_table_pure(row):
    code, ops, fc, ifc, rx, want = row
    output = "".join(op.partition(":")[2] + "\n" for op in ops)
    assert decide(code, output, VerdictRules(fc, ifc, rx)) is want


@pytest.mark.parametrize("row", TABLE, ids=table_id)
def test_verdict_table_real_process(row, artifact):
    code, ops, fc, ifc, rx, want = row
    result = CommandCheck(emit(*ops, f"exit:{code}"), VerdictRules(fc, ifc, rx)).run(artifact)
    assert (result.verdict, result.exit_code) == (want, code)


@pytest.mark.parametrize("row", [r for r in TABLE if r[0] != 125], ids=table_id)
def test_verdict_table_matches_polygraphy(row):
    """Differential: Polygraphy's own run_check on the same command and flags agrees."""
    iterative = pytest.importorskip("polygraphy.tools.debug.subtool.iterative_debug_args")
    code, ops, fc, ifc, rx, want = row
    args = iterative.CheckCmdArgs()
    args.check = emit(*ops, f"exit:{code}")
    args.fail_codes, args.ignore_fail_codes = fc, ifc
    args.fail_regexes = None if rx is None else [re.compile(r) for r in rx]
    args.show_output, args.hide_fail_output = False, True
    assert args.run_check(None) == (want is G)


def test_fail_code_and_ignore_fail_code_exclude_each_other():
    with pytest.raises(UserError, match="exclude each other"):
        VerdictRules(fail_codes=[1], ignore_fail_codes=[2])


def test_bad_regex_is_a_user_error():
    with pytest.raises(UserError, match="not a valid regular expression"):
        VerdictRules(fail_regexes=["(unclosed"])


# --- running the command -----------------------------------------------------------------------


def test_placeholders_environment_and_cwd(artifact):
    artifact.inputs_path = artifact.workdir / "inputs.json"
    artifact.extra_env = {"CUDA_VISIBLE_DEVICES": "3"}
    argv = [PY, str(SCRIPTS / "show_env.py"), "{artifact}", "--in={inputs}", "{iteration}",
            "{session}", "{2,3}"]
    result = CommandCheck(argv).run(artifact)
    seen = json.loads(result.output)
    assert seen["argv"] == [str(artifact.path), f"--in={artifact.inputs_path}", "7",
                            str(artifact.session_dir), "{2,3}"]
    assert seen["cwd"] == str(artifact.workdir)
    assert seen["stdin"] == ""  # /dev/null
    assert seen["env"] == {
        "BISECTOR_ARTIFACT": str(artifact.path),
        "BISECTOR_ITERATION": "7",
        "BISECTOR_SESSION": str(artifact.session_dir),
        "BISECTOR_INPUTS": str(artifact.inputs_path),
        "CUDA_VISIBLE_DEVICES": "3",
        "PYTHONUNBUFFERED": "1",
    }


def test_inputs_placeholder_without_inputs_is_a_user_error(artifact):
    with pytest.raises(UserError, match=r"\{inputs\}"):
        CommandCheck(emit("out:{inputs}")).run(artifact)


def test_no_inputs_means_no_inputs_variable(artifact):
    seen = json.loads(CommandCheck([PY, str(SCRIPTS / "show_env.py")]).run(artifact).output)
    assert "BISECTOR_INPUTS" not in seen["env"]


def test_output_is_merged_in_order_and_logged_in_full(artifact):
    ops = ["out:first", "err:second", "out:third"] + [f"out:line {i}" for i in range(300)]
    check = CommandCheck(emit(*ops, "exit:1"), output_tail_chars=50)
    result = check.run(artifact)
    log = (artifact.workdir / "check.log").read_text()
    assert log.startswith("first\nsecond\nthird\n")
    assert log.endswith("line 299\n")
    assert result.output.endswith("line 299\n")
    assert "first" not in result.output and "check.log" in result.output
    assert result.output.count("line") <= 6
    assert result.verdict is B and result.exit_code == 1 and result.duration_s > 0


def test_regex_sees_output_beyond_the_tail(artifact):
    ops = ["out:NaN at the start"] + [f"out:filler {i}" for i in range(500)]
    rules = VerdictRules(fail_regexes=["NaN"])
    result = CommandCheck(emit(*ops), rules, output_tail_chars=100).run(artifact)
    assert result.verdict is B and "NaN" not in result.output


def test_invalid_utf8_output_does_not_break_the_check(artifact):
    result = CommandCheck(emit("bytes:ff fe 41 0a", "exit:1")).run(artifact)
    assert result.verdict is B and "A" in result.output


def test_exit_125_is_skip_with_a_note(artifact):
    result = CommandCheck(emit("exit:125")).run(artifact)
    assert result.verdict is S and "125" in result.note


@pytest.mark.parametrize("on_crash, want", [("bad", B), ("skip", S)])
def test_segfault_goes_to_on_crash(artifact, on_crash, want):
    # Polygraphy would apply its rules to the code -11; bisector routes signals to on_crash.
    rules = VerdictRules(fail_codes=[1])
    result = CommandCheck([PY, str(SCRIPTS / "segfault.py")], rules, on_crash=on_crash).run(artifact)
    assert result.verdict is want
    assert result.note == "killed by SIGSEGV" and result.exit_code == -11
    assert "about to crash" in result.output


def test_segfault_abort_raises_session_aborted(artifact):
    check = CommandCheck([PY, str(SCRIPTS / "segfault.py")], on_crash="abort")
    with pytest.raises(SessionAborted, match="SIGSEGV"):
        check.run(artifact)


def test_timeout_kills_the_whole_process_group(artifact):
    pidfile = artifact.workdir / "child.pid"
    check = CommandCheck([PY, str(SCRIPTS / "spawn_sleeper.py"), str(pidfile)], timeout_s=1.0)
    start = time.monotonic()
    result = check.run(artifact)
    assert time.monotonic() - start < 1.0 + process_group.KILL_GRACE_S
    assert result.verdict is B and result.note == "timeout after 1 s" and result.exit_code is None
    assert "parent ready" in result.output
    assert wait_gone(int(pidfile.read_text()))


def test_timeout_escalates_to_sigkill(artifact, monkeypatch):
    monkeypatch.setattr(process_group, "KILL_GRACE_S", 0.3)
    pidfile = artifact.workdir / "child.pid"
    argv = [PY, str(SCRIPTS / "spawn_sleeper.py"), str(pidfile), "ignore-term"]
    result = CommandCheck(argv, timeout_s=1.0, on_timeout="skip").run(artifact)
    assert result.verdict is S
    assert wait_gone(int(pidfile.read_text()))


def test_timeout_abort_raises_session_aborted(artifact):
    slow = CommandCheck([PY, "-c", "import time; time.sleep(30)"], timeout_s=0.3, on_timeout="abort")
    with pytest.raises(SessionAborted, match="timeout"):
        slow.run(artifact)
    assert (artifact.workdir / "check.log").exists()  # kept for the report


def test_processes_left_behind_are_killed(artifact):
    pidfile = artifact.workdir / "child.pid"
    argv = [PY, str(SCRIPTS / "spawn_sleeper.py"), str(pidfile), "leave"]
    result = CommandCheck(argv).run(artifact)
    assert result.verdict is G
    assert wait_gone(int(pidfile.read_text()))


def test_terminate_from_another_thread_kills_and_aborts(artifact):
    pidfile = artifact.workdir / "child.pid"
    check = CommandCheck([PY, str(SCRIPTS / "spawn_sleeper.py"), str(pidfile)])
    timer = threading.Timer(0.5, check.terminate)
    timer.start()
    start = time.monotonic()
    with pytest.raises(SessionAborted):
        check.run(artifact)
    assert time.monotonic() - start < 0.5 + process_group.KILL_GRACE_S
    assert wait_gone(int(pidfile.read_text()))
    with pytest.raises(SessionAborted):  # stays terminated
        check.run(artifact)


def test_missing_command_is_a_user_error_from_run_and_validate(artifact):
    check = CommandCheck(["polygrafy", "run", "{artifact}"])
    with pytest.raises(UserError, match="check command 'polygrafy' not found on PATH") as info:
        check.validate()
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="'polygrafy' not found"):
        check.run(artifact)


def test_not_executable_is_a_user_error(tmp_path):
    script = tmp_path / "check.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(UserError, match="not executable"):
        CommandCheck([str(script)]).validate()
    with pytest.raises(UserError, match="empty"):
        validate_command([])


def test_relative_command_resolves_against_the_launch_directory(artifact, tmp_path, monkeypatch):
    script = tmp_path / "check.sh"
    script.write_text("#!/bin/sh\necho \"checked $1\"\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    check = CommandCheck(["./check.sh", "{artifact}"])  # the workdir has no check.sh
    assert check.validate() == str(script)
    result = check.run(artifact)
    assert result.exit_code == 3 and result.output == f"checked {artifact.path}\n"


def test_workdir_is_created_if_missing(tmp_path):
    workdir = tmp_path / "iterations" / "0000"
    art = Artifact(workdir=workdir, path=workdir / "polygraphy_debug.onnx", iteration=0)
    assert CommandCheck(emit("out:hi")).run(art).verdict is G
    assert (workdir / "check.log").read_text() == "hi\n"


@pytest.mark.parametrize(
    "show, hide, verdict, shown",
    [
        (False, False, G, False),  # default: passing output is captured
        (False, False, B, True),  # default: failing output is displayed
        (False, False, S, True),
        (True, False, G, True),  # --show-output
        (True, False, B, True),
        (False, True, B, False),  # --hide-fail-output
        (False, True, G, False),
    ],
)
def test_should_show_follows_polygraphy(show, hide, verdict, shown):
    check = CommandCheck(["true"], show_output=show, hide_fail_output=hide)
    assert check.should_show(CheckResult(verdict)) is shown


def test_option_errors_are_user_errors():
    with pytest.raises(UserError, match="exclude each other"):
        CommandCheck(["true"], show_output=True, hide_fail_output=True)
    with pytest.raises(UserError, match="`on_crash`"):
        CommandCheck(["true"], on_crash="retry")
    with pytest.raises(UserError, match="`check_timeout`"):
        CommandCheck(["true"], timeout_s=0)


def test_concurrent_runs_share_one_check(tmp_path):
    check = CommandCheck(emit("out:{iteration}", "exit:0"))
    arts = [Artifact(tmp_path / str(i), tmp_path / str(i) / "m.onnx", i) for i in range(4)]
    results: dict[int, CheckResult] = {}
    threads = [threading.Thread(target=lambda a=a: results.__setitem__(a.iteration, check.run(a)))
               for a in arts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.output for i, r in results.items()} == {i: f"{i}\n" for i in range(4)}
    assert os.path.exists(tmp_path / "3" / "check.log")
