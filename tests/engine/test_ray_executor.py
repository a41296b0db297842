"""The ray executor on a real local Ray cluster (logical GPUs; one cluster for the run, the ``ray``
fixture of tests/conftest.py): a reduce
on Ray gives the answer and the journal verdicts of a local ``-j 1``, each check sees the GPU Ray
gave it, a failing check still fails under Ray's ``SIGCHLD`` pitfall, and cancel kills the check's
process tree, grandchildren included."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bisector import api
from bisector.checks.base import Artifact, Verdict
from bisector.checks.spec import CheckSpec
from bisector.commands.reduce import ReduceCommand, ReduceOptions
from bisector.engine import ray_task
from bisector.engine.executors import RayExecutor, make_executor
from bisector.errors import SessionAborted, UserError
from fixtures import fixture_path

ROOT = Path(__file__).resolve().parents[2]
FAULTY = CheckSpec.command([sys.executable, str(ROOT / "fixtures" / "faulty_check.py"), "polygraphy_debug.onnx",
                            "--fault", "scale:relu4", "--load-inputs", "inputs.json"])
RECORD_GPU = "import os, sys, time; open(sys.argv[1] + '/' + sys.argv[2], 'w').write(" \
             "os.environ.get('CUDA_VISIBLE_DEVICES', '-')); time.sleep(1.5)"
TREE = "import subprocess, sys, time; p = subprocess.Popen(['sleep', '300']); " \
       "open('grandchild.pid', 'w').write(str(p.pid)); time.sleep(300)"


def artifact(tmp_path: Path, n: int) -> Artifact:
    workdir = tmp_path / "iterations" / f"{n:04d}"
    workdir.mkdir(parents=True)
    return Artifact(workdir=workdir, path=workdir / "polygraphy_debug.onnx", iteration=n, session_dir=tmp_path)


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_an_unknown_executor_or_ray_flags_without_ray_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="`executor` 'slurm'"):
        api.RunOptions(executor="slurm").validate()
    with pytest.raises(UserError, match="`ray_address`"):
        api.RunOptions(ray_address="10.0.0.1:6379").validate()
    with pytest.raises(UserError, match="`executor` ray runs command, func, script checks, not an interactive"):
        RayExecutor(CheckSpec().to_json())  # an interactive check: a person, not a task
    command = ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=tmp_path / "r.onnx"))
    for gpus, files, words in ((float("nan"), "auto", "`gpus_per_check` must be a number of GPUs from 0 up, not nan"),
                               (float("inf"), "auto", "not inf"), (-1, "auto", "not -1"),
                               (1.5, "auto", "Ray takes a share of one GPU from 0.0001 up, or a whole number"),
                               (0.00001, "auto", "`gpus_per_check` 1e-05: Ray takes a share"),
                               (0, "bogus", "`ray_files` 'bogus': choose auto, shared or ship")):
        with pytest.raises(UserError, match=words):  # refused before any session directory is made
            api.run(command, FAULTY, api.RunOptions(session=tmp_path / "s", executor="ray", gpus_per_check=gpus,
                                                    ray_files=files))
        assert not (tmp_path / "s").exists()
    for options, words in (({"ray_address": "127.0.0.1"}, "`ray_address` '127.0.0.1': expected HOST:PORT"),
                           ({"devices": ("0", "1")}, "`devices` hands out this machine's GPUs")):
        with pytest.raises(UserError, match=words):
            api.run(command, FAULTY, api.RunOptions(session=tmp_path / "s", executor="ray", **options))
        assert not (tmp_path / "s").exists()


@pytest.mark.ray
def test_a_reduce_on_ray_gives_the_answer_and_verdicts_of_local_j1(ray, tmp_path):
    runs = {}
    for name, options in (("local", {}), ("ray", {"executor": "ray", "jobs": 2})):
        command = ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=tmp_path / f"{name}.onnx"))
        runs[name] = api.run(command, FAULTY, api.RunOptions(session=tmp_path / name, **options))
    local, on_ray = runs["local"], runs["ray"]
    assert on_ray.exit_code == local.exit_code == 0
    assert on_ray.report.result.node_names == local.report.result.node_names == ("relu4",)
    verdicts = {name: {e.fingerprint: e.verdict for e in run.outcome.iterations} for name, run in runs.items()}
    assert set(verdicts["local"]) <= set(verdicts["ray"])  # every check -j 1 asked for, and speculation
    assert all(verdicts["ray"][fp] == v for fp, v in verdicts["local"].items())


@pytest.mark.ray
def test_each_check_sees_the_gpu_ray_gave_it(ray, tmp_path):
    spec = CheckSpec.command([sys.executable, "-c", RECORD_GPU, str(tmp_path), "{iteration}"]).to_json()
    executor = make_executor(None, spec, executor="ray", gpus_per_check=1)
    arts = [artifact(tmp_path, n) for n in (1, 2)]
    for art in arts:  # a per-worker --devices value is Ray's to replace
        art.extra_env = {"CUDA_VISIBLE_DEVICES": "7"}
    results = {}
    threads = [threading.Thread(target=lambda a=a: results.update({a.iteration: executor.run(a, str(a.iteration))}))
               for a in arts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r.verdict is Verdict.GOOD for r in results.values()) and len(results) == 2
    seen = {(tmp_path / str(n)).read_text() for n in (1, 2)}
    assert seen == {"0", "1"}  # two checks at once: one logical GPU each, set by Ray


@pytest.mark.ray
def test_a_failing_check_still_fails_when_ray_ignores_sigchld(ray, tmp_path):
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:  # the pitfall: with SIGCHLD ignored, a child's exit status reads 0
        assert subprocess.run([sys.executable, "-c", "raise SystemExit(1)"]).returncode == 0
    finally:
        signal.signal(signal.SIGCHLD, old)
    spec = CheckSpec.command([sys.executable, "-c", "raise SystemExit(1)"]).to_json()

    def failing_under_ignored_sigchld(spec, art):  # defined here: Ray ships it by value
        import signal

        from bisector.engine import ray_task

        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # what Ray's recursive subreaper mode does
        return ray_task.run_check(spec, art)

    task = ray.remote(failing_under_ignored_sigchld).options(num_cpus=1)
    result = ray.get(task.remote(spec, ray_task.artifact_json(artifact(tmp_path, 1))))
    assert result["verdict"] == Verdict.BAD.value and result["exit_code"] == 1


@pytest.mark.ray
def test_cancel_kills_the_checks_process_tree(ray, tmp_path):
    executor = make_executor(None, CheckSpec.command([sys.executable, "-c", TREE]).to_json(), executor="ray")
    art = artifact(tmp_path, 1)
    errors = []
    runner = threading.Thread(target=lambda: errors.append(_raised(executor.run, art, "k")))
    runner.start()
    pid_file = art.workdir / "grandchild.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert not dead(grandchild)
    executor.cancel("k")
    runner.join(30)
    assert isinstance(errors[0], SessionAborted)
    deadline = time.monotonic() + 10
    while not dead(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead(grandchild), "the check's grandchild outlived the cancelled task"


def _raised(fn, *args):
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        return exc
    return None


@pytest.mark.ray
def test_where_every_node_sees_the_session_files_go_by_path_else_through_the_object_store(ray, tmp_path):
    assert not RayExecutor(FAULTY.to_json(), session_dir=tmp_path).ship
    assert RayExecutor(FAULTY.to_json(), session_dir=tmp_path / "elsewhere").ship  # auto: no node sees it
    with pytest.raises(UserError, match="`ray_files` shared: the session directory .* is not visible on 1 of"):
        RayExecutor(FAULTY.to_json(), files="shared", session_dir=tmp_path / "elsewhere")


@pytest.mark.ray
def test_a_reduce_with_shipped_files_gives_the_answer_of_local_j1_and_its_logs_come_back(ray, tmp_path):
    where = "import os; print('ran in', os.getcwd())"
    check = CheckSpec.command([sys.executable, "-c", f"{where}; import runpy, sys; sys.argv = sys.argv[1:]; "
                               "runpy.run_path(sys.argv[0], run_name='__main__')", *FAULTY.argv[1:]])
    runs = {}
    for name, options in (("local", {}), ("ray", {"executor": "ray", "jobs": 2, "ray_files": "ship"})):
        command = ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=tmp_path / f"{name}.onnx"))
        runs[name] = api.run(command, check, api.RunOptions(session=tmp_path / name, keep_intermediate=True,
                                                             **options))
    assert runs["ray"].exit_code == runs["local"].exit_code == 0
    assert runs["ray"].report.result.node_names == runs["local"].report.result.node_names == ("relu4",)
    verdicts = {name: {e.fingerprint: e.verdict for e in run.outcome.iterations} for name, run in runs.items()}
    assert all(verdicts["ray"][fp] == v for fp, v in verdicts["local"].items())
    logs = sorted((tmp_path / "ray" / "iterations").glob("*/check.log"))
    assert logs and all("ran in" in log.read_text() for log in logs)
    ran_in = {Path(log.read_text().split("ran in ", 1)[1].split()[0]) for log in logs}
    assert all("bisector-ray-" in str(d) and tmp_path not in d.parents and not d.exists() for d in ran_in)


@pytest.mark.ray
def test_files_over_the_object_store_share_are_refused_in_one_line_naming_the_remedy(ray, tmp_path):
    art = artifact(tmp_path, 1)
    art.path.write_bytes(b"x" * 4096)
    executor = RayExecutor(CheckSpec.command(["true"]).to_json(), files="ship", session_dir=tmp_path,
                           ship_limit=1024)
    with pytest.raises(UserError, match=r"iteration 1's files are 0 MiB, over the 0 MiB .* filesystem every node sees"):
        executor.run(art, "k")


@pytest.mark.ray
def test_what_a_shipped_check_makes_comes_back_and_what_is_too_large_is_named(ray, tmp_path):
    make = "import sys; open('small.txt', 'w').write('s'); open('big.bin', 'wb').write(b'b' * 100000); print('hi')"
    executor = RayExecutor(CheckSpec.command([sys.executable, "-c", make]).to_json(), files="ship",
                           session_dir=tmp_path, ship_limit=50000)
    art = artifact(tmp_path, 1)
    art.path.write_bytes(b"model")
    assert executor.run(art, "k").verdict is Verdict.GOOD
    assert (art.workdir / "small.txt").read_text() == "s" and "hi" in (art.workdir / "check.log").read_text()
    assert not (art.workdir / "big.bin").exists()
    assert "big.bin" in (art.workdir / ray_task.LEFT_OUT_NAME).read_text()
    assert art.path.read_bytes() == b"model"


@pytest.mark.ray
def test_cancel_of_a_shipped_check_kills_its_tree_and_removes_its_copy(ray, tmp_path):
    tree = TREE.replace("open('grandchild.pid', 'w')", f"open({str(tmp_path / 'grandchild.pid')!r}, 'w')")
    tree = f"import os; open({str(tmp_path / 'cwd')!r}, 'w').write(os.getcwd()); " + tree
    executor = RayExecutor(CheckSpec.command([sys.executable, "-c", tree]).to_json(), files="ship",
                           session_dir=tmp_path)
    art = artifact(tmp_path, 1)
    errors = []
    runner = threading.Thread(target=lambda: errors.append(_raised(executor.run, art, "k")))
    runner.start()
    pid_file = tmp_path / "grandchild.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild, copy = int(pid_file.read_text()), Path((tmp_path / "cwd").read_text())
    executor.cancel("k")
    runner.join(30)
    assert isinstance(errors[0], SessionAborted)
    deadline = time.monotonic() + 10
    while (not dead(grandchild) or copy.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead(grandchild) and not copy.exists()


@pytest.mark.ray
def test_a_users_error_on_the_node_is_one_line_not_rays_traceback(ray, tmp_path):
    executor = make_executor(None, CheckSpec.command([str(tmp_path / "gone.sh")]).to_json(), executor="ray")
    with pytest.raises(UserError) as err:
        executor.run(artifact(tmp_path, 1), "k")
    assert str(err.value).startswith("check command") and "\n" not in str(err.value)


@pytest.mark.ray
def test_a_check_lost_with_its_worker_every_try_stops_the_session_without_a_verdict(ray, tmp_path):
    kill = "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"
    executor = make_executor(None, CheckSpec.command([sys.executable, "-c", kill]).to_json(), executor="ray")
    with pytest.raises(SessionAborted, match=r"iteration 1's check was lost on the Ray cluster \(WorkerCrashedError"):
        executor.run(artifact(tmp_path, 1), "k")


@pytest.mark.ray
def test_the_cli_runs_a_reduce_on_a_ray_cluster_given_by_address(ray, tmp_path):
    from tests.helpers import ENV

    shutil.copy(fixture_path("chain"), tmp_path / "m.onnx")
    address = ray.get_runtime_context().gcs_address
    argv = ["reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-q", "-j", "2", "--executor", "ray",
            "--ray-address", address, "--check", *FAULTY.argv]
    proc = subprocess.run([sys.executable, "-m", "bisector", *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**ENV, "RAY_AUTH_MODE": "disabled"}, stdin=subprocess.DEVNULL, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "s" / "session.json").read_text())["spec"]["run"]["executor"] == "ray"


def test_ray_flags_without_the_ray_executor_are_named_as_flags(tmp_path):
    from tests.helpers import bisector

    shutil.copy(fixture_path("chain"), tmp_path / "m.onnx")
    proc = bisector("reduce", "m.onnx", "-o", "red.onnx", "--gpus-per-check", "1", "--check", *FAULTY.argv,
                    cwd=tmp_path)
    assert proc.returncode != 0 and "--ray-address, --gpus-per-check and --ray-files go with --executor ray" in proc.stderr


@pytest.mark.ray
def test_a_worker_killed_mid_check_gives_a_retry_not_a_verdict(ray, tmp_path):
    kill_first = "import os, signal, sys; m = sys.argv[1]; " \
                 "os.path.exists(m) or (open(m, 'w').close(), os.kill(os.getppid(), signal.SIGKILL)); sys.exit(1)"
    spec = CheckSpec.command([sys.executable, "-c", kill_first, str(tmp_path / "killed-once")]).to_json()
    result = make_executor(None, spec, executor="ray").run(artifact(tmp_path, 1), "k")
    assert (tmp_path / "killed-once").exists()  # the first try died with its worker
    assert result.verdict is Verdict.BAD and result.exit_code == 1  # the verdict of the retry


def test_without_ray_the_ray_executor_is_one_missing_dependency_line(monkeypatch):
    from bisector.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    with pytest.raises(MissingDependency, match=r"`executor` ray needs Ray: pip install 'bisector\[ray\]'"):
        make_executor(None, FAULTY.to_json(), executor="ray")


@pytest.mark.ray
def test_a_node_that_does_not_see_the_iteration_directory_gives_one_line_not_a_verdict(ray, tmp_path):
    executor = make_executor(None, CheckSpec.command(["false"]).to_json(), executor="ray")
    art = Artifact(workdir=tmp_path / "not-on-this-node", path=tmp_path / "not-on-this-node" / "m.onnx", iteration=3)
    with pytest.raises(UserError, match="does not see the iteration directory .*not-on-this-node"):
        executor.run(art, "k")
    assert not art.workdir.exists()


def test_a_cluster_address_where_nothing_listens_is_one_line_within_seconds(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed: pip install 'bisector[ray]'")
    from tests.helpers import ENV

    import socket

    shutil.copy(fixture_path("chain"), tmp_path / "m.onnx")
    web = socket.create_server(("127.0.0.1", 0))  # something that answers, but not in gRPC

    def answer():
        while True:
            try:
                conn, _ = web.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    argv = ["reduce", "m.onnx", "-o", "red.onnx", "-q", "--executor", "ray", "--check", *FAULTY.argv]
    web_address = f"127.0.0.1:{web.getsockname()[1]}"
    for extra, env in ((["--ray-address", "127.0.0.1:9"], {}), ([], {"RAY_ADDRESS": "127.0.0.1:9"}),
                       (["--ray-address", "nowhere"], {}), (["--ray-address", web_address], {})):
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "bisector", *argv[:7], *extra, *argv[7:]], cwd=tmp_path,
                              capture_output=True, text=True, env={**ENV, "RAY_AUTH_MODE": "disabled", **env},
                              stdin=subprocess.DEVNULL, timeout=120)
        assert proc.returncode == 2 and time.monotonic() - start < 30, proc.stderr
        assert ("--ray-address" in proc.stderr or "$RAY_ADDRESS 127" in proc.stderr) and ("no Ray cluster answers" in proc.stderr
                                                   or "expected HOST:PORT" in proc.stderr
                                                   or "but not a Ray cluster" in proc.stderr), proc.stderr
    web.close()


@pytest.mark.ray
def test_speculative_checks_dropped_by_a_reduce_on_ray_leave_no_grandchild(ray, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    slow = (f"import os, runpy, subprocess, sys, time; p = subprocess.Popen(['sleep', '300']); "
            f"open(os.path.join({str(pids)!r}, str(p.pid)), 'w').close(); time.sleep(1); "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    check = CheckSpec.command([sys.executable, "-c", slow, *FAULTY.argv[1:]])
    command = ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=tmp_path / "r.onnx"))
    events = []
    run = api.run(command, check, api.RunOptions(session=tmp_path / "s", executor="ray", jobs=2),
                  listeners=(events.append,))
    assert run.exit_code == 0 and run.report.result.node_names == ("relu4",)
    assert any(e["event"] == "dropped" for e in events)  # speculation was cancelled mid-check
    started = [int(p.name) for p in pids.iterdir()]
    deadline = time.monotonic() + 15
    while not all(dead(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started and all(dead(p) for p in started), [p for p in started if not dead(p)]


@pytest.mark.ray
def test_a_check_on_ray_sees_the_environment_bisector_was_started_with(ray, tmp_path, monkeypatch):
    monkeypatch.setenv("BISECTOR_TEST_THRESHOLD", "0.25")
    show = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('BISECTOR_TEST_THRESHOLD', '-') + ' ' + " \
           "os.environ.get('RAY_RAYLET_PID', '-'))"
    executor = make_executor(None, CheckSpec.command([sys.executable, "-c", show, str(tmp_path / "env")]).to_json(),
                             executor="ray")
    assert executor.run(artifact(tmp_path, 1), "k").verdict is Verdict.GOOD
    threshold, raylet = (tmp_path / "env").read_text().split()
    assert threshold == "0.25" and raylet != "-"  # the user's variable, and still the node's own Ray ones
