"""The daemon end to end: a real SQLite file, real daemon processes (``bisector daemon start``),
real bisector jobs on fixture models. Every test's daemon is stopped (kill -9 if need be) at its
end."""

from __future__ import annotations

import json
import multiprocessing
import os
import pty
import select
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest

from fixtures.flaky_builder import tactic_hash
from fixtures.models import make_diamond, make_transformer
from tests.helpers import ENV, ROOT, executable, faulty, journal, one_error_line

CHAIN_ANSWER = ["relu4"]  # what `bisector reduce` run directly answers (tests/cli/test_sessions.py)
DIAMOND_ANSWER = ["branch_b_tanh"]  # the same command run directly on the diamond, scale:branch_b_tanh
# The build hunt of tests/test_build_hunt.py (seed = build number, gemm_split_k planted in fc1_matmul):
# run directly, builds 0, 1 and 5 are bad, the planted tactic ranks first, and with --confidence 0.9 it is sure
# after 16 builds.
BUILD_CMD = (f"{sys.executable} {ROOT / 'fixtures' / 'flaky_builder.py'} {{model}} {{engine}} {{tactics}} "
             "--seed {build} --flaky-layer fc1_matmul --flaky-tactic gemm_split_k --fail-prob 1.0")


class Daemon:
    """``bisector`` commands with ``BISECTOR_HOME`` set to one state directory."""

    def __init__(self, home: Path, cwd: Path):
        self.home, self.cwd = home, cwd
        self.env = {**ENV, "BISECTOR_HOME": str(home)}

    def run(self, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bisector", *args], cwd=self.cwd, env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
                              **kw)

    def start(self, *args: str) -> int:
        proc = self.run("daemon", "start", *args)
        assert proc.returncode == 0, proc.stderr
        return self.pid()

    def pid(self) -> int | None:
        from bisector.daemon.service import lock_holder

        return lock_holder(self.home)

    def submit(self, *argv: str) -> int:
        proc = self.run("submit", *argv)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.strip())

    def jobs(self, cli: bool = False) -> dict[int, dict]:
        """Every job as ``bisector jobs --json`` gives it (read in this process unless ``cli``)."""
        if cli:
            proc = self.run("jobs", "--json")
            assert proc.returncode == 0, proc.stderr
            return {j["id"]: j for j in json.loads(proc.stdout)}
        from bisector.cli.daemon_view import job_rows
        from bisector.daemon.store import Store

        if not (self.home / "jobs.db").exists():
            return {}
        store = Store(self.home)
        try:
            return {j["id"]: j for j in json.loads(json.dumps(job_rows(self.home, store.jobs()), default=str))}
        finally:
            store.close()

    def wait(self, until, timeout: float = 90) -> dict[int, dict]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if until(jobs):
                return jobs
            assert time.monotonic() < deadline, jobs
            time.sleep(0.2)

    def kill(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.pid() and time.monotonic() < deadline:
                time.sleep(0.02)


@pytest.fixture
def daemon(tmp_path, chain_model):
    d = Daemon(tmp_path / "home", tmp_path)
    yield d
    if d.pid():
        d.run("daemon", "stop", timeout=30)
    d.kill()


def reduce_argv(model: str, fault: str, out: str, check: list[str] | None = None) -> list[str]:
    check = check or faulty(fault)
    return ["--", "reduce", model, "-o", out, "-q", "--check", *check]


def _done(ids):
    return lambda jobs: all(jobs[i]["state"] in ("done", "failed", "cancelled") for i in ids)


def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


# ------------------------------------------------------------------------------------- crash safety
@pytest.mark.slow
def test_kill_9_mid_run_then_start_again_two_reduces_and_a_build_hunt_end_done_with_direct_answers(daemon, tmp_path):
    onnx.save(make_diamond(), str(tmp_path / "diamond.onnx"))
    onnx.save(make_transformer(), str(tmp_path / "t.onnx"))
    daemon.start("--slots", "3")
    ids = [daemon.submit("--name", "chain", *reduce_argv("m.onnx", "scale:relu4", "chain_red.onnx")),
           daemon.submit(*reduce_argv("diamond.onnx", "scale:branch_b_tanh", "diamond_red.onnx")),
           daemon.submit("--", "build", "t.onnx", "--build-cmd", BUILD_CMD, "--until", "40", "--confidence", "0.9",
                         "-q", "--check",
                         sys.executable, str(ROOT / "fixtures" / "engine_check.py"), "polygraphy_debug.engine",
                         "--reference", str(tmp_path / "t.onnx"))]
    jobs = daemon.wait(lambda j: len(journal(Path(j[ids[0]]["session"]), torn_ok=True)) >= 2, timeout=60)
    from bisector.daemon.store import Store

    store = Store(daemon.home)
    interrupted = [i for i in ids if store.get(i).state == "running"]
    workers = [store.get(i).pgid for i in interrupted]
    begun = [i for i in interrupted if journal(Path(store.get(i).session), torn_ok=True)]  # else it starts anew
    store.close()
    daemon.kill()  # kill -9 mid-run
    assert workers and daemon.jobs()[ids[0]]["state"] == "running"  # as the dead daemon left it
    daemon.env["COLUMNS"] = "400"
    listing = daemon.run("jobs").stdout  # ... but the listing says the daemon is gone
    del daemon.env["COLUMNS"]
    assert "interrupted (daemon not running)" in listing and " running " not in listing, listing
    deadline = time.monotonic() + 5
    while any(_group_alive(g) for g in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_group_alive(g) for g in workers)  # the jobs died with their daemon

    daemon.start("--slots", "3")
    daemon.wait(_done(ids))
    jobs = daemon.jobs(cli=True)
    assert [jobs[i]["state"] for i in ids] == ["done"] * 3, jobs
    assert {"id", "state", "session", "command", "answer", "progress", "elapsed_s"} <= set(jobs[ids[0]])
    assert jobs[ids[0]]["answer"]["node_names"] == CHAIN_ANSWER
    assert jobs[ids[1]]["answer"]["node_names"] == DIAMOND_ANSWER
    hunt = jobs[ids[2]]["answer"]
    # a hunt that ends not sure is inconclusive (a failed job): this one stops once sure
    assert hunt["builds"] == 16 and hunt["bad_builds"][:3] == [0, 1, 5]
    assert hunt["reason"].endswith("reached confidence 0.9") and hunt["verdict"].startswith("Sure:")
    assert (hunt["suspects"][0]["layer"], hunt["suspects"][0]["tactic"]) == ("fc1_matmul",
                                                                            tactic_hash("MatMul", "gemm_split_k"))
    assert ids[0] in begun
    for i in begun:
        log = daemon.run("logs", str(i)).stdout
        assert "resuming:" in log, log  # the session went on from its journal
    for i in ids[:2]:
        fps = [e["fingerprint"] for e in journal(Path(jobs[i]["session"]))]
        assert len(fps) == len(set(fps))  # no candidate journaled twice
    assert onnx.load(str(tmp_path / "chain_red.onnx")).graph.node[0].name == "relu4"
    report = daemon.run("report", str(ids[1]))
    assert report.returncode == 0 and "branch_b_tanh" in report.stdout


# ------------------------------------------------------------------------------------- the queue
def _add_many(home: str, n: int) -> list[int]:
    os.environ["BISECTOR_HOME"] = home
    from bisector.daemon.store import Store

    store = Store(Path(home))
    ids = [store.add(["repeat", "--until", "1", "--check", "true"], 3, "/", name=f"p{os.getpid()}-{k}")
           for k in range(n)]
    store.close()
    return ids


def test_many_concurrent_submits_do_not_corrupt_the_queue(daemon, tmp_path):
    daemon.home.mkdir(mode=0o700)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool, ThreadPoolExecutor(3) as threads:
        cli = [threads.submit(daemon.submit, "--", "repeat", "--until", "1", "--check", "true") for _ in range(3)]
        batches = pool.starmap(_add_many, [(str(daemon.home), 40)] * 4)
        cli_ids = [f.result() for f in cli]
    ids = [i for batch in batches for i in batch] + cli_ids
    assert len(ids) == len(set(ids)) == 163
    jobs = daemon.jobs()
    assert sorted(jobs) == sorted(ids) and {j["state"] for j in jobs.values()} == {"queued"}
    import sqlite3

    db = sqlite3.connect(daemon.home / "jobs.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (daemon.home.stat().st_mode & 0o777) == 0o700


def test_a_bad_command_line_is_refused_at_submit_with_exit_2(daemon):
    for argv in (["--", "reduce", "m.onnx", "--no-such-flag", "--check", "true"],
                 ["--", "reduce", "no-such-model.onnx", "-o", "r.onnx", "--check", "true"],
                 ["--", "compare", "m.onnx"],
                 ["--", "repeat", "--until", "sometimes", "--check", "true"],
                 []):
        proc = daemon.run("submit", *argv)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        one_error_line(proc.stderr)
    assert daemon.jobs(cli=True) == {}


def test_a_state_directory_that_is_a_file_or_cannot_be_made_is_one_error_line(daemon, tmp_path):
    (tmp_path / "file").write_text("")
    for home in (tmp_path / "file", tmp_path / "file" / "sub", Path("/proc/no-such-bisector-home")):
        daemon.env["BISECTOR_HOME"] = str(home)
        for args in (["jobs"], ["daemon", "status"]):
            proc = daemon.run(*args)
            assert proc.returncode == 2, (home, args, proc.stderr)
            assert str(home) in one_error_line(proc.stderr)


# ------------------------------------------------------------------------------------- cancel
def test_cancel_a_queued_and_a_running_job_its_checks_die_too(daemon, tmp_path):
    hang = executable(tmp_path / "hang.py", """\
        import subprocess, sys
        subprocess.call(["sleep", "60"])  # a workload in the check's process group
        """)
    daemon.start("--slots", "1")
    running = daemon.submit("--", "repeat", "--until", "2", "-q", "--check", str(hang))
    queued = daemon.submit("--", "repeat", "--until", "2", "-q", "--check", "true")
    jobs = daemon.wait(lambda j: j[running]["state"] == "running" and
                       list(Path(j[running]["session"]).glob("iterations/*/check.pgid")))
    record = next(Path(jobs[running]["session"]).glob("iterations/*/check.pgid"))
    pgid = json.loads(record.read_text())["pgid"]
    assert _group_alive(pgid)

    proc = daemon.run("cancel", str(queued))
    assert proc.returncode == 0 and "cancelled" in proc.stdout
    proc = daemon.run("cancel", str(running))
    assert proc.returncode == 0 and "cancelled" in proc.stdout, proc.stderr
    assert not _group_alive(pgid)  # the check and its sleep are gone
    jobs = daemon.jobs()
    assert (jobs[running]["state"], jobs[queued]["state"]) == ("cancelled", "cancelled")
    assert daemon.run("cancel", str(queued)).returncode == 2  # nothing left to cancel
    assert daemon.run("clean").returncode == 0 and daemon.jobs() == {}


# ------------------------------------------------------------------------------------- watch, notify
def test_watch_through_a_terminal_shows_progress_and_the_end(daemon, tmp_path):
    summary = tmp_path / "notified.json"
    notify = f"{sys.executable} -c \"import sys; open('{summary}', 'w').write(sys.stdin.read())\""
    daemon.start("--slots", "1", "--notify-cmd", notify)
    job = daemon.submit("--name", "w", "--", "repeat", "--until", "4", "--check", sys.executable, "-c",
                        "import time; time.sleep(0.3)")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bisector", "watch", str(job)], cwd=tmp_path,
                            env={**daemon.env, "COLUMNS": "120", "TERM": "xterm"},
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal's other end closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0
    text = out.decode(errors="replace")
    assert f"job {job}: bisector repeat" in text and "checks" in text  # the live panel
    assert f"job {job} done" in text
    deadline = time.monotonic() + 10
    while not summary.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    doc = json.loads(summary.read_text())
    assert (doc["id"], doc["state"], doc["name"], doc["answer"]["runs"]) == (job, "done", "w", 4)


def test_daemon_status_json_and_one_daemon_per_state_dir(daemon):
    pid = daemon.start("--slots", "2")
    second = daemon.run("daemon", "start")
    assert second.returncode == 2 and "already runs" in one_error_line(second.stderr)
    status = json.loads(daemon.run("daemon", "status", "--json").stdout)
    assert status == {"running": True, "pid": pid, "state_dir": str(daemon.home), "gpus": [], "slots": 2,
                      "jobs": {"queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0},
                      "executor": "local", "ray_address": None}
    assert daemon.run("daemon", "stop").returncode == 0
    assert json.loads(daemon.run("daemon", "status", "--json").stdout)["running"] is False


# ------------------------------------------------------------------------------------- GPUs, failures
def test_gpu_slots_reach_the_checks_and_a_crashing_job_fails_with_its_reason(daemon, tmp_path):
    daemon.start("--gpus", "3,5")
    seen = tmp_path / "seen"
    record = ["-q", "--check", sys.executable, "-c",
              f"import os; open({str(seen)!r}, 'a').write(os.environ['CUDA_VISIBLE_DEVICES'] + '\\n')"]
    crash = daemon.submit("--", "reduce", "m.onnx", "-o", "x.onnx", "-q", "--check", sys.executable, "-c",
                          "import os; os.abort()")
    two = daemon.submit("--gpus", "2", "--", "repeat", "--until", "1", *record)
    too_many = daemon.submit("--gpus", "3", "--", "repeat", "--until", "1", *record)
    after = daemon.submit("--after", str(crash), "--", "repeat", "--until", "1", *record)
    jobs = daemon.wait(_done([crash, two, too_many, after]))
    assert jobs[crash]["state"] == "failed" and jobs[crash]["reason"].startswith("inconclusive: no candidate passed")
    assert (jobs[two]["state"], seen.read_text()) == ("done", "3,5\n")  # the other jobs go on
    assert jobs[too_many]["state"] == "failed" and "asks for 3 GPU(s)" in jobs[too_many]["reason"]
    assert jobs[after]["state"] == "failed" and f"job {crash}" in jobs[after]["reason"]


def test_daemon_stop_queues_its_running_job_again_and_the_next_start_resumes_it(daemon, tmp_path):
    daemon.start("--slots", "1")
    job = daemon.submit("--", "repeat", "--until", "6", "-q", "--check", sys.executable, "-c",
                        "import time; time.sleep(0.3)")
    session = Path(daemon.jobs()[job]["session"])
    daemon.wait(lambda j: len(journal(session, torn_ok=True)) >= 2)
    assert daemon.run("daemon", "stop").returncode == 0
    stopped = daemon.jobs()[job]
    assert stopped["state"] == "queued" and "resumes at its next start" in stopped["reason"]
    known = len(journal(session))
    daemon.start("--slots", "1")
    jobs = daemon.wait(_done([job]))
    assert jobs[job]["state"] == "done" and jobs[job]["answer"]["runs"] == 6
    assert len(journal(session)) == 6 and known >= 2
    assert "resuming:" in daemon.run("logs", str(job)).stdout


def test_a_job_whose_directory_is_gone_fails_and_the_next_one_runs(daemon, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run([sys.executable, "-m", "bisector", "submit", "--", "repeat", "--until", "1", "--check",
                           "true"], cwd=gone, env=daemon.env, capture_output=True, text=True, timeout=60, check=False)
    first = int(proc.stdout)
    second = daemon.submit("--", "repeat", "--until", "1", "--check", "true")
    gone.rmdir()
    daemon.start("--slots", "1")
    jobs = daemon.wait(_done([first, second]))
    assert jobs[first]["state"] == "failed" and f"cannot start in {gone}" in jobs[first]["reason"]
    assert jobs[second]["state"] == "done"
    nothing = daemon.run("report", str(first))  # it ended: its report will never come
    assert nothing.returncode == 2 and "has no report" in one_error_line(nothing.stderr) and "yet" not in nothing.stderr


def test_another_users_jobs_and_state_dir_are_out_of_reach(daemon, tmp_path):
    job = daemon.submit("--", "repeat", "--until", "1", "--check", "true")
    import sqlite3

    db = sqlite3.connect(daemon.home / "jobs.db")
    with db:
        db.execute("UPDATE jobs SET uid = ? WHERE id = ?", (os.getuid() + 4242, job))  # as if someone else's
    db.close()
    assert daemon.jobs(cli=True) == {}
    proc = daemon.run("cancel", str(job))
    assert proc.returncode == 2 and f"no job {job}" in one_error_line(proc.stderr)
    if os.geteuid() == 0:  # only root can give the state directory to another user
        os.chown(daemon.home, os.getuid() + 4242, -1)
        proc = daemon.run("jobs")
        assert proc.returncode == 2 and "belongs to uid" in one_error_line(proc.stderr)
        os.chown(daemon.home, os.getuid(), -1)


# ------------------------------------------------------------------------------------- on Ray
@pytest.mark.ray
def test_a_daemon_on_ray_sends_its_jobs_checks_to_the_cluster_and_keeps_the_queue(ray, daemon, tmp_path):
    address = ray.get_runtime_context().gcs_address
    daemon.env["RAY_AUTH_MODE"] = "disabled"
    assert "--gpus hands out this machine's GPUs" in one_error_line(
        daemon.run("daemon", "start", "--executor", "ray", "--gpus", "0").stderr)
    gone = daemon.run("daemon", "start", "--executor", "ray", "--ray-address", "127.0.0.1:9")
    assert gone.returncode == 2 and "--ray-address 127.0.0.1:9: no Ray cluster answers" in one_error_line(gone.stderr)
    daemon.start("--executor", "ray", "--ray-address", address, "--slots", "2")
    status = json.loads(daemon.run("daemon", "status", "--json").stdout)
    assert (status["executor"], status["ray_address"]) == ("ray", address)
    where = tmp_path / "where"
    record = (f"import os, runpy, sys; open({str(where)!r}, 'a').write(os.environ.get('RAY_RAYLET_PID', '-') + "
              "'\\n'); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    check = [sys.executable, "-c", record, str(ROOT / "fixtures" / "faulty_check.py"), "polygraphy_debug.onnx",
             "--fault", "scale:relu4", "--load-inputs", "inputs.json"]
    job = daemon.submit("--", "reduce", "m.onnx", "-o", "red.onnx", "-q", "-j", "2", "--check", *check)
    local = daemon.submit("--", "repeat", "--until", "1", "-q", "--executor", "local", "--check", sys.executable, "-c",
                          f"import os; open({str(tmp_path / 'local')!r}, 'w').write(os.environ.get('RAY_RAYLET_PID', '-'))")
    lost = daemon.submit("--", "repeat", "--until", "1", "-q", "--check", sys.executable, "-c",
                         "import os, signal; os.kill(os.getppid(), signal.SIGKILL)")  # its worker dies every try
    jobs = daemon.wait(_done([job, local, lost]), timeout=240)
    assert jobs[lost]["state"] == "failed" and "check was lost on the Ray cluster (WorkerCrashedError" in jobs[lost]["reason"]
    from bisector.daemon.store import Store

    store = Store(daemon.home)
    assert store.get(lost).runs == 3  # queued again twice, then failed
    store.close()
    assert jobs[job]["state"] == "done" and jobs[job]["answer"]["node_names"] == CHAIN_ANSWER
    spec = json.loads((Path(jobs[job]["session"]) / "session.json").read_text())["spec"]["run"]
    assert (spec["executor"], spec["ray_address"]) == ("ray", address)
    pids = set(where.read_text().split())
    assert pids and "-" not in pids  # every check ran in a Ray worker
    assert jobs[local]["state"] == "done" and (tmp_path / "local").read_text() == "-"  # a job's own executor wins


def test_a_daemon_whose_ray_cluster_does_not_answer_keeps_its_queue_waiting(tmp_path):
    from bisector.daemon.service import Config, Daemon
    from bisector.daemon.store import Store

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = Store(home)
    jobs = [store.add(["repeat", "--until", "1", "--check", "true"], 3, str(tmp_path)) for _ in range(2)]
    daemon = Daemon(home, Config(executor="ray", ray_address="127.0.0.1:9", slots=2))
    daemon.store = store
    daemon.start_queued()  # nothing answers at the address: no job is started to fail
    for job in jobs:
        waiting = store.get(job)
        assert waiting.state == "queued" and waiting.runs == 0 and not daemon.running
        assert waiting.reason.startswith("waiting for the Ray cluster: --ray-address 127.0.0.1:9: no Ray cluster")
    store.close()
