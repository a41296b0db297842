"""The one runner: open (or resume) a session, set the command up, search, write the report.

The CLI, the tests and the daemon all start a command the same way::

    from bisector import api
    from bisector.checks.spec import CheckSpec
    from bisector.commands.reduce import ReduceCommand, ReduceOptions

    run = api.run(ReduceCommand(ReduceOptions(model=Path("m.onnx"), output=Path("r.onnx"))),  # paths: from here
                  CheckSpec.command(["python", "check.py", "{artifact}"]),
                  api.RunOptions(session=Path("s"), jobs=2))
    run.report.result.node_names, run.exit_code

``session.json`` records the command, the check and these run options (``spec``), so
:func:`resume` rebuilds all three from the session alone. Events (``session``, ``plan``, then the
engine's ``start``/``verdict``/... and ``done``) go to every listener; nothing here prints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from bisector.artifacts.report import write_reports
from bisector.artifacts.session import Session, load_meta
from bisector.checks.process_group import kill_leftovers
from bisector.checks.spec import CheckSpec
from bisector.codec import absolute, decode, encode
from bisector.commands.base import Command, Plan, Report
from bisector.engine import Engine, Outcome
from bisector.engine.executors import EXECUTORS, make_executor, ray_options
from bisector.errors import UserError

Listener = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunOptions:
    """How a session runs, apart from what it searches: where (``session``), how many checks at
    once (``jobs``, one ``CUDA_VISIBLE_DEVICES`` per worker from ``devices``), which files the
    check writes to sort into good/bad (``artifacts``, into ``art_dir``), the ``iter_info`` file,
    whether to keep each artifact, whether an inconclusive answer is written all the same
    (``force_output``) and a Polygraphy debug replay to import. ``executor``: ``local`` (threads
    here) or ``ray`` (each check a Ray task on the cluster at ``ray_address``, with
    ``gpus_per_check`` GPUs, its files by path or through the object store as ``ray_files`` says;
    see :mod:`bisector.engine.executors`)."""

    session: Path | None = None
    jobs: int = 1
    devices: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    art_dir: Path | None = None
    iter_info: str | None = None
    keep_intermediate: bool = False
    force_output: bool = False
    load_debug_replay: Path | None = None
    executor: str = "local"
    ray_address: str | None = None
    gpus_per_check: float = 0
    ray_files: str = "auto"

    def validate(self) -> None:
        if self.jobs < 1:
            raise UserError(f"`jobs` must be at least 1, not {self.jobs}")
        if self.iter_info and Path(self.iter_info).is_absolute() and self.jobs > 1:
            raise UserError(f"`iter_info` {self.iter_info}: with -j {self.jobs}, checks running at once would "
                            f"share one file", hint="give a relative name: it is written in each iteration directory")
        if self.executor not in EXECUTORS:
            raise UserError(f"`executor` {self.executor!r}: choose {', '.join(EXECUTORS)}")
        if self.executor != "ray" and (self.ray_address or self.gpus_per_check or self.ray_files != "auto"):
            raise UserError("`ray_address`, `gpus_per_check` and `ray_files` go with `executor` ray")
        if self.executor == "ray" and self.devices:
            raise UserError("`devices` hands out this machine's GPUs; with `executor` ray, Ray gives each check "
                            "its GPUs", hint="give `gpus_per_check` instead")


@dataclass
class Run:
    """A finished run: its session (closed), the plan, the engine's outcome and the report."""

    session: Session
    plan: Plan
    outcome: Outcome
    report: Report
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return self.report.exit_code


def run(command: Command, check: CheckSpec, options: RunOptions = RunOptions(), *,
        listeners: tuple[Listener, ...] = (), argv: list[str] | None = None, built=None) -> Run:
    """Run ``command`` with ``check`` to its report. ``argv`` is the command line to show in the
    report (default: the equivalent ``bisector`` call is not rebuilt; the spec is what resumes);
    ``built`` a Check already built from ``check`` (tests pass their own)."""
    options.validate()
    if options.executor == "ray":  # refused before a session directory is made
        ray_options(check.to_json(), options.gpus_per_check, options.ray_files, options.ray_address)
    command, check, options = type(command)(absolute(command.options)), check.anchored(), absolute(options)
    check_obj = built if built is not None else check.build()
    command.check_outputs()
    umask = private_like(command.model) if command.model is not None else None
    if options.session is not None and Path(options.session).is_dir():
        kill_leftovers(Path(options.session).absolute())  # before anything else holds a GPU
    spec = {"command": command.to_json(), "check": check.to_json(), "run": encode(options)}
    try:
        session = Session.open(options.session, command=argv or ["bisector", command.name], strategy=command.name,
                               params=command.params() | {"check": check.to_json(), "check_files":
                                                          check.file_fingerprints(command.per_iteration)},
                               model=_model_meta(command), spec=spec)
    except BaseException:  # refused (in use, another session): the caller's umask comes back all the same
        if umask is not None:
            os.umask(umask)
        raise
    emit = _emitter(listeners)
    try:
        emit("session", root=str(session.root), resumed=session.resumed, known=len(session.journal),
             replayed=not any(e.source == "check" for e in session.journal) and session.resumed)
        plan = command.setup(session)
        emit("plan", intro=list(plan.intro), notes=list(plan.notes))
        notes = []
        if options.load_debug_replay:
            notes.append(_import_replay(session, plan, options.load_debug_replay))
        executor = make_executor(check_obj, check.to_json() if built is None else None, executor=options.executor,
                                 address=options.ray_address, gpus_per_check=options.gpus_per_check,
                                 session_dir=session.root, files=options.ray_files)
        where = executor.describe()
        if where:
            emit("plan", intro=[], notes=[where])
        engine = Engine(plan.strategy, plan.materializer, check_obj, session, jobs=options.jobs, executor=executor,
                        devices=list(options.devices) or None,
                        artifacts=[*options.artifacts, *(a for a in plan.artifacts if a not in options.artifacts)],
                        keep_intermediate=options.keep_intermediate, listeners=list(listeners),
                        art_dir=options.art_dir, iter_info=options.iter_info)
        try:
            outcome = engine.run()
        except UserError as exc:
            raise command.explain(exc) from None
        finally:
            executor.shutdown()
        report = command.finish(plan, outcome, session, check, force_output=options.force_output)
        write_reports(session, strategy=command.name, stats=outcome.stats, result=_report_json(report),
                      answer_md=report.markdown, reproduce=list(report.reproduce) if report.reproduce else None)
        return Run(session, plan, outcome, report, notes)
    finally:
        session.close()
        if umask is not None:
            os.umask(umask)


def resume(root: Path, *, output: Path | None = None, confine: bool = False,
           options: dict[str, Any] | None = None) -> tuple[Command, CheckSpec, RunOptions]:
    """The command, check and run options a session was started with, from its ``session.json``:
    ``output`` replaces the answer's path; ``confine`` moves every output into the session (a
    session made by someone else). ``options`` override run options (e.g. ``{"jobs": 4}``)."""
    from bisector.commands import registry

    root = Path(root).absolute()
    meta = load_meta(root)
    spec = meta.get("spec")
    if not isinstance(spec, dict) or not {"command", "check", "run"} <= set(spec):
        raise UserError(f"{root} was made by an older bisector and cannot be resumed by this one",
                        hint="run its command again: " + " ".join(meta.get("command") or []))
    command = registry.command_from_json(spec["command"])
    check = CheckSpec.from_json(spec["check"])
    run_options = replace(decode(RunOptions, spec["run"]), session=root, **(options or {}))
    if confine:
        command = command.confined(root)
        run_options = replace(run_options, art_dir=None if run_options.art_dir is None else root / "result",
                              iter_info=Path(run_options.iter_info).name if run_options.iter_info else None)
    if output is not None:
        if "output" not in command.OUTPUT_FIELDS:
            raise UserError(f"a {command.name} session writes no model: -o does not apply to it")
        command = command.replace(output=Path(output).absolute())
    return command, check, run_options


def _report_json(report: Report) -> dict[str, Any]:
    doc = report.result.to_json() if hasattr(report.result, "to_json") else dict(report.result)
    return {**doc, **report.files, "conclusive": report.conclusive,
            **({"doubt": report.doubt} if report.doubt else {})}


def _emitter(listeners) -> Listener:
    def emit(event: str, **data: Any) -> None:
        payload = {"event": event, "time": round(time.time(), 3), **data}
        for listen in listeners:
            listen(payload)
    return emit


def _import_replay(session, plan: Plan, path: Path) -> str:
    """Journal the verdicts of a Polygraphy replay for the candidates they judged (see replay.py)."""
    from bisector.artifacts.replay import import_polygraphy_replay

    n, stopped = import_polygraphy_replay(session, plan.strategy, plan.materializer, path)
    return f"imported {n} verdict(s) from {path} (Polygraphy replay)" + (f"; {stopped}" if stopped else "")


def _model_meta(command: Command) -> dict | None:
    if command.model is None:
        return None
    from bisector.model.prepare import source_fingerprint

    path = Path(command.model)
    return {"path": str(path.resolve()), "fingerprint": source_fingerprint(path, command.data_dir)}


def private_like(model: Path) -> int | None:
    """Nothing bisector writes from ``model`` (weights, recorded activations, answers, what checks
    write) may be more readable than the model is: while the session runs, the process's umask
    takes away every permission the model's owner did not give (a 0600 model gives 0600 files and
    0700 directories). Returns the umask to restore."""
    try:
        mode = os.stat(model).st_mode & 0o777
    except OSError:
        return None
    allowed = mode | ((mode & 0o444) >> 2)  # directories: x wherever r is given
    current = os.umask(0)
    os.umask(current | (0o777 & ~allowed))
    return current

