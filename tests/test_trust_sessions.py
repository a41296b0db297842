"""A session is run by one process at a time, runs no stored command unseen, keeps what it reads
from a session or a log inside the session, fails on damage in one line, and is as private as the
model it comes from. Each test runs bisector as a real process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from fixtures import fixture_path
from tests.helpers import ENV, bisector, faulty, journal, one_error_line, report

SLOW = [sys.executable, "-c", "import sys, time, subprocess; time.sleep(0.4); "
        "sys.exit(subprocess.call(sys.argv[1:]))"]


def reduce_argv(tmp_path: Path, session: str, *extra: str, check=None) -> list[str]:
    return ["reduce", str(fixture_path("chain")), "-o", str(tmp_path / f"{session}.onnx"), "--session",
            str(tmp_path / session), "-q", *extra, "--check", *(check or faulty())]


def test_a_second_process_on_a_running_session_is_refused_and_the_journal_stays_clean(tmp_path):
    argv = [sys.executable, "-m", "bisector", *reduce_argv(tmp_path, "s", check=[*SLOW, *faulty()])]
    first = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.monotonic() + 60
        while not journal(tmp_path / "s", torn_ok=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = bisector("resume", str(tmp_path / "s"), cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        line = one_error_line(second.stderr)
        assert f"is in use by another bisector process (pid {first.pid})" in line
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out
    assert report(tmp_path / "s")["result"]["node_names"] == ["relu4"]
    entries = journal(tmp_path / "s")
    verdicts = {}
    for e in entries:
        assert verdicts.setdefault(e["fingerprint"], e["verdict"]) == e["verdict"]
    assert len({e["iteration"] for e in entries}) == len(entries)  # nobody else wrote iterations
    again = bisector("resume", str(tmp_path / "s"), cwd=tmp_path)  # the lock went with the process
    assert again.returncode == 0, again.stderr


def test_a_session_made_elsewhere_shows_its_command_and_needs_yes(tmp_path):
    done = bisector(*reduce_argv(tmp_path, "s"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shared = tmp_path / "shared"
    shutil.copytree(tmp_path / "s", shared)
    (shared / "lock").unlink()
    meta = json.loads((shared / "session.json").read_text())
    (shared / "session.json").write_text(json.dumps(meta | {"host": "someone-elses-box"}))
    (tmp_path / "s.onnx").unlink()

    refused = bisector("resume", str(shared), cwd=tmp_path)
    assert refused.returncode == 2
    assert "made on someone-elses-box" in one_error_line(refused.stderr) and "--yes" in refused.stderr
    assert "runs: bisector reduce" in refused.stderr and "fixtures.faulty_check" in refused.stderr
    assert journal(shared) == journal(tmp_path / "s")  # nothing ran

    ran = bisector("resume", str(shared), "--yes", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert not (tmp_path / "s.onnx").exists()  # its -o is someone else's path: written in the session
    assert (shared / "result" / "s.onnx").exists()
    own = bisector("resume", str(tmp_path / "s"), cwd=tmp_path)  # one's own session: shown, not asked
    assert own.returncode == 0 and "runs: bisector reduce" in own.stderr


def test_a_replayed_iter_info_and_artifacts_stay_inside_the_session(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("mine\n")
    done = bisector(*reduce_argv(tmp_path, "s", "--iter-info", str(outside / "info.json"), "--artifacts",
                                 str(precious)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert precious.read_text() == "mine\n"  # --artifacts takes only what the check wrote in its directory
    (outside / "info.json").unlink()
    log = tmp_path / "log.txt"
    log.write_text(bisector("log", str(tmp_path / "s"), cwd=tmp_path).stdout)
    replayed = bisector("replay", str(log), "--session", str(tmp_path / "r"), cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert "log " in replayed.stderr and "runs: bisector reduce" in replayed.stderr
    assert not (outside / "info.json").exists()
    assert precious.read_text() == "mine\n"


def test_damaged_session_files_are_one_line_errors_and_are_kept(tmp_path):
    done = bisector(*reduce_argv(tmp_path, "s"), cwd=tmp_path)
    assert done.returncode == 0
    meta_path, journal_path = tmp_path / "s" / "session.json", tmp_path / "s" / "journal.jsonl"
    meta, lines = meta_path.read_text(), journal_path.read_text()
    for damage, says in (("{}", "'command' is None"), ('{"command": "rm -rf /"}', "not a command line")):
        meta_path.write_text(damage)
        proc = bisector("resume", str(tmp_path / "s"), cwd=tmp_path)
        assert proc.returncode == 2 and says in one_error_line(proc.stderr)
    meta_path.write_text(meta)
    first = json.loads(lines.splitlines()[0])
    journal_path.write_text(json.dumps(first | {"iteration": 3.5}) + "\n" + lines)
    proc = bisector("resume", str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 2 and "journal.jsonl:1 is damaged: 'iteration' is 3.5" in one_error_line(proc.stderr)
    assert journal_path.read_text() == json.dumps(first | {"iteration": 3.5}) + "\n" + lines


def test_a_private_model_gives_private_files(tmp_path):
    model = tmp_path / "private.onnx"
    shutil.copy(fixture_path("chain"), model)
    model.chmod(0o600)
    argv = reduce_argv(tmp_path, "s")
    argv[1] = str(model)
    done = bisector(*argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    too_open = [p for p in [tmp_path / "s.onnx", *(tmp_path / "s").rglob("*")]
                if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert too_open == []
