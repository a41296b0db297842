"""Sessions through the real entry point (``python -m bisector`` as a subprocess) on a fixture
model, with real checks: kill -9 and resume, resume refusing a changed model or changed parameters,
log / edit / replay, and an interactive session answered through its prompt on a pipe."""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import onnx
import pytest

from fixtures.models import make_chain, make_diamond
from tests.helpers import ENV, EXIT_STOPPED, SCRIPTS, bisector, faulty, journal, one_error_line, report

SLOW_FAULTY = str(SCRIPTS / "slow_faulty.py")


def reduce_chain(tmp_path: Path, session: str = "s", *extra: str) -> subprocess.CompletedProcess:
    return bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", session, "-q", *extra,
                    "--check", *faulty("scale:relu4"), cwd=tmp_path)


# ------------------------------------------------------------------------------------- kill -9
def _kill_orphans(piddir: Path, under: Path) -> None:
    """Checks die with a bisector killed with -9 (test_hardening.py tests it); should one not, end
    those we started, found by the pid files slow_faulty.py leaves, if they still run here."""
    for f in piddir.glob("*") if piddir.exists() else []:
        pid = int(f.name)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd.startswith(str(under)):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_answer(tmp_path):
    onnx.save(make_diamond(), str(tmp_path / "d.onnx"))
    fault = ["polygraphy_debug.onnx", "--fault", "scale:branch_a_relu", "--load-inputs", "inputs.json"]

    def start(session: str, piddir: Path, sleep: str) -> list[str]:
        return [sys.executable, "-m", "bisector", "reduce", "d.onnx", "-o", f"{session}.onnx", "--session", session,
                "-q", "--events", f"{session}.events.jsonl", "--check", sys.executable, SLOW_FAULTY, str(piddir),
                sleep, *fault]

    reference = subprocess.run(start("ref", tmp_path / "ref-pids", "0"), cwd=tmp_path, env=ENV,
                               capture_output=True, text=True, timeout=120, check=False)
    assert reference.returncode == 0, reference.stderr
    expected = report(tmp_path / "ref")["result"]
    assert expected["node_names"] == ["branch_a_relu"]

    piddir, session = tmp_path / "pids", tmp_path / "s"
    rng = random.Random(20240607)
    kills, argv = 0, start("s", piddir, "0.4")
    try:
        for attempt in range(12):
            proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if attempt == 0:  # the first kill once the session exists (before, there is nothing to resume)
                deadline = time.monotonic() + 30
                while not (session / "session.json").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
            try:
                proc.wait(timeout=rng.uniform(0.3, 1.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
            else:
                break
            argv = [sys.executable, "-m", "bisector", "resume", str(session)]
            if kills >= 6:
                break
        final = subprocess.run([sys.executable, "-m", "bisector", "resume", str(session)], cwd=tmp_path, env=ENV,
                               capture_output=True, text=True, timeout=120, check=False)
    finally:
        _kill_orphans(piddir, tmp_path)
    assert kills >= 5, f"only {kills} kills landed: the session ran too fast for the test"
    assert final.returncode == 0, final.stderr
    got = report(session)["result"]
    assert got["nodes"] == expected["nodes"]
    assert got["node_names"] == expected["node_names"]

    entries = journal(session, torn_ok=True)
    checked = Counter(e["fingerprint"] for e in entries if e["source"] == "check")
    assert max(checked.values()) == 1, "a verdict was journaled twice"
    assert {e["fingerprint"]: e["verdict"] for e in journal(tmp_path / "ref")}.items() >= \
        {e["fingerprint"]: e["verdict"] for e in entries}.items()  # the same verdicts as the clean run
    # Every check process that started left a pid file: all but at most one per kill were journaled.
    started = len(list(piddir.glob("*")))
    assert started <= len(checked) + kills, (started, len(checked), kills)
    events = []
    for line in (tmp_path / "s.events.jsonl").read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # the event file's line torn by a kill
    starts = Counter(e["fingerprint"] for e in events if e["event"] == "check-start")
    repeated = sum(n - 1 for n in starts.values())
    assert repeated <= kills, (repeated, kills)


# ------------------------------------------------------------------------------------- resume refuses
@pytest.mark.slow
def test_resume_refuses_a_changed_model_or_changed_parameters(tmp_path, chain_model):
    done = reduce_chain(tmp_path)
    assert done.returncode == 0, done.stderr
    before = (tmp_path / "s" / "journal.jsonl").read_text()

    again = bisector("resume", "s", cwd=tmp_path)  # unchanged: resumes, with nothing left to check
    assert again.returncode == 0, again.stderr
    r = report(tmp_path / "s")
    assert r["checks_this_run"] == 0 and r["cached"] > 0
    assert r["checks"] == len(journal(tmp_path / "s"))  # the session's checks, not only this run's
    assert r["result"]["node_names"] == ["relu4"]

    changed = reduce_chain(tmp_path, "s", "--mode", "linear")
    assert changed.returncode == 2
    line = one_error_line(changed.stderr)
    assert "holds a different session" in line and "parameter 'mode' was 'auto', now 'linear'" in line

    changed = reduce_chain(tmp_path, "s", "--seed", "7", "--verify-minimal")
    assert changed.returncode == 2
    line = one_error_line(changed.stderr)
    assert "parameter 'seed' was 1, now 7 (and 1 more)" in line

    other_check = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-q", "--check",
                           *faulty("scale:relu5"), cwd=tmp_path)
    assert other_check.returncode == 2
    assert "parameter 'check' was" in one_error_line(other_check.stderr)

    onnx.save(make_chain(seed=1), str(chain_model))  # the same graph, other weights
    resumed = bisector("resume", "s", cwd=tmp_path)
    assert resumed.returncode == 2
    line = one_error_line(resumed.stderr)
    assert "the model changed since the session started" in line and "m.onnx" in line
    assert re.search(r"fingerprint [0-9a-f]{12} -> [0-9a-f]{12}", line)
    assert (tmp_path / "s" / "journal.jsonl").read_text() == before  # nothing was touched


def test_resume_of_something_that_is_not_a_session(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = bisector("resume", "empty", cwd=tmp_path)
    assert proc.returncode == 2
    assert "is not a bisector session" in one_error_line(proc.stderr)


# ------------------------------------------------------------------------------------- log / replay
@pytest.mark.slow
def test_log_edit_replay_uses_the_edited_verdicts_and_checks_the_rest(tmp_path, chain_model):
    done = reduce_chain(tmp_path)
    assert done.returncode == 0, done.stderr
    log = bisector("log", "s", cwd=tmp_path)
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()
    verdicts = [ln for ln in lines if not ln.startswith("#")]
    assert len(verdicts) == len(journal(tmp_path / "s"))
    alone = [i for i, ln in enumerate(lines) if "alone, 1 node: relu4" in ln]
    assert len(alone) == 1 and lines[alone[0]].startswith("bad ")
    lines[alone[0]] = "skip" + lines[alone[0]][3:]  # say the culprit alone could not be tested
    edited = tmp_path / "edited.log"
    edited.write_text("\n".join(lines) + "\n")
    given = {ln.split()[1]: ln.split()[0] for ln in lines if not ln.startswith("#")}

    answer = (tmp_path / "red.onnx").read_bytes()
    replayed = bisector("replay", "edited.log", "--session", "s2", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    # The replay's answer goes to its own session, never over the file the original command wrote.
    assert (tmp_path / "red.onnx").read_bytes() == answer
    assert f"replay writes --output: {tmp_path / 's2' / 'result' / 'red.onnx'}" in replayed.stdout + replayed.stderr
    assert len(onnx.load(str(tmp_path / "s2" / "result" / "red.onnx")).graph.node) == 2
    assert "resuming" not in replayed.stdout + replayed.stderr  # a replay starts a session, from given verdicts
    phases = {p["phase"]: p for p in report(tmp_path / "s2")["result"]["phases"]}
    assert "?" not in phases and phases["suffix"]["size_after"] < 20  # replayed verdicts keep phase and size
    entries = journal(tmp_path / "s2")
    replay_entries = [e for e in entries if e["source"] == "replay"]
    assert {e["fingerprint"]: e["verdict"] for e in replay_entries} == given
    new_checks = [e for e in entries if e["source"] == "check"]
    assert new_checks, "nothing was left to check"
    assert not {e["fingerprint"] for e in new_checks} & set(given), "a replayed verdict was checked again"
    r = report(tmp_path / "s2")
    assert r["checks"] == len(new_checks)
    # relu4 alone is 'skip' now, so the search had to keep its producer: the edit was used.
    assert r["result"]["node_names"] == ["add4", "relu4"]

    proc = bisector("replay", "edited.log", "--session", "s", cwd=tmp_path)
    assert proc.returncode == 2 and "already holds a session" in one_error_line(proc.stderr)
    (tmp_path / "bad.txt").write_text("# command: [\"bisector\"]\nmaybe 1234abcd\n")
    proc = bisector("replay", "bad.txt", "--session", "s3", cwd=tmp_path)
    assert proc.returncode == 2 and "bad.txt:2: expected '<good|bad|skip> <fingerprint>'" in one_error_line(proc.stderr)


# ------------------------------------------------------------------------------------- interactive
PROMPT = re.compile(r"Is iteration (\d+) good or bad\? \[g\]ood / \[b\]ad / \[s\]kip / \[r\]etry / \[q\]uit: $")


class Prompted:
    """Drive an interactive session through its prompt on pipes: read stderr up to each question,
    answer on stdin. ``answer(artifact_path, n)`` returns the line to type."""

    def __init__(self, argv: list[str], cwd: Path):
        self.cwd = cwd
        self.proc = subprocess.Popen(argv, cwd=cwd, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.err = b""

    def run(self, answer, timeout: float = 60) -> tuple[int, str, list[tuple[str, str]]]:
        asked = []
        deadline = time.monotonic() + timeout
        fd = self.proc.stderr.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no prompt within {timeout} s:\n{self.err.decode()}"
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.err += chunk
            text = self.err.decode(errors="replace")
            if PROMPT.search(text):
                artifact = str(self.cwd / re.findall(r"  artifact: (.+)", text)[-1].strip())
                reply = answer(artifact, len(asked))
                asked.append((artifact, reply))
                self.err += b"\n"  # so the next search starts after this prompt
                self.proc.stdin.write(reply.encode() + b"\n")
                self.proc.stdin.flush()
        self.proc.stdin.close()
        self.proc.stdout.close()
        code = self.proc.wait(timeout=timeout)
        self.proc.stderr.close()
        return code, self.err.decode(errors="replace"), asked


def truth(artifact: str) -> str:
    """What a person who knows relu4 is broken answers."""
    model = onnx.load(artifact, load_external_data=False)
    return "b" if "relu4" in {n.name for n in model.graph.node} else "g"


def test_interactive_session_answered_through_its_prompt_then_resumed(tmp_path, chain_model):
    argv = [sys.executable, "-m", "bisector", "reduce", "m.onnx", "-o", "red.onnx", "--session", "s"]
    script = ["truth", "truth", "s", "q"]  # bad (the full model), good, skip, then quit

    def first_answers(artifact, n):
        return truth(artifact) if script[n] == "truth" else script[n]

    code, err, asked = Prompted(argv, tmp_path).run(first_answers)
    assert code == EXIT_STOPPED, err
    assert [a for _, a in asked] == ["b", "g", "s", "q"]
    assert "stopped: quit at the prompt" in err and "continue with: bisector resume" in err
    entries = journal(tmp_path / "s")
    assert [e["verdict"] for e in entries] == ["bad", "good", "skip"]
    assert all(e["evidence"]["note"] == "answered by hand" for e in entries)
    assert not (tmp_path / "s" / "result" / "report.json").exists()

    code, err, more = Prompted([sys.executable, "-m", "bisector", "resume", "s"], tmp_path).run(
        lambda artifact, n: truth(artifact))
    assert code == 0, err
    r = report(tmp_path / "s")
    assert r["result"]["node_names"] == ["relu4"]
    assert r["checks"] == 3 + len(more) and r["checks_this_run"] == len(more) and r["cached"] >= 1
    fps = [e["fingerprint"] for e in journal(tmp_path / "s")]
    assert len(fps) == len(set(fps)) == 3 + len(more)  # no question was asked twice


def test_interactive_check_with_j3_is_asked_only_what_the_search_needs(tmp_path, chain_model):
    def session(name: str, *jobs: str) -> tuple[str, list[dict]]:
        argv = [sys.executable, "-m", "bisector", "reduce", "m.onnx", "-o", "red.onnx", "--session", name, *jobs]
        code, err, asked = Prompted(argv, tmp_path).run(lambda artifact, n: truth(artifact))
        assert code == 0, err
        assert report(tmp_path / name)["result"]["node_names"] == ["relu4"]
        assert len(asked) == len(journal(tmp_path / name))
        return err, journal(tmp_path / name)

    err, entries = session("s3", "-j", "3")
    notes = [ln for ln in err.splitlines() if "-j 3 ignored" in ln]
    assert len(notes) == 1 and "running with -j 1" in notes[0]
    assert not any(e.get("speculative") for e in entries)
    _, one = session("s1")
    assert [e["fingerprint"] for e in entries] == [e["fingerprint"] for e in one]  # the questions of -j 1


def test_interactive_end_of_input_stops_resumably(tmp_path, chain_model):
    proc = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", "s", cwd=tmp_path, stdin="b\n")
    assert proc.returncode == EXIT_STOPPED, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [e["verdict"] for e in journal(tmp_path / "s")] == ["bad"]


def test_interactive_reasks_on_nonsense_and_retry(tmp_path, chain_model):
    proc = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", "s", cwd=tmp_path,
                    stdin="maybe\n\nr\nfail\nq\n")
    assert proc.returncode == EXIT_STOPPED
    assert proc.stderr.count("Please answer g (good)") == 2
    assert proc.stderr.count("Iteration 0: full model (20 nodes)") == 2  # shown again on r
    assert [e["verdict"] for e in journal(tmp_path / "s")] == ["bad"]


def test_a_replayed_session_records_and_resumes_the_command_it_runs(tmp_path):
    # The check has a --session of its own, and bisector's session is the default directory.
    check = [sys.executable, "-c", "import sys; sys.exit(0)", "--session", "decoy"]
    first = bisector("repeat", "--until", "3", "-q", "--check", *check, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (original,) = tmp_path.glob("bisector-session-*")
    (tmp_path / "log.txt").write_text(bisector("log", original.name, cwd=tmp_path).stdout)

    replayed = bisector("replay", "log.txt", "--session", "s2", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    r = report(tmp_path / "s2")
    assert r["checks"] == 0 and r["result"]["runs"] == 3  # every run's verdict came from the log
    assert list(tmp_path.glob("bisector-session-*")) == [original]  # the run used s2, nothing else
    command = json.loads((tmp_path / "s2" / "session.json").read_text())["command"]
    assert command[:3] == ["bisector", "repeat", "--until"]  # what runs, not `bisector replay LOG`
    assert command[-len(check):] == check  # the check command is untouched

    resumed = bisector("resume", "s2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert report(tmp_path / "s2")["checks"] == 0


def test_sessions_started_in_the_same_second_get_their_own_directories(tmp_path):
    now = time.time()
    for dt in range(4):  # someone else's sessions, in every second the run could start in
        d = tmp_path / time.strftime("bisector-session-%Y%m%d-%H%M%S", time.localtime(now + dt))
        d.mkdir(exist_ok=True)
        (d / "session.json").write_text(json.dumps({"strategy": "reduce", "command": ["bisector"]}))
    proc = bisector("repeat", "--until", "1", "-q", "--check", sys.executable, "-c", "pass", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    fresh = [d for d in tmp_path.glob("bisector-session-*") if (d / "result" / "report.json").exists()]
    assert len(fresh) == 1 and fresh[0].name.endswith("-2")


def test_resume_leaves_a_check_commands_own_session_flag_alone(tmp_path):
    check = [sys.executable, "-c", "import sys; sys.exit(0)", "--session", "decoy"]
    first = bisector("repeat", "--until", "2", "-q", "--check", *check, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (original,) = tmp_path.glob("bisector-session-*")
    resumed = bisector("resume", original.name, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert list(tmp_path.glob("bisector-session-*")) == [original]
    assert report(original)["checks"] == 2 and report(original)["checks_this_run"] == 0


def test_ctrl_c_at_the_prompt_stops_resumably(tmp_path, chain_model):
    proc = subprocess.Popen([sys.executable, "-m", "bisector", "reduce", "m.onnx", "-o", "red.onnx", "--session", "s"],
                            cwd=tmp_path, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    err, deadline = b"", time.monotonic() + 60
    while b"Is iteration 0 good or bad?" not in err and time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 1)[0]:
            err += os.read(proc.stderr.fileno(), 65536)
    proc.send_signal(signal.SIGINT)  # nobody answers: the prompt waits on an open pipe
    try:
        _, rest = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("Ctrl-C at the prompt did not stop bisector")
    text = (err + rest).decode()
    assert proc.returncode == EXIT_STOPPED, text
    assert "Traceback" not in text and "continue with: bisector resume" in text
    assert journal(tmp_path / "s") == []


@pytest.mark.slow
def test_replay_and_resume_leave_the_original_commands_files_alone(tmp_path, chain_model):
    done = bisector("reduce", "m.onnx", "-o", "a/x.onnx", "--min-good", "b/x.onnx", "--session", "s", "-q",
                    "--events", "ev.jsonl", "--save-inputs", "in.json", "--check", *faulty(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    events, saved = (tmp_path / "ev.jsonl").read_text(), (tmp_path / "in.json").stat().st_mtime_ns
    (tmp_path / "s.log").write_text(bisector("log", "s", cwd=tmp_path).stdout)
    replayed = bisector("replay", "s.log", "--session", "s2", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert (tmp_path / "ev.jsonl").read_text() == events and (tmp_path / "in.json").stat().st_mtime_ns == saved
    result = tmp_path / "s2" / "result"
    assert len(onnx.load(str(result / "x.onnx")).graph.node) == 1  # the answer
    assert len(onnx.load(str(result / "min_good_x.onnx")).graph.node) > 1  # the min-good model, apart
    assert (result / "ev.jsonl").exists() and (result / "in.json").exists()
    # Logging flags given to resume reach the session it runs.
    resumed = bisector("resume", "s", "--log-file", "resume.log", "-v", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "bisector.events INFO: done" in (tmp_path / "resume.log").read_text()
