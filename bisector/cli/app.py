"""bisector: find where an ONNX or TensorRT model goes wrong.

The command line's entry point, and the one module that knows every command. ``main``:

1. cuts the check command off (everything after ``--check``) and takes Polygraphy's logging flags;
2. parses the rest with typer: a search command returns an :class:`~bisector.cli.build.Invocation`
   (its Command, CheckSpec and RunOptions), ``compare`` and ``log`` return their exit code;
3. runs the invocation through ``bisector.api.run`` (``cli/run.py``) and shows it.

User errors end in one ``bisector: error:`` line and exit 2; an inconclusive search exits 4; a
stopped one 3, with the resume command. Nothing here is kept between calls: the consoles and the
parsed state live in one call of ``main``.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from bisector.cli import compare as cli_compare
from bisector.cli import daemon as cli_daemon
from bisector.cli import hunt as cli_hunt
from bisector.cli import precision as cli_precision
from bisector.cli import reduce as cli_reduce
from bisector.cli import sessions as cli_sessions
from bisector.cli import tactics as cli_tactics
from bisector.cli.options import split_argv
from bisector.cli.polygraphy import take_polygraphy_flags
from bisector.errors import EXIT_INCONCLUSIVE, EXIT_STOPPED, EXIT_USAGE, Inconclusive, SessionAborted, UserError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None, help=__doc__.splitlines()[0],
                  context_settings={"help_option_names": ["-h", "--help"]})

CHECK_EPILOG = ("--check CMD ...: everything after --check (or --check-inference) is the check command, as in "
                "Polygraphy. It runs in each iteration directory, where the candidate is polygraphy_debug.onnx and "
                "its inputs inputs.json ({artifact}, {inputs}, $BISECTOR_ARTIFACT, $BISECTOR_INPUTS): exit 0 is good, "
                "another code bad, 125 skip. Without --check: --compare, --check-func, --check-script, or you are "
                "asked at each iteration.")
# Every command, in the order `bisector --help` lists them.
COMMANDS = (cli_reduce.reduce, cli_precision.precision, cli_compare.compare, cli_sessions.repeat, cli_hunt.build,
            cli_hunt.confirm, cli_sessions.resume, cli_sessions.log, cli_sessions.replay, cli_tactics.diff_tactics)
for _command in COMMANDS:
    app.command(name=_command.__name__,
                epilog=CHECK_EPILOG if _command.__name__ in ("reduce", "precision", "repeat", "build") else None)(_command)
cli_daemon.register(app)  # daemon start|stop|status|run, submit, jobs, watch, logs, report, cancel, clean

FILE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
try:  # recent typers vendor click; older ones use click itself
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException as _ClickException


def _version(value: bool) -> None:
    if value:
        from bisector import __version__

        sys.stdout.write(f"bisector {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print bisector's version and exit",
                                       is_eager=True, callback=_version)) -> None:
    """bisector: find where an ONNX or TensorRT model goes wrong."""


def main(argv: Optional[list[str]] = None, exit: bool = True) -> int:
    """Console entry point. ``--check`` takes the rest of the command line, as in Polygraphy."""
    from bisector.cli.run import Ui

    argv = sys.argv[1:] if argv is None else list(argv)
    json_mode = "--json" in argv[:_check_at(argv)]
    ui = Ui(json_mode=json_mode)
    code = _main(argv, ui)
    if json_mode and not ui.summary_written:  # a script reading stdout gets its one object whatever happened
        import json

        sys.stdout.write(json.dumps({"exit_code": code, "error": ui.last_error}) + "\n")
    if exit:
        sys.exit(code)
    return code


def _check_at(argv: list[str]) -> int:
    from bisector.cli.options import CHECK_FLAGS

    return next((i for i, a in enumerate(argv) if a in CHECK_FLAGS), len(argv))


def _main(argv: list[str], ui) -> int:
    from bisector.cli.build import Invocation
    from bisector.cli.run import execute

    inv = None
    try:
        parsed = parse(argv, ui)
        if not isinstance(parsed, Invocation):
            return parsed
        inv = _with_session_dir(parsed, argv)
        return execute(inv, ui)
    except Inconclusive as exc:
        error_line(ui, exc.message, exc.hint)
        return EXIT_INCONCLUSIVE
    except UserError as exc:
        error_line(ui, exc.message, exc.hint)
        return EXIT_USAGE
    except SessionAborted as exc:
        ui.err.print(f"[yellow]stopped:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_STOPPED
    except OSError as exc:
        if exc.errno not in FILE_ERRNOS:
            raise
        root = _session_of(inv)
        error_line(ui, _os_error_text(exc), f"fix that, then: bisector resume {root}" if root else None)
        return EXIT_USAGE
    except KeyboardInterrupt:
        root = _session_of(inv)
        then = f"; continue with: bisector resume {root}" if root else " before a session was started"
        ui.err.print(f"[yellow]stopped:[/] interrupted{escape(then)}", highlight=False, soft_wrap=True)
        return EXIT_STOPPED


def parse(argv: list[str], ui=None, nested: bool = False):
    """The Invocation (or, for ``compare``/``log``, the exit code) that ``argv`` asks for.
    ``nested``: a logged command line parsed for ``replay`` (its logging flags set nothing up)."""
    from bisector.cli.run import Ui

    ui = ui or Ui()
    opts, check_argv = split_argv(argv)
    if check_argv is not None and not check_argv:
        raise UserError("--check needs a command after it")
    opts, notes, verbosity = take_polygraphy_flags(opts)
    if not nested:
        verbosity.configure(nested=False)
    for note in notes:
        ui.note(note)
    obj = {"check_argv": check_argv, "parse": lambda inner: parse(inner, ui, nested=True), "ui": ui}
    try:
        rv = app(args=opts, prog_name="bisector", standalone_mode=False, obj=obj)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        raise SessionAborted("aborted") from None
    except _ClickException as exc:  # typer's own: an unknown flag, a value of the wrong type
        if type(exc).__name__ == "NoArgsIsHelpError":  # `bisector` alone: the help, as it is
            ui.err.print(exc.format_message(), highlight=False, markup=False)
            return exc.exit_code
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "bisector"
        raise UserError(exc.format_message(), f"{where} --help" if exc.exit_code == EXIT_USAGE else None) from None
    return 0 if rv is None else rv


def _with_session_dir(inv, argv: list[str]):
    """The invocation with its session directory decided now (a new timestamped one by default),
    so that every message can name it, and the command line it came from."""
    import dataclasses

    from bisector.artifacts.session import default_dir

    run = inv.run if inv.run.session is not None else dataclasses.replace(inv.run, session=default_dir())
    return dataclasses.replace(inv, run=run, argv=inv.argv or ["bisector", *argv])


def _session_of(inv) -> Optional[str]:
    root = inv.run.session if inv is not None else None
    return shlex.quote(str(root)) if root is not None and (Path(root) / "session.json").exists() else None


def error_line(ui, message: str, hint: Optional[str] = None) -> None:
    """The one line every user error ends in (``bisector: error: ...``), and its hint below it; the
    option fields that errors from below name are shown as their flags."""
    from bisector.cli.build import render_fields

    message, hint = render_fields(message), render_fields(hint)
    ui.last_error = message
    ui.err.print(f"[bold red]bisector: error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        ui.err.print(f"  hint: {escape(hint)}", highlight=False, style="dim", soft_wrap=True)


def _os_error_text(exc: OSError) -> str:
    """``path: reason`` (``a -> b: reason`` for a rename). A failed write() carries no path: then
    the reason and its errno name."""
    reason = exc.strerror or str(exc)
    paths = " -> ".join(os.fsdecode(p) for p in (exc.filename, exc.filename2) if p is not None)
    return f"{paths}: {reason}" if paths else f"{reason} ({errno.errorcode.get(exc.errno, exc.errno)})"
