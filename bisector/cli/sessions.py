"""The session commands: ``resume``, ``log``, ``replay`` (as ``git bisect log``/``replay``) and
``repeat`` (Polygraphy's ``debug repeat``).

``resume`` rebuilds the session's command, check and run options from its ``session.json``
(``bisector.api.resume``); ``replay`` parses the logged command line with the same parser as the
command itself (handed over in the click context) into a new session seeded with the log's
verdicts. Both show the command before it runs, and confine a stranger's paths to the session.
"""


import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bisector.cli.options import CheckOptions, CompareOptions, SessionOptions, uses

YES_HELP = "Run the stored command without asking, even from a session or log made by someone else"


def resume(
    session: Annotated[Path, typer.Argument(help="The session directory")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the answer here instead of the original command's -o")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help=YES_HELP)] = False,
    jobs: Annotated[Optional[int], typer.Option("-j", "--jobs", help="Checks at once (default: as the session ran)")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress: only the answer, warnings and errors")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary object on stdout")] = False,
    events: Annotated[Optional[Path], typer.Option("--events", help="Append a JSON-lines event stream to this file")] = None,
):
    """Continue a session after Ctrl-C, a crash or kill -9 (at most the check in flight is repeated).

    The stored command is shown before it runs; a session made by another user or on another
    machine asks first (or needs --yes), and writes its files inside the session, not where the
    stored command says."""
    from bisector import api
    from bisector.artifacts.session import foreign, load_meta
    from bisector.cli.build import Display, Invocation, moved_outputs

    root = session.absolute()
    meta = load_meta(root)
    why = foreign(root, meta)
    jobs_given = {"jobs": jobs} if jobs is not None else None
    command, check, run = api.resume(root, output=output, confine=why is not None, options=jobs_given)
    if why:
        stored, _, _ = api.resume(root)
        notes = [f"resume writes {line}" for line in moved_outputs(stored, command)]
    else:
        notes = []
    return Invocation(command, check, run, Display(quiet, json_out, events and events.absolute()),
                      argv=list(meta["command"]), notes=notes, confirm=(f"session {root}", why, yes))


def log(session: Annotated[Path, typer.Argument(help="The session directory")]):
    """Print the session's verdicts as an editable log (git bisect log); replay it with `bisector replay`."""
    from bisector.artifacts.replay import format_log

    sys.stdout.write(format_log(session))
    return 0


def replay(
    ctx: typer.Context,
    logfile: Annotated[Path, typer.Argument(help="A log written by `bisector log` (edited or not)")],
    session: Annotated[Optional[Path], typer.Option("--session", help="Directory of the new session")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the answer here (default: the new session's result/, never over the original command's files)")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help=YES_HELP)] = False,
):
    """Replay an edited verdict log (git bisect replay): its verdicts are taken as given, the rest is checked.

    The logged command is shown before it runs; a log that does not come from a session this user
    made on this machine asks first (or needs --yes). The replay writes its answer and files into
    its own session's result/ (or -o), never over the files the original command wrote."""
    from bisector.artifacts.replay import log_is_foreign, parse_log, seed_journal
    from bisector.artifacts.session import default_dir
    from bisector.cli.build import moved_outputs
    from bisector.cli.run import Ui, confirm
    from bisector.errors import UserError

    argv, cwd, verdicts = parse_log(logfile)
    root = session.absolute() if session else default_dir()
    with _inside(cwd):  # the logged command's relative paths are the original directory's
        inv = ctx.obj["parse"](list(argv[1:]))
    if not hasattr(inv, "command"):
        raise UserError(f"{logfile}: the logged command is not a search that can be replayed")
    command = inv.command.confined(root)
    if output is not None:
        command = command.replace(output=output.absolute())
    run = dataclasses.replace(inv.run, session=root, art_dir=None if inv.run.art_dir is None else root / "result",
                              iter_info=Path(inv.run.iter_info).name if inv.run.iter_info else None)
    display = dataclasses.replace(inv.display, events=inv.display.events and root / "result" / inv.display.events.name)
    ui = Ui()
    confirm(ui, list(argv), f"log {logfile}", log_is_foreign(logfile), yes)
    seed_journal(root, verdicts)
    notes = [f"replay writes {line}" for line in moved_outputs(inv.command, command)]
    return dataclasses.replace(inv, command=command, run=run, display=display, notes=inv.notes + notes,
                               argv=list(argv), confirm=None)


@contextlib.contextmanager
def _inside(cwd: Optional[str]):
    here = os.getcwd()
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(here)


@uses(CheckOptions, SessionOptions)
def repeat(
    chk: CheckOptions,
    s: SessionOptions,
    until: Annotated[str, typer.Option("--until", help="good, bad, or a number of iterations")] = "bad",
):
    """Run the check again and again until it passes, fails, or N times (Polygraphy's debug repeat)."""
    from bisector.cli import build
    from bisector.commands.repeat import RepeatCommand, RepeatOptions, parse_until

    parse_until(until)  # a bad --until is refused before a session exists
    return build.Invocation(RepeatCommand(RepeatOptions(until=until)), build.check_spec(chk, CompareOptions()),
                            build.run_options(s), build.display(s))
