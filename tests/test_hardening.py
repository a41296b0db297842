"""Hardening, through the real entry point and real processes: file-system errors end in one line,
Ctrl-C before the search says how to resume, check processes die with bisector, an interactive check
is never asked about speculation, counts survive resume, and speculation left running when the
search ends is cancelled cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import (ENV, EXIT_STOPPED, SCRIPTS, bisector, executable, faulty, journal, one_error_line,
                           report, tmpfs)


def gone(pid: int) -> bool:
    """The process has ended (a zombie nobody reaped yet counts as ended)."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return True


# ------------------------------------------------------------------------------------- file-system errors
def test_a_file_where_a_directory_should_be_is_one_line_and_exit_2(tmp_path, chain_model):
    # Tests run as root here, where chmod 0o500 blocks nothing: a regular file where the session
    # records activations gives ENOTDIR for everybody.
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "activations").write_text("in the way\n")
    proc = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-q", "--check", *faulty(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "s/activations" in line and "Not a directory" in line
    assert f"bisector resume {tmp_path / 's'}" in proc.stderr  # absolute: it works from anywhere


@pytest.mark.parametrize("command", [["reduce"], ["precision", "--precision", "fp16"]])
def test_an_output_path_that_cannot_be_written_is_refused_before_the_search(tmp_path, chain_model, command):
    (tmp_path / "file.txt").write_text("not a directory\n")
    proc = bisector(*command, "m.onnx", "-o", "file.txt/red.onnx", "--session", "s", "-q", "--check", *faulty(),
                    cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "file.txt is not a directory" in one_error_line(proc.stderr)
    assert not (tmp_path / "s" / "journal.jsonl").exists()  # no check ran


@pytest.fixture
def few_inodes(tmp_path):
    """A tmpfs that holds at most 200 files and directories (root and CAP_SYS_ADMIN, else skipped)."""
    with tmpfs(tmp_path / "few", "size=8m,nr_inodes=200") as mnt:
        yield mnt


@pytest.mark.slow
def test_no_space_mid_session_is_one_line_and_the_journal_stays_whole(tmp_path, chain_model, few_inodes):
    # The second check uses up the disk's files but two: a later iteration's directory and model
    # fit, its inputs.json does not.
    counter, filler, session = tmp_path / "runs", few_inodes / "filler", few_inodes / "s"
    check = executable(tmp_path / "check.py", f"""\
        import os, subprocess, sys
        from pathlib import Path
        counter, filler = Path({str(counter)!r}), Path({str(filler)!r})
        runs = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(runs))
        code = subprocess.call([sys.executable, "-m", "fixtures.faulty_check", *sys.argv[1:]])
        if runs == 2:
            filler.mkdir()
            try:
                for i in range(10**6):
                    (filler / str(i)).touch()
            except OSError:
                (filler / str(i - 1)).unlink()
                (filler / str(i - 2)).unlink()
        sys.exit(code)
        """)
    argv = ["reduce", "m.onnx", "-o", "red.onnx", "--session", str(session), "-q", "--check", str(check),
            *faulty()[3:]]
    proc = bisector(*argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "No space left on device" in one_error_line(proc.stderr)
    assert f"bisector resume {session}" in proc.stderr
    # Every line whole, one per check that ran: the iteration that failed never ran its check.
    assert len(journal(session)) == int(counter.read_text()) >= 2, proc.stderr

    for f in filler.iterdir():
        f.unlink()
    resumed = bisector("resume", str(session), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert report(session)["result"]["node_names"] == ["relu4"]
    assert int(counter.read_text()) == len(journal(session))  # the failed iteration never ran its check


def test_ctrl_c_while_the_model_is_prepared_says_how_to_resume(tmp_path, chain_model):
    fifo = tmp_path / "inputs.fifo"  # reading --load-inputs blocks here: bisector is preparing
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "bisector", "reduce", "m.onnx", "-o", "red.onnx", "--session",
                             "s", "-q", "--load-inputs", str(fifo), "--check", *faulty()], cwd=tmp_path, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "s" / "session.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("Ctrl-C while preparing did not stop bisector")
    assert proc.returncode == EXIT_STOPPED, err
    assert "Traceback" not in err
    stopped = [ln for ln in (out + err).splitlines() if ln.startswith("stopped:")]
    assert stopped == [f"stopped: interrupted; continue with: bisector resume {tmp_path / 's'}"], out + err


# ------------------------------------------------------------------------------------- kill -9
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_check_does_not_outlive_bisector_killed_with_9(tmp_path, chain_model, jobs):
    piddir, sleep = tmp_path / "pids", tmp_path / "sleep.txt"  # slow_faulty.py leaves its pid, then sleeps
    sleep.write_text("0")
    proc = subprocess.Popen([sys.executable, "-m", "bisector", "reduce", "m.onnx", "-o", "red.onnx", "--session", "s",
                             "-q", "-j", str(jobs), "--check", sys.executable, str(SCRIPTS / "slow_faulty.py"),
                             str(piddir), str(sleep), *faulty()[3:]], cwd=tmp_path, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not piddir.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        sleep.write_text("60")  # the first check (the full model) is quick; those after it sleep
        while len(list(piddir.glob("*"))) < 1 + jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        checks = [int(p.name) for p in piddir.glob("*") if not gone(int(p.name))]
        assert len(checks) == jobs, "the checks did not start"
        for pid in checks:  # ours: the command line names our directory
            assert str(piddir) in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while not all(gone(pid) for pid in checks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(gone(pid) for pid in checks), "a check outlived bisector"
    finally:
        proc.kill()
        for f in piddir.glob("*"):
            try:
                os.kill(int(f.name), signal.SIGKILL)
            except OSError:
                pass


# ------------------------------------------------------------------------------------- counts after resume
def test_a_resumed_session_reports_the_counts_of_an_uninterrupted_one(tmp_path, chain_model):
    ref = bisector("reduce", "m.onnx", "-o", "ref.onnx", "--session", "ref", "-q", "--check", *faulty(), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    expected = report(tmp_path / "ref")

    counter = tmp_path / "runs"
    check = executable(tmp_path / "check.py", f"""\
        import os, signal, subprocess, sys, time
        from pathlib import Path
        counter = Path({str(counter)!r})
        runs = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(runs))
        if runs == 4:  # Ctrl-C to bisector while the fourth check runs
            os.kill(os.getppid(), signal.SIGINT)
            time.sleep(30)
        sys.exit(subprocess.call([sys.executable, "-m", "fixtures.faulty_check", *sys.argv[1:]]))
        """)
    first = bisector("reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-q", "--check", str(check),
                     *faulty()[3:], cwd=tmp_path)
    assert first.returncode == EXIT_STOPPED, first.stderr
    assert len(journal(tmp_path / "s")) == 3
    resumed = bisector("resume", "s", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    r = report(tmp_path / "s")
    assert r["result"]["node_names"] == expected["result"]["node_names"]
    assert r["checks"] == expected["checks"] == len(journal(tmp_path / "s"))
    assert r["verdicts"] == expected["verdicts"]
    assert r["checks_this_run"] == expected["checks"] - 3 and r["cached"] >= 3
    md = (tmp_path / "s" / "result" / "report.md").read_text()
    assert f"in {expected['checks']} checks" in md  # the answer
    assert f"checks run: {expected['checks']} in the session, {expected['checks'] - 3} in its last run" in md
    v = expected["verdicts"]
    assert f"good {v['good']}, bad {v['bad']}, skip {v['skip']}" in md


def test_one_of_names_every_choice():
    from bisector.errors import UserError, one_of

    one_of("--mode", "auto", ("auto", "bisect", "linear"))
    with pytest.raises(UserError, match=r"^--mode 'x': choose auto, bisect or linear$"):
        one_of("--mode", "x", ("auto", "bisect", "linear"))
    with pytest.raises(UserError, match=r"choose obey or prefer"):
        one_of("--precision-constraints", "always", ("obey", "prefer"))
