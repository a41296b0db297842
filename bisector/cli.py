"""bisector: find where an ONNX or TensorRT model goes wrong."""

import errno
import functools
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from bisector.cli_options import CheckOptions, CompareOptions, DataOptions, SessionOptions, split_argv
from bisector.cli_polygraphy import take_polygraphy_flags
from bisector.errors import (EXIT_INCONCLUSIVE, EXIT_STOPPED, EXIT_USAGE, Inconclusive, SessionAborted, UserError,
                             one_of)
from bisector.progress import EventFile, LiveDisplay, LogLines, is_interactive, make_console

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None, help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
console = make_console()
_check_argv: Optional[list[str]] = None  # everything after --check, set by main()


def guarded(fn):
    """User errors end in one line and exit 2; a stopped session says how to resume.

    So do the file-system errors a user can fix (``FILE_ERRNOS``: a full disk, a read-only or
    unwritable directory, a file where a directory should be) wherever they come from; any other
    exception is a bug and keeps its traceback. Ctrl-C outside the engine (which handles its own,
    see ``Engine.run``), e.g. while the model is prepared, exits ``EXIT_STOPPED`` too.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Inconclusive as exc:
            error_line(exc.message, exc.hint)
            raise typer.Exit(EXIT_INCONCLUSIVE)
        except UserError as exc:
            error_line(exc.message, exc.hint)
            raise typer.Exit(EXIT_USAGE)
        except SessionAborted as exc:
            console.print(f"[yellow]stopped:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_STOPPED)
        except OSError as exc:
            if exc.errno not in FILE_ERRNOS:
                raise
            root = _open_session()
            error_line(_os_error_text(exc), f"fix that, then: bisector resume {root}" if root else None)
            raise typer.Exit(EXIT_USAGE)
        except KeyboardInterrupt:
            root = _open_session()
            then = f"; continue with: bisector resume {root}" if root else " before a session was started"
            console.print(f"[yellow]stopped:[/] interrupted{escape(then)}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_STOPPED)

    return wrapper


def error_line(message: str, hint: Optional[str] = None) -> None:
    """The one line every user error ends in (``bisector: error: ...``), and its hint below it."""
    console.print(f"[bold red]bisector: error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        console.print(f"  hint: {escape(hint)}", highlight=False, style="dim", soft_wrap=True)


FILE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def _os_error_text(exc: OSError) -> str:
    """``path: reason`` (``a -> b: reason`` for a rename). A failed write() carries no path: then
    the reason and its errno name."""
    reason = exc.strerror or str(exc)
    paths = " -> ".join(os.fsdecode(p) for p in (exc.filename, exc.filename2) if p is not None)
    return f"{paths}: {reason}" if paths else f"{reason} ({errno.errorcode.get(exc.errno, exc.errno)})"


def _open_session() -> Optional[str]:
    from bisector.artifacts.session import opened

    root = opened()
    return shlex.quote(str(root)) if root else None


# ---------------------------------------------------------------------------------------- helpers
def check_writable(path: Optional[Path], model: Optional[Path] = None) -> None:
    """Refuse an output path that cannot be written before the search, not after it: a directory,
    the input ``model`` itself, or a place where no file can be created (tried, in the nearest
    directory that exists, so that nothing is left behind)."""
    if path is None:
        return
    target = Path(path).absolute()
    if target.is_dir():
        raise UserError(f"cannot write {path}: it is a directory", hint="give a file name, e.g. reduced.onnx")
    if model is not None and target.exists() and Path(model).exists() and os.path.samefile(target, model):
        raise UserError(f"{path} is the input model: writing the answer there would destroy it",
                        hint="give another -o")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".bisector-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {parent}: {exc.strerror or exc}") from None


def compare_config(c: CompareOptions):
    from bisector.compare.config import CompareConfig

    return CompareConfig.from_flags(atol=c.atol, rtol=c.rtol, check_error_stat=c.check_error_stat,
                                    error_quantile=c.error_quantile, validate=c.validate)


def compare_target(c: CompareOptions):
    from bisector.backends.target import Target
    from bisector.commands.compare import read_keep
    from bisector.model.precision import PRECISIONS, REALIZE_MODES

    if c.precision is not None:
        one_of("--precision", c.precision, tuple(PRECISIONS))
    if c.realize is not None:
        one_of("--realize", c.realize, REALIZE_MODES)
    return Target(provider=c.provider, precision=c.precision, keep=read_keep(c.keep_fp32), realize=c.realize)


def data_args(d: DataOptions) -> dict:
    from bisector.data import parse_val_range
    from bisector.model.shapes import parse_shapes

    if d.samples < 1:
        raise UserError(f"--samples/--iterations must be at least 1, not {d.samples}")
    if d.seed < 0:
        raise UserError(f"--seed must be 0 or more, not {d.seed}")
    from bisector.commands.candidates import one_sample_source

    one_sample_source(d.load_inputs, d.data_loader_script)  # before a session is opened
    return {"shapes": parse_shapes(d.input_shapes), "load": d.load_inputs or [], "samples": d.samples,
            "seed": d.seed, "val_range": parse_val_range(d.val_range) if d.val_range else None,
            "script": d.data_loader_script,
            "data_dir": d.external_data_dir.absolute() if d.external_data_dir else None}


def candidate_args(d: DataOptions, s: SessionOptions, cmp: CompareOptions, artifact: str) -> dict:
    """The ``CandidateOptions`` fields (bisector/commands/candidates.py) that the shared flags set."""
    a = data_args(d)
    name = s.iter_artifact or artifact
    if name in ("", ".", "..") or Path(name).name != name:
        raise UserError(f"--iter-artifact {name!r} must be a plain file name: candidates are written in their "
                        f"iteration directory", hint="e.g. --iter-artifact polygraphy_debug.onnx")
    return {"input_shapes": a["shapes"], "load_inputs": a["load"], "data_loader_script": a["script"],
            "external_data_dir": a["data_dir"],
            "seed": a["seed"], "val_range": a["val_range"],
            "samples": a["samples"], "iter_artifact": name, "write_inputs": not cmp.compare}


def build_check(chk: CheckOptions, cmp: CompareOptions):
    """The check the flags ask for: --check CMD, --check-func/--check-script, --compare, or a person."""
    from bisector.checks.repeat import VOTES, RepeatCheck

    given = [name for name, on in (("--check", _check_argv is not None), ("--check-func", chk.check_func),
                                   ("--check-script", chk.check_script), ("--compare", cmp.compare)) if on]
    if len(given) > 1:
        raise UserError(f"{given[0]} and {given[1]} exclude each other: give one kind of check")
    if not cmp.compare:
        defaults = CompareOptions()
        for flag, field in COMPARE_ONLY_FLAGS:
            if getattr(cmp, field) != getattr(defaults, field):
                kind = given[0] if given else "an interactive check"
                raise UserError(f"{flag} sets the in-process comparison (--compare), which {kind} does not use",
                                hint="put it in the check command instead, or check with --compare")
    one_of("--vote", chk.vote, VOTES)
    if _check_argv is not None:
        from bisector.checks.command import CommandCheck
        from bisector.checks.verdict_rules import VerdictRules

        rules = VerdictRules(fail_codes=chk.fail_code, ignore_fail_codes=chk.ignore_fail_code,
                             fail_regexes=chk.fail_regex)
        check = CommandCheck(_check_argv, rules, timeout_s=chk.check_timeout, on_timeout=chk.on_timeout,
                             on_crash=chk.on_crash, show_output=chk.show_output,
                             hide_fail_output=chk.hide_fail_output)
        check.validate()
    elif chk.check_func or chk.check_script:
        from bisector.checks.python import PythonCheck

        check = (PythonCheck.from_spec(chk.check_func, on_crash=chk.on_crash) if chk.check_func
                 else PythonCheck.from_script(chk.check_script, on_crash=chk.on_crash))
    elif cmp.compare:
        from bisector.checks.compare import CompareCheck

        check = CompareCheck(compare_target(cmp), compare_config(cmp))
    else:
        from bisector.checks.interactive import InteractiveCheck

        check = InteractiveCheck()
    if chk.repeat > 1:
        check = RepeatCheck(check, repeat=chk.repeat, vote=chk.vote)
    elif chk.repeat < 1:
        raise UserError("--repeat must be at least 1")
    return check


def warn_blind_check(artifact: str, model: Path) -> None:
    """A check command that names neither the candidate nor ``{artifact}`` / ``$BISECTOR_ARTIFACT``
    most likely checks the same file every time (often the input model itself): every verdict is
    then the same, and the search ends on a confident but meaningless answer. Warn before it runs."""
    from bisector.commands.candidates import INPUTS_NAME

    if not _check_argv:
        return
    for flag, value in zip(_check_argv, _check_argv[1:]):
        if flag in ("--load-inputs", "--load-input-data") and value not in (INPUTS_NAME, "{inputs}") \
                and "BISECTOR_INPUTS" not in value:
            console.print(f"[yellow]warning:[/] the check loads {value}, not the {INPUTS_NAME} bisector writes beside "
                          f"each candidate: a candidate cut inside the model has other inputs, which only "
                          f"{INPUTS_NAME} ({{inputs}}) holds", highlight=False, soft_wrap=True)
    text = " ".join(_check_argv)
    if artifact in text or "{artifact}" in text or "BISECTOR_ARTIFACT" in text:
        return
    names_model = any(Path(a).name == Path(model).name for a in _check_argv)
    what = f"names the input model {Path(model).name}, not the candidate" if names_model else \
        f"does not name the candidate ({artifact}, {{artifact}} or $BISECTOR_ARTIFACT)"
    console.print(f"[yellow]warning:[/] the check command {what}: unless it reads {artifact} from its working "
                  f"directory by itself, every check sees the same model and the answer means nothing",
                  highlight=False, soft_wrap=True)


# What only the in-process compare check reads (precision reads --precision, --realize, --keep-fp32
# itself and hands build_check a copy without them).
COMPARE_ONLY_FLAGS = (("--provider", "provider"), ("--precision", "precision"), ("--keep-fp32", "keep_fp32"),
                      ("--realize", "realize"), ("--atol", "atol"), ("--rtol", "rtol"),
                      ("--check-error-stat", "check_error_stat"), ("--error-quantile", "error_quantile"),
                      ("--validate", "validate"))


def _listeners(s: SessionOptions, title: str, interactive_check: bool):
    listeners, closers = [], []
    if s.events:
        ev = EventFile(s.events)
        listeners.append(ev)
        closers.append(ev.close)
    live = None
    if s.quiet:
        pass
    elif not is_interactive(console) or interactive_check:
        listeners.append(LogLines(console))
    else:
        live = LiveDisplay(console, title)
        listeners.append(live)
    return listeners, closers, live


def _session_model(path: Path, data_dir: Optional[Path] = None) -> dict:
    from bisector.model.prepare import source_fingerprint

    return {"path": str(path.resolve()), "fingerprint": source_fingerprint(path, data_dir)}


def run_session(*, strategy_name: str, model: Optional[Path], params: dict, s: SessionOptions, check,
                setup, finish, model_data_dir: Optional[Path] = None):
    """The shared life of a session: open (or resume), set up, search, report, say where it is.

    ``setup(session) -> (strategy, materializer)``; ``finish(session, outcome) -> int`` writes
    the strategy's answer, prints it and returns the exit code, which this returns.
    """
    from bisector.artifacts.session import Session, command_line
    from bisector.checks.interactive import InteractiveCheck
    from bisector.engine import Engine

    if s.jobs < 1:
        raise UserError(f"-j/--jobs must be at least 1, not {s.jobs}")
    if s.iter_info and Path(s.iter_info).is_absolute() and s.jobs > 1:
        raise UserError(f"--iter-info {s.iter_info}: with -j {s.jobs}, checks running at once would share one "
                        f"file", hint="give a relative name: it is written in each iteration directory")
    check_writable(s.events)
    model_meta = _session_model(model, model_data_dir) if model is not None else None
    if model is not None:
        private_like(model)
    if s.session is not None and Path(s.session).is_dir():  # before anything else holds a GPU
        from bisector.checks.process_group import kill_leftovers

        kill_leftovers(Path(s.session).absolute())
    session = Session.open(s.session, command=command_line(), strategy=strategy_name, params=params,
                           model=model_meta)
    checked = sum(1 for e in session.journal if e.source == "check")
    verb = "resuming" if checked else "session"  # a replay's first run starts from given verdicts, not a run
    known = f" ({len(session.journal)} verdicts known)" if session.resumed else ""
    console.print(f"[bold]{verb}:[/] {session.root}{known}", highlight=False)
    try:
        strategy, materializer = setup(session)
        if s.load_debug_replay:
            _import_polygraphy_replay(session, strategy, materializer, s.load_debug_replay)
        interactive = isinstance(getattr(check, "inner", check), InteractiveCheck)
        listeners, closers, live = _listeners(s, f"bisector {strategy_name}", interactive)
        devices = [d.strip() for d in s.devices.split(",") if d.strip()] if s.devices else None
        engine = Engine(strategy, materializer, check, session, jobs=s.jobs, devices=devices,
                        artifacts=s.artifacts, keep_intermediate=s.no_remove_intermediate, listeners=listeners,
                        art_dir=s.art_dir.absolute() if s.art_dir else None, iter_info=s.iter_info)
        try:
            if live:
                with live:
                    outcome = engine.run()
            else:
                outcome = engine.run()
        except (SessionAborted, UserError) as exc:
            from bisector.engine import EndpointError

            if not isinstance(exc, EndpointError):  # resuming would only repeat the endpoints' verdicts
                console.print(f"session kept: {session.root}; continue with: "
                              f"bisector resume {shlex.quote(str(session.root))}", highlight=False)
            raise exc
        finally:
            for close in closers:
                close()
        code = finish(session, outcome) or 0
        console.print(f"[bold]session:[/] {session.root}  (report: {session.root / 'result' / 'report.md'})",
                      highlight=False)
        if s.json:
            print_summary(session, code)
    finally:
        session.close()
    return code


def results(json_mode: bool):
    """Where a command prints its answer for people: stdout, or stderr when ``--json`` keeps stdout
    for the one JSON object."""
    return console if json_mode else make_console(stderr=False)


def print_summary(session, code: int) -> None:
    """``--json``: ``result/report.json`` without its per-iteration rows, plus the exit code, as
    one line on stdout."""
    import json

    doc = json.loads((session.root / "result" / "report.json").read_text())
    doc.pop("iterations", None)
    doc["exit_code"] = code
    sys.stdout.write(json.dumps(doc, default=str) + "\n")
    sys.stdout.flush()


def private_like(model: Path) -> None:
    """Nothing bisector writes from ``model`` (weights, recorded activations, answers, what checks
    write) may be more readable than the model is: the process's umask takes away every permission
    the model's owner did not give (a 0600 model gives 0600 files and 0700 directories)."""
    try:
        mode = os.stat(model).st_mode & 0o777
    except OSError:
        return
    allowed = mode | ((mode & 0o444) >> 2)  # directories: x wherever r is given
    current = os.umask(0)
    os.umask(current | (0o777 & ~allowed))


def inconclusive(session, why: str, force_output: bool, outputs, *, failing_log: bool = True) -> int:
    """Say loudly that the answer cannot be trusted and why, where to look (with ``failing_log``,
    the first failing check's log), and whether ``-o`` was written; returns ``EXIT_INCONCLUSIVE``."""
    from bisector.artifacts.report import first_failure

    written = [str(p) for p in outputs if p is not None]
    console.print(f"[bold red]inconclusive:[/] {escape(why)}", highlight=False, soft_wrap=True)
    if failing_log:
        console.print(f"  first failing check: {escape(first_failure(session))}", highlight=False, soft_wrap=True)
    if written and force_output:
        console.print(f"  written anyway (--force-output): {', '.join(written)}", highlight=False, soft_wrap=True)
    elif written:
        console.print(f"  not written: {', '.join(written)} (the unconfirmed answer is in {session.root / 'result'}; "
                      f"--force-output writes it)", highlight=False, soft_wrap=True)
    return EXIT_INCONCLUSIVE


def _import_polygraphy_replay(session, strategy, materializer, path: Path) -> None:
    """Journal the verdicts of a Polygraphy replay for the candidates they judged (see replay.py)."""
    from bisector.artifacts.replay import import_polygraphy_replay

    n, stopped = import_polygraphy_replay(session, strategy, materializer, path)
    console.print(f"imported {n} verdict(s) from {path} (Polygraphy replay)", highlight=False)
    if stopped:
        console.print(f"[yellow]note:[/] {stopped}", highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from bisector import __version__

        sys.stdout.write(f"bisector {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print bisector's version and exit",
                                       is_eager=True, callback=_version)) -> None:
    """bisector: find where an ONNX or TensorRT model goes wrong."""


# ---------------------------------------------------------------------------------------- entry point
try:  # recent typers vendor click; older ones use click itself
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException as _ClickException
CLICK_ERRORS = (_ClickException,)  # shown as one "bisector: error:" line, not typer's usage block


@guarded
def _polygraphy_flags(opts: list[str]) -> list[str]:
    """Set up logging from Polygraphy's logging flags, say which of its flags change nothing here,
    and return the options typer parses (see cli_polygraphy.py)."""
    opts, notes, verbosity = take_polygraphy_flags(opts)
    verbosity.configure(nested=_depth > 1)
    for note in notes:
        console.print(f"note: {escape(note)}", style="dim", highlight=False, soft_wrap=True)
    return opts



def main(argv: Optional[list[str]] = None, exit: bool = True) -> int:
    """Console entry point. ``--check`` takes the rest of the command line, as in Polygraphy."""
    global _depth
    argv = sys.argv[1:] if argv is None else list(argv)
    _depth += 1
    try:
        code = _main(argv)
    finally:
        _depth -= 1
    if exit:
        sys.exit(code)
    return code


_depth = 0  # main() inside main(): resume and replay run the session's own command line


def _main(argv: list[str]) -> int:
    global _check_argv
    opts, _check_argv = split_argv(argv)
    if _check_argv is not None and not _check_argv:
        error_line("--check needs a command after it")
        code = EXIT_USAGE
    else:
        try:
            rv = app(args=_polygraphy_flags(opts), prog_name="bisector", standalone_mode=False)
            code = rv if isinstance(rv, int) else 0
        except typer.Exit as exc:  # from _polygraphy_flags, outside the app
            code = exc.exit_code
        except CLICK_ERRORS as exc:  # typer's own: an unknown flag, a value of the wrong type
            if type(exc).__name__ == "NoArgsIsHelpError":  # `bisector` alone: the help, as it is
                console.print(exc.format_message(), highlight=False, markup=False)
                return exc.exit_code
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "bisector"
            error_line(exc.format_message(), f"{where} --help" if exc.exit_code == EXIT_USAGE else None)
            code = exc.exit_code
        except typer.Abort:
            console.print("[yellow]stopped[/]", highlight=False)
            code = EXIT_STOPPED
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    return code


# The commands are declared apart (they import this module lazily) and registered here.
from bisector import cli_compare, cli_precision, cli_reduce, cli_sessions  # noqa: E402

CHECK_EPILOG = ("--check CMD ...: everything after --check (or --check-inference) is the check command, as in "
                "Polygraphy. It runs in each iteration directory, where the candidate is polygraphy_debug.onnx and "
                "its inputs inputs.json ({artifact}, {inputs}, $BISECTOR_ARTIFACT, $BISECTOR_INPUTS): exit 0 is good, "
                "another code bad, 125 skip. Without --check: --compare, --check-func, --check-script, or you are "
                "asked at each iteration.")

for _command in (cli_reduce.reduce, cli_precision.precision, cli_compare.compare, cli_sessions.repeat,
                 cli_sessions.resume, cli_sessions.log, cli_sessions.replay):
    app.command(name=_command.__name__,  # registered in the order `bisector --help` lists them
                epilog=CHECK_EPILOG if _command.__name__ in ("reduce", "precision", "repeat") else None)(_command)
