"""What a check leaves running: its process group recorded in ``check.pgid``, ended by the next run
after bisector was killed with -9 (``process_group.kill_leftovers``), never confused with another
process that reuses its numbers, and orphans reaped by bisector as their subreaper. Real processes
throughout (Linux: the records and the subreaper need /proc and prctl)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bisector.checks import process_group
from bisector.checks.base import Artifact, Verdict
from bisector.checks.command import CommandCheck
from bisector.checks.process_group import RECORD_NAME, GroupRecord, kill_leftovers, write_record
from tests.helpers import ENV, bisector, faulty, journal, report

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process records need Linux /proc")

PY = sys.executable
SLEEP_S = 120  # how long a left-behind workload would hold on (the GPU, in real life)


def start_time(pid: int) -> int | None:
    """``/proc/<pid>/stat`` field 22, or None once the process is gone (a zombie counts as gone:
    this container's init never reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def running(pid: int, start: int) -> bool:
    return start_time(pid) == start


def wait_for(predicate, within_s: float = 60.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def end(pid: int) -> None:
    """Clean-up: a test that fails must not leave its sleeper behind."""
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def workload_code(pidfile: Path) -> str:
    """Python that writes its pid to ``pidfile`` (atomically) and sleeps: the workload a wrapper runs."""
    return (f"import os, time; open({str(pidfile)!r} + '.tmp', 'w').write(str(os.getpid())); "
            f"os.replace({str(pidfile)!r} + '.tmp', {str(pidfile)!r}); time.sleep({SLEEP_S})")


def wrapper(pidfile: Path) -> list[str]:
    """``sh -c 'python -c CODE; true'``: sh runs the workload as its child (the ``; true`` keeps sh
    from exec'ing it), so the workload is a grandchild of whoever starts sh."""
    return ["sh", "-c", '"$1" -c "$0"; true', workload_code(pidfile), PY]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "iterations" / "0003"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def left_group(workdir: Path):
    """A check's group as ``kill -9`` of bisector leaves it: recorded (by this process), its wrapper
    (the leader) killed as PR_SET_PDEATHSIG kills it, its workload still running.
    Yields ``(leader_pid, workload_pid, workload_start)``."""
    pidfile = workdir / "workload.pid"
    leader = subprocess.Popen(wrapper(pidfile), cwd=workdir, start_new_session=True)
    workload = None
    try:
        assert write_record(workdir, leader.pid) == workdir / RECORD_NAME
        assert wait_for(pidfile.exists), "the workload did not start"
        workload = int(pidfile.read_text())
        leader.kill()
        leader.wait()
        start = start_time(workload)
        assert start is not None
        yield leader.pid, workload, start
    finally:
        leader.kill()
        leader.wait()
        if workload is not None:
            end(workload)


def dead_process() -> tuple[int, int]:
    """The pid and start time of a process that has ended (a bisector killed with -9)."""
    proc = subprocess.Popen(["sleep", "30"])
    start = start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


def rewrite(workdir: Path, **changes) -> None:
    path = workdir / RECORD_NAME
    record = GroupRecord.read(path)
    path.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(record, **changes))))


def owned_by_a_dead_bisector(workdir: Path) -> None:
    pid, start = dead_process()
    rewrite(workdir, owner_pid=pid, owner_start=start)


# -- the record ---------------------------------------------------------------------------------------
def test_a_running_check_is_recorded_and_forgotten_when_its_group_is_gone(workdir):
    go = workdir / "go"
    code = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
    check = CommandCheck(["sh", "-c", '"$1" -c "$0"; exit 3', code, PY])
    artifact = Artifact(workdir=workdir, path=workdir / "m.onnx", iteration=3, session_dir=workdir.parent.parent)
    results = []
    runner = threading.Thread(target=lambda: results.append(check.run(artifact)))
    runner.start()
    try:
        assert wait_for((workdir / RECORD_NAME).exists, 10)
        record = GroupRecord.read(workdir / RECORD_NAME)
        assert record.pgid == record.leader_pid and record.leader_start == start_time(record.leader_pid)
        assert (record.owner_pid, record.owner_start) == (os.getpid(), start_time(os.getpid()))
        assert Path(f"/proc/{record.leader_pid}/cmdline").read_bytes().startswith(b"sh\0")
    finally:
        go.touch()
        runner.join(30)
    assert results and results[0].exit_code == 3 and results[0].verdict is Verdict.BAD
    assert sorted(p.name for p in workdir.iterdir()) == ["check.log", "go"]  # the record is gone


def test_kill_leftovers_ends_the_group_of_a_dead_bisector(workdir, left_group):
    _, workload, start = left_group
    owned_by_a_dead_bisector(workdir)
    assert running(workload, start)
    assert kill_leftovers(workdir.parent.parent) == 1
    assert not running(workload, start)
    assert not (workdir / RECORD_NAME).exists()
    assert kill_leftovers(workdir.parent.parent) == 0  # nothing left to do


def test_a_live_bisectors_groups_are_left_alone(workdir, left_group):
    _, workload, start = left_group  # recorded by this process, which runs
    assert kill_leftovers(workdir.parent.parent) == 0
    time.sleep(0.2)
    assert running(workload, start)
    assert (workdir / RECORD_NAME).exists()


@pytest.mark.parametrize("leader_alive", [True, False])
def test_a_record_whose_leader_start_time_does_not_match_is_never_acted_on(tmp_path, workdir, leader_alive):
    """The numbers of a record are reused: its leader's pid names a later process (leader alive,
    another start time), or the processes in a group of that number started before the recorded
    leader (so they cannot be what it started). Neither is signalled."""
    pidfile = workdir / "workload.pid"
    leader = subprocess.Popen(wrapper(pidfile), cwd=workdir, start_new_session=True)
    try:
        write_record(workdir, leader.pid)
        assert wait_for(pidfile.exists)
        workload = int(pidfile.read_text())
        workload_start, leader_start = start_time(workload), start_time(leader.pid)
        if leader_alive:
            rewrite(workdir, leader_start=leader_start - 1)
        else:
            leader.kill()
            leader.wait()
            rewrite(workdir, leader_start=workload_start + 1)
        owned_by_a_dead_bisector(workdir)
        assert kill_leftovers(tmp_path) == 0
        time.sleep(0.2)
        assert running(workload, workload_start)
        if leader_alive:
            assert running(leader.pid, leader_start)
    finally:
        leader.kill()
        leader.wait()
        if pidfile.exists():
            end(int(pidfile.read_text()))


def test_a_record_from_another_boot_is_only_removed(workdir, left_group):
    _, workload, start = left_group
    owned_by_a_dead_bisector(workdir)
    rewrite(workdir, boot_id="00000000-0000-0000-0000-000000000000")
    assert kill_leftovers(workdir.parent.parent) == 0
    assert running(workload, start)
    assert not (workdir / RECORD_NAME).exists()


# -- the subreaper ------------------------------------------------------------------------------------
def test_orphans_of_checks_are_adopted_and_reaped_and_every_exit_code_still_reaches_its_check(tmp_path,
                                                                                             monkeypatch):
    """Four checks at once, each a wrapper that exits (with its own code) before its workload. The
    workloads are re-parented to this process (the subreaper), not to init: each notes its parent
    when its group's SIGTERM comes. They are killed and reaped (no zombie left), and reaping them
    never takes a wrapper's exit status from the ``Popen`` that waits for it."""
    monkeypatch.setattr(process_group, "KILL_GRACE_S", 0.5)
    results, pids = {}, {}

    def one(k: int) -> None:
        workdir = tmp_path / "iterations" / f"{k:04d}"
        workdir.mkdir(parents=True)
        pidfile, ppid = workdir / "workload.pid", workdir / "ppid"
        code = (f"import os, signal, time\n"
                f"def noted(*_):\n    open({str(ppid)!r}, 'w').write(str(os.getppid())); os._exit(0)\n"
                f"signal.signal(signal.SIGTERM, noted)\n" + workload_code(pidfile))
        argv = ["sh", "-c", f'"$1" -c "$0" & while [ ! -e {pidfile} ]; do sleep 0.02; done; exit {k}', code, PY]
        artifact = Artifact(workdir=workdir, path=workdir / "m.onnx", iteration=k, session_dir=tmp_path)
        results[k] = CommandCheck(argv).run(artifact)
        pids[k] = (int(pidfile.read_text()), int(ppid.read_text()) if ppid.exists() else None)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert {k: r.exit_code for k, r in results.items()} == {0: 0, 1: 1, 2: 2, 3: 3}
        assert results[0].verdict is Verdict.GOOD and results[3].verdict is Verdict.BAD
        assert {parent for _, parent in pids.values()} == {os.getpid()}  # adopted here, not by init
        for pid, _ in pids.values():  # no /proc entry at all: not even a zombie
            assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5), f"workload {pid} left a zombie"
    finally:
        for pid, _ in pids.values():
            end(pid)


# -- end to end: kill -9, then resume ----------------------------------------------------------------
def test_a_wrapped_check_left_by_kill_9_is_ended_before_the_resumed_search_goes_on(tmp_path, chain_model):
    """``./check.sh`` runs its Python workload as a child. ``kill -9`` of bisector kills the wrapper
    (PR_SET_PDEATHSIG) but not the workload; ``bisector resume`` ends it before its first check,
    which looks whether the workload still runs."""
    state = tmp_path / "state"
    state.mkdir()
    workload = tmp_path / "workload.py"
    workload.write_text(textwrap.dedent(f"""\
        import os, sys, time
        from pathlib import Path
        state = Path({str(state)!r})
        runs = int((state / "runs").read_text()) + 1 if (state / "runs").exists() else 1
        (state / "runs").write_text(str(runs))
        held = state / "held"
        if runs == 2:  # the second check holds on, as a job on the GPU would
            stat = Path("/proc/self/stat").read_text()
            (state / "tmp").write_text(f"{{os.getpid()}} {{stat[stat.rfind(')') + 2:].split()[19]}}")
            os.replace(state / "tmp", held)
            time.sleep({SLEEP_S})
        elif held.exists() and not (state / "seen").exists():  # the first check after the kill
            pid, start = held.read_text().split()
            try:
                stat = Path(f"/proc/{{pid}}/stat").read_text()
                fields = stat[stat.rfind(")") + 2:].split()
                alive = fields[0] not in ("Z", "X") and fields[19] == start
            except OSError:
                alive = False
            (state / "seen").write_text("alive" if alive else "gone")
        os.execv(sys.executable, [sys.executable, "-m", "fixtures.faulty_check", *sys.argv[1:]])
        """))
    check = tmp_path / "check.sh"
    check.write_text(f'#!/bin/sh\n"{PY}" "{workload}" "$@"\nexit $?\n')
    check.chmod(0o755)

    argv = [PY, "-m", "bisector", "reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-q",
            "--check", "./check.sh", *faulty()[3:]]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pid = None
    try:
        assert wait_for((state / "held").exists), "the second check did not start"
        pid, start = map(int, (state / "held").read_text().split())
        assert running(pid, start)
        proc.kill()
        proc.wait()
        time.sleep(0.5)
        assert running(pid, start), "the workload died with bisector: nothing left to test"  # the bug
        recorded = list((tmp_path / "s").glob(f"iterations/*/{RECORD_NAME}"))

        resumed = bisector("resume", "s", "--log-file", "resume.log", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert (state / "seen").read_text() == "gone"  # ended before the resumed search checked anything
        assert len(recorded) == 1, "the running check was not recorded"
        assert not running(pid, start)
        assert report(tmp_path / "s")["result"]["node_names"] == ["relu4"]
        assert not list((tmp_path / "s").glob(f"iterations/*/{RECORD_NAME}*"))
        assert "ended 1 process of the check" in (tmp_path / "resume.log").read_text()
        assert len(journal(tmp_path / "s")) >= 2
    finally:
        proc.kill()
        proc.wait()
        if pid is not None:
            end(pid)
