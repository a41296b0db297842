"""Session commands through the real entry point (``python -m bisector``): error paths (a missing
check command, an unwritable session directory, a full disk), Ctrl-C, ``repeat``, the report and
the event stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import (ENV, EXIT_STOPPED, SCRIPTS, bisector, executable, faulty, journal, one_error_line,
                           report, tmpfs)

REPORT_KEYS = {"strategy", "checks", "verdicts", "elapsed_s", "result", "iterations"}


# ------------------------------------------------------------------------------------- a missing check
def test_check_command_not_found_is_one_line_and_exit_2(tmp_path, chain_model):
    for cmd, says in ((str(tmp_path / "no-such-check.sh"), "not found"),
                      ("no-such-check-command-anywhere", "not found on PATH")):
        proc = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-q", "--check", cmd,
                        "polygraphy_debug.onnx", cwd=tmp_path)
        assert proc.returncode == 2
        line = one_error_line(proc.stderr)
        assert says in line and cmd in line
        assert not (tmp_path / "s").exists()  # found out before anything was started


@pytest.mark.slow
def test_check_command_vanishing_mid_session_stops_it_resumably(tmp_path, chain_model):
    counter = tmp_path / "runs"
    check = executable(tmp_path / "check.py", f"""\
        import os, subprocess, sys
        from pathlib import Path
        counter = Path({str(counter)!r})
        runs = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(runs))
        code = subprocess.call([sys.executable, "-m", "fixtures.faulty_check", *sys.argv[1:]])
        if runs == 3:
            os.rename(__file__, __file__ + ".away")  # gone for the 4th check
        sys.exit(code)
        """)
    args = ["reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-q", "--check", str(check), *faulty()[3:]]
    proc = bisector(*args, cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "not found" in line and "check.py" in line
    assert "continue with: bisector resume" in proc.stderr
    assert len(journal(tmp_path / "s")) == 3

    check.with_name("check.py.away").rename(check)
    resumed = bisector("resume", "s", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert report(tmp_path / "s")["result"]["node_names"] == ["relu4"]
    fps = [e["fingerprint"] for e in journal(tmp_path / "s")]
    assert len(fps) == len(set(fps))
    assert int(counter.read_text()) == len(fps)  # no check was run twice


# ------------------------------------------------------------------------------------- unwritable
def test_session_under_a_regular_file_is_one_line_and_exit_2(tmp_path, chain_model):
    # Tests run as root here, where chmod 0o500 does not stop writes: a path under a regular file
    # fails for everybody (ENOTDIR).
    (tmp_path / "file.txt").write_text("not a directory\n")
    proc = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", "file.txt/sub", "-q", "--check", *faulty(),
                    cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert f"cannot create session directory {tmp_path / 'file.txt' / 'sub'}" in line and "Not a directory" in line
    assert "--session" in proc.stderr  # the hint names the flag


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 directory anyway (see the test above)")
def test_session_in_a_read_only_directory_is_one_line_and_exit_2(tmp_path, chain_model):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", "ro/s", "-q", "--check", *faulty(),
                        cwd=tmp_path)
    finally:
        ro.chmod(0o700)
    assert proc.returncode == 2
    assert "cannot create session directory" in one_error_line(proc.stderr)


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (needs root and CAP_SYS_ADMIN; the test is skipped without them)."""
    with tmpfs(tmp_path / "small", "size=512k") as mnt:
        yield mnt


@pytest.mark.slow
def test_disk_full_mid_session_stops_resumably_without_a_wrong_verdict(tmp_path, chain_model, small_disk):
    filler, counter = small_disk / "filler", tmp_path / "runs"
    session = small_disk / "s"
    proc = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", str(session), "-q", "--check",
                    sys.executable, str(SCRIPTS / "fill_disk.py"), str(counter), "3", str(filler),
                    *faulty()[3:], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "disk full" in line
    assert "bisector resume" in proc.stderr
    assert [e["verdict"] for e in journal(session)] == ["bad", "good"]  # the third verdict was not trusted

    filler.unlink()
    resumed = bisector("resume", str(session), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    r = report(session)
    assert r["result"]["node_names"] == ["relu4"]
    assert int(counter.read_text()) == len(journal(session)) + 1  # one check repeated: the untrusted one


# ------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
def test_ctrl_c_stops_the_check_and_keeps_a_resumable_session(tmp_path, chain_model):
    piddir, sleep = tmp_path / "pids", tmp_path / "sleep.txt"
    sleep.write_text("30")
    argv = [sys.executable, "-m", "bisector", "reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-q",
            "--check", sys.executable, str(SCRIPTS / "slow_faulty.py"), str(piddir), str(sleep), *faulty()[3:]]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (piddir.exists() and any(piddir.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    check_pid = int(next(piddir.iterdir()).name)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_STOPPED, err
    assert "Traceback" not in err
    assert "stopped: interrupted" in err and "continue with: bisector resume" in err
    status = Path(f"/proc/{check_pid}/status")
    assert not status.exists() or "zombie" in status.read_text().lower(), "the check in flight was left running"
    assert not (tmp_path / "s" / "journal.jsonl").exists() or journal(tmp_path / "s") == []

    sleep.write_text("0")
    resumed = bisector("resume", "s", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert report(tmp_path / "s")["result"]["node_names"] == ["relu4"]
    assert len(list(piddir.iterdir())) == len(journal(tmp_path / "s")) + 1  # only the interrupted check again


# ------------------------------------------------------------------------------------- repeat
def test_repeat_until_bad_stops_at_the_first_failure(tmp_path):
    counter = tmp_path / "runs"
    proc = bisector("repeat", "--until", "bad", "--session", "s", "-q", "--check", sys.executable,
                    str(SCRIPTS / "nth_run.py"), str(counter), "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert counter.read_text() == "3"
    r = report(tmp_path / "s")
    assert REPORT_KEYS <= set(r)
    assert r["strategy"] == "repeat"
    assert r["result"]["runs"] == 3 and r["result"]["bad"] == 1 and r["result"]["good"] == 2
    assert r["result"]["reason"] == "run 2 was bad"
    assert r["checks"] == 3 and r["verdicts"] == {"good": 2, "bad": 1, "skip": 0}
    assert [row["verdict"] for row in r["iterations"]] == ["good", "good", "bad"]


def test_repeat_until_a_number_runs_that_many_times(tmp_path):
    counter = tmp_path / "runs"
    proc = bisector("repeat", "--until", "4", "--session", "s", "-q", "--check", sys.executable,
                    str(SCRIPTS / "nth_run.py"), str(counter), "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert counter.read_text() == "4"  # failures do not stop a counted repeat
    r = report(tmp_path / "s")["result"]
    assert r["runs"] == 4 and r["good"] == 1 and r["bad"] == 3 and r["bad_rate"] == 0.75


def test_repeat_refuses_a_bad_until(tmp_path):
    proc = bisector("repeat", "--until", "sometimes", "--session", "s", "-q", "--check", sys.executable, "-c", "0",
                    cwd=tmp_path)
    assert proc.returncode == 2
    assert "--until 'sometimes'" in one_error_line(proc.stderr)


def test_repeat_interrupted_then_resumed_counts_on(tmp_path):
    counter = tmp_path / "runs"
    check = executable(tmp_path / "check.py", f"""\
        import os, signal, sys, time
        from pathlib import Path
        counter = Path({str(counter)!r})
        runs = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(runs))
        if runs == 3:  # Ctrl-C to bisector while the third run is in flight
            os.kill(os.getppid(), signal.SIGINT)
            time.sleep(30)
        sys.exit(125 if runs == 2 else 0)
        """)
    first = bisector("repeat", "--until", "5", "--session", "s", "-q", "--check", str(check), cwd=tmp_path)
    assert first.returncode == EXIT_STOPPED, first.stderr
    assert [e["verdict"] for e in journal(tmp_path / "s")] == ["good", "skip"]
    again = bisector("resume", "s", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    r = report(tmp_path / "s")
    assert r["result"]["runs"] == 5 and r["result"]["skip"] == 1 and r["result"]["good"] == 4
    assert r["checks"] == 5 and r["verdicts"] == {"good": 4, "bad": 0, "skip": 1}  # the session, every run
    assert r["checks_this_run"] == 3  # runs 3 (again), 4 and 5; runs 1 and 2 came from the journal
    assert counter.read_text() == "6"


# ------------------------------------------------------------------------------------- report, events
def test_reduce_report_and_event_stream(tmp_path, chain_model):
    proc = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-q", "--events", "ev.jsonl",
                    "--check", *faulty(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = report(tmp_path / "s")
    assert REPORT_KEYS <= set(r)
    assert r["strategy"] == "reduce"
    assert set(r["verdicts"]) == {"good", "bad", "skip"}
    assert r["checks"] == sum(r["verdicts"].values()) == len(r["iterations"])
    assert isinstance(r["elapsed_s"], float) and r["elapsed_s"] > 0
    assert r["result"]["node_names"] == ["relu4"] and r["result"]["nodes"] == [11]
    assert {"iteration", "phase", "candidate", "verdict", "fingerprint"} <= set(r["iterations"][0])
    assert (tmp_path / "s" / "result" / "report.md").read_text().startswith("# bisector reduce report")

    events = [json.loads(ln) for ln in (tmp_path / "ev.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["session", "plan", "start"] and kinds[-1] == "done"  # the runner's, then the engine's
    assert set(kinds) <= {"session", "plan", "start", "check-start", "verdict", "cached", "done"}
    assert kinds.count("check-start") == kinds.count("verdict") == r["checks"]
    for e in events:
        assert isinstance(e["time"], float)
    started = {}
    for i, e in enumerate(events):
        if e["event"] == "check-start":
            started[e["iteration"]] = e["fingerprint"]
        elif e["event"] == "verdict":  # each verdict comes after its own check-start
            assert started.pop(e["iteration"]) == e["fingerprint"]
            assert e["verdict"] in ("good", "bad", "skip") and e["label"]
    assert started == {}
    assert events[-1]["result"]["node_names"] == ["relu4"]
    assert Counter(e["verdict"] for e in events if e["event"] == "verdict") == Counter(
        {k: v for k, v in r["verdicts"].items() if v})
