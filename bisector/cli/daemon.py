"""The daemon's commands: ``bisector daemon start|stop|status|run`` and ``submit``, ``jobs``,
``watch``, ``logs``, ``report``, ``cancel``, ``clean`` (as pueue's add, status, follow, log, kill,
clean). A submitted command line is parsed here, with the CLI's own parser, so that a bad one is
refused at once (exit 2); the daemon (``bisector/daemon/``) knows no flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from bisector.errors import UserError, one_of

JOB_COMMANDS = ("reduce", "precision", "repeat", "build")
START_WAIT_S = 15.0
CANCEL_GRACE_S = 5.0
GPUS_HELP = "GPUs to hand out, e.g. 0,1,2,3: a job gets the ones it asks for, through CUDA_VISIBLE_DEVICES"
SLOTS_HELP = "Jobs at once on a machine without GPUs (ignored with --gpus)"
EXECUTOR_HELP = ("Where each job's checks run: local (here) or ray (the Ray cluster at --ray-address; the queue "
                 "stays here)")
RAY_ADDRESS_HELP = "The Ray cluster for --executor ray (ray start --head prints it)"
NOTIFY_HELP = "A command run when a job ends, with a JSON summary of the job on stdin (split like a shell, not run by one)"

# The options `daemon run` and `daemon start` share (start hands them on to run).
GpusOption = Annotated[Optional[str], typer.Option("--gpus", help=GPUS_HELP)]
SlotsOption = Annotated[int, typer.Option("--slots", help=SLOTS_HELP)]
NotifyOption = Annotated[Optional[str], typer.Option("--notify-cmd", help=NOTIFY_HELP)]
ExecutorOption = Annotated[str, typer.Option("--executor", help=EXECUTOR_HELP)]
RayAddressOption = Annotated[Optional[str], typer.Option("--ray-address", help=RAY_ADDRESS_HELP)]

daemon_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                         rich_markup_mode=None, help="Start, stop and look at the job daemon")


def register(app: typer.Typer) -> None:
    """Add the daemon's commands to bisector's app."""
    app.add_typer(daemon_app, name="daemon")
    for command in (submit, jobs, watch, logs, report, cancel, clean):
        settings = {"allow_extra_args": True, "ignore_unknown_options": True} if command is submit else None
        app.command(name=command.__name__, context_settings=settings)(command)


def _store():
    from bisector.daemon.store import Store, home_dir

    home = home_dir()
    return home, Store(home)


def _config(gpus: Optional[str], slots: int, notify_cmd: Optional[str], executor: str = "local",
            ray_address: Optional[str] = None):
    from bisector.daemon.service import Config
    from bisector.engine.executors import EXECUTORS, import_ray

    if slots < 1:
        raise UserError(f"--slots must be at least 1, not {slots}")
    ids = tuple(g.strip() for g in gpus.split(",") if g.strip()) if gpus else ()
    if gpus is not None and (not ids or len(set(ids)) != len(ids)):
        raise UserError(f"--gpus {gpus!r}: give distinct GPU ids separated by commas, e.g. 0,1")
    one_of("--executor", executor, EXECUTORS)
    if executor != "ray" and ray_address:
        raise UserError("--ray-address goes with --executor ray")
    if executor == "ray":
        if ids:
            raise UserError("--gpus hands out this machine's GPUs; with --executor ray the cluster's GPUs go to "
                            "the checks", hint="give each job --gpus-per-check N")
        import_ray()  # one line now if Ray is not installed, not a failure in every job
    return Config(gpus=ids, slots=slots, notify_cmd=notify_cmd, executor=executor, ray_address=ray_address)


def _reach(config) -> None:
    """For ``daemon start``: a one-line error unless the daemon's Ray cluster answers (``daemon
    run``, under systemd, starts all the same and keeps its queue waiting). Without an address each
    job finds its cluster as Ray does (``RAY_ADDRESS``, one running here, or its own)."""
    from bisector.engine.executors import reach

    if config.executor == "ray":
        reach(config.ray_address)


@daemon_app.command("run")
def daemon_run(
    gpus: GpusOption = None,
    slots: SlotsOption = 1,
    notify_cmd: NotifyOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
):
    """Run the daemon in the foreground (for systemd); Ctrl-C or SIGTERM stops it, and its running
    jobs resume at its next start."""
    import logging

    from bisector.daemon.service import Daemon

    config = _config(gpus, slots, notify_cmd, executor, ray_address)  # a cluster that is down: the queue waits
    home, store = _store()
    store.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    daemon_log = logging.getLogger("bisector.daemon")
    daemon_log.addHandler(handler)
    daemon_log.setLevel(logging.INFO)
    Daemon(home, config).serve()
    return 0


@daemon_app.command("start")
def daemon_start(
    gpus: GpusOption = None,
    slots: SlotsOption = 1,
    notify_cmd: NotifyOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
):
    """Start the daemon in the background (its log: daemon.log in the state directory). Jobs that a
    killed daemon left running resume from their journals."""
    from bisector.daemon.service import lock_holder

    _reach(_config(gpus, slots, notify_cmd, executor, ray_address))
    home, store = _store()
    store.close()
    if lock_holder(home):
        raise UserError(f"a daemon already runs for {home} (pid {lock_holder(home)})")
    argv = [sys.executable, "-m", "bisector", "daemon", "run", "--slots", str(slots)]
    argv += ["--gpus", gpus] if gpus else []
    argv += ["--notify-cmd", notify_cmd] if notify_cmd else []
    argv += ["--executor", executor] + (["--ray-address", ray_address] if ray_address else [])
    log_path = home / "daemon.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, cwd=home, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if lock_holder(home) == proc.pid:
            sys.stdout.write(f"daemon started (pid {proc.pid}); state: {home}; log: {log_path}\n")
            return 0
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise UserError(f"the daemon did not start: {tail[0] if tail else f'exit {proc.returncode}'}")
        time.sleep(0.05)
    raise UserError(f"the daemon did not start within {START_WAIT_S:.0f} s", hint=f"see {log_path}")


@daemon_app.command("stop")
def daemon_stop():
    """Stop the daemon; its running jobs stop too and resume at its next start."""
    from bisector.daemon.service import STOP_GRACE_S, lock_holder
    from bisector.daemon.store import home_dir

    home = home_dir()
    pid = lock_holder(home)
    if not pid:
        sys.stdout.write("no daemon runs\n")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S + 10
    while lock_holder(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    if lock_holder(home):
        raise UserError(f"the daemon (pid {pid}) did not stop")
    sys.stdout.write(f"daemon stopped (pid {pid})\n")
    return 0


@daemon_app.command("status")
def daemon_status(ctx: typer.Context,
                  json_out: Annotated[bool, typer.Option("--json", help="One JSON object on stdout")] = False):
    """Whether the daemon runs, its pid, state directory, slots and job counts."""
    from bisector.daemon.service import INFO_NAME, lock_holder

    home, store = _store()
    pid = lock_holder(home)
    try:
        info = json.loads((home / INFO_NAME).read_text()) if pid else {}
    except (OSError, ValueError):
        info = {}
    doc = {"running": bool(pid), "pid": pid, "state_dir": str(home), "gpus": info.get("gpus", []),
           "slots": len(info["gpus"]) if info.get("gpus") else info.get("slots"), "jobs": store.counts(),
           "executor": info.get("executor"), "ray_address": info.get("ray_address")}
    store.close()
    if json_out:
        sys.stdout.write(json.dumps(doc) + "\n")
        ctx.obj["ui"].summary_written = True
        return 0
    state = f"running (pid {pid})" if pid else "not running"
    slots = f"GPUs {','.join(doc['gpus'])}" if doc["gpus"] else f"{doc['slots']} slot(s)" if pid else "-"
    counts = ", ".join(f"{n} {s}" for s, n in doc["jobs"].items())
    ray = f"checks: on the Ray cluster at {doc['ray_address'] or 'Ray default address'}\n" \
        if doc["executor"] == "ray" else ""
    sys.stdout.write(f"daemon: {state}\nstate: {home}\nslots: {slots}\n{ray}jobs: {counts}\n")
    return 0


def submit(
    ctx: typer.Context,
    command: Annotated[Optional[List[str]], typer.Argument(help="-- then a bisector reduce|precision|repeat|build command line")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="A name to show in `bisector jobs`")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="How many GPUs the job needs (daemon started with --gpus)")] = 0,
    after: Annotated[Optional[int], typer.Option("--after", help="Start only once this job is done")] = None,
):
    """Queue a bisector command line for the daemon; prints the job's id at once.

    Example: bisector submit --name night -- reduce model.onnx -o reduced.onnx --check ./check.sh {artifact}"""
    from bisector.cli.build import Invocation

    argv = list(command or []) + list(ctx.args)
    check_argv = ctx.obj.get("check_argv") if ctx.obj else None
    if not argv or argv[0] not in JOB_COMMANDS:
        raise UserError(f"submit takes a bisector {'|'.join(JOB_COMMANDS)} command line after --",
                        hint="bisector submit -- reduce model.onnx -o reduced.onnx --check ./check.sh {artifact}")
    if gpus < 0:
        raise UserError(f"--gpus must be 0 or more, not {gpus}")
    full = argv + (["--check", *check_argv] if check_argv else [])
    inv = ctx.obj["parse"](full)  # a bad command line is refused here, before anything is queued
    if not isinstance(inv, Invocation):
        raise UserError(f"{argv[0]}: not a search the daemon can run")
    model = getattr(inv.command, "model", None)
    if model is not None and not Path(model).exists():
        raise UserError(f"{model}: no such file")
    if inv.check.interactive:
        raise UserError("a job has nobody to answer its checks: give --check, --compare, --check-func or --check-script")
    session = str(Path(inv.run.session).absolute()) if inv.run.session else None
    home, store = _store()
    job_id = store.add(full, len(argv), os.getcwd(), name=name, session=session, gpus=gpus, after=after)
    store.close()
    sys.stdout.write(f"{job_id}\n")
    return 0


def jobs(ctx: typer.Context,
         json_out: Annotated[bool, typer.Option("--json", help="A JSON list of jobs on stdout")] = False):
    """Every job: its state, progress, elapsed time and answer."""
    from bisector.cli.daemon_view import job_rows, print_jobs
    from bisector.daemon.service import lock_holder

    home, store = _store()
    rows = job_rows(home, store.jobs())
    store.close()
    if json_out:
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        ctx.obj["ui"].summary_written = True
        return 0
    print_jobs(rows, daemon_running=lock_holder(home) is not None)
    return 0


def watch(job_id: Annotated[int, typer.Argument(help="The job's id")]):
    """Follow a job's progress live until it ends (its event stream)."""
    from bisector.cli.daemon_view import follow

    home, store = _store()
    try:
        return follow(home, store, job_id)
    except KeyboardInterrupt:
        sys.stderr.write(f"stopped watching; job {job_id} goes on\n")
        return 0
    finally:
        store.close()


def logs(job_id: Annotated[int, typer.Argument(help="The job's id")]):
    """Print the job's output (what bisector printed while it ran)."""
    from bisector.daemon.service import job_paths

    home, store = _store()
    path = job_paths(home, store.get(job_id))["log"]
    store.close()
    if not path.exists():
        raise UserError(f"job {job_id} has no output yet (it has not started)")
    sys.stdout.write(path.read_text(errors="replace"))
    return 0


def report(job_id: Annotated[int, typer.Argument(help="The job's id")]):
    """Print the job's report (result/report.md of its session)."""
    from bisector.daemon.service import job_paths

    home, store = _store()
    job = store.get(job_id)
    path = job_paths(home, job)["session"] / "result" / "report.md"
    store.close()
    if not path.exists():
        from bisector.daemon.store import FINISHED

        raise UserError(f"job {job_id} ({job.state}) has no report" + ("" if job.state in FINISHED else " yet"),
                        hint=f"bisector jobs; bisector logs {job_id}")
    sys.stdout.write(path.read_text(errors="replace"))
    return 0


def cancel(job_id: Annotated[int, typer.Argument(help="The job's id")]):
    """Cancel a job: a queued one never starts; a running one is stopped with all its checks."""
    home, store = _store()
    try:
        if store.cancel_queued(job_id):
            sys.stdout.write(f"job {job_id} cancelled (it had not started)\n")
            return 0
        job = store.request_cancel(job_id)
        if job is None:
            raise UserError(f"job {job_id} is {store.get(job_id).state}: nothing to cancel")
        state = _stop(home, store, job)
        sys.stdout.write(f"job {job_id} {state}\n")
        return 0
    finally:
        store.close()


def _stop(home: Path, store, job) -> str:
    """SIGINT to the job's process group (bisector stops its checks), SIGKILL after a grace; then
    what is left of its checks is ended. The daemon records the job as cancelled."""
    from bisector.checks.process_group import kill_leftovers, signal_group
    from bisector.daemon.service import job_paths

    for sig, wait in ((signal.SIGINT, CANCEL_GRACE_S), (signal.SIGKILL, CANCEL_GRACE_S + 5)):
        if job.pgid:
            signal_group(job.pgid, sig)
        deadline = time.monotonic() + wait
        while store.get(job.id).state == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        if store.get(job.id).state != "running":
            break
    session = job_paths(home, job)["session"]
    if session.is_dir():
        kill_leftovers(session)
    state = store.get(job.id).state
    return "cancelled" if state == "cancelled" else f"stopped; the daemon has not recorded it yet ({state})"


def clean():
    """Remove the done, failed and cancelled jobs from the list (their sessions stay on disk)."""
    home, store = _store()
    n = store.clean()
    store.close()
    sys.stdout.write(f"removed {n} finished job(s)\n")
    return 0
