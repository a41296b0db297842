"""The session commands: ``resume``, ``log``, ``replay`` (as ``git bisect log``/``replay``) and
``repeat`` (Polygraphy's ``debug repeat``).

Registered by ``bisector/cli.py`` at its end; ``resume`` and ``replay`` run a session's own
command line through ``cli.main``.
"""

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from bisector.cli_options import CheckOptions, CompareOptions, SessionOptions, guarded, uses
from bisector.errors import SessionAborted, UserError


YES_HELP = "Run the stored command without asking, even from a session or log made by someone else"


def confirm_command(argv: list[str], source: str, why: Optional[str], yes: bool) -> None:
    """Show the command a session or log will run, before it runs; where it may not be the user's
    own (``why``), ask, or need ``--yes`` when no one can answer. A shared bug-report session must
    not run a command nobody read."""
    from bisector import cli

    shown = " ".join(shlex.quote(a) for a in ["bisector", *argv])
    cli.console.print(f"{source} runs: {escape(shown)}", highlight=False, soft_wrap=True)
    if why is None or yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{source} may not be yours ({why}): read the command above", hint="then pass --yes to run it")
    if not typer.confirm(f"{source} may not be yours ({why}). Run this command?", default=False):
        raise SessionAborted("not confirmed; nothing was run")


@guarded
def resume(
    session: Annotated[Path, typer.Argument(help="The session directory")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the answer here instead of the original command's -o")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help=YES_HELP)] = False,
):
    """Continue a session after Ctrl-C, a crash or kill -9 (at most the check in flight is repeated).

    The stored command is shown before it runs; a session made by another user or on another
    machine asks first (or needs --yes), and writes its files inside the session, not where the
    stored command says."""
    from bisector import cli
    from bisector.artifacts.replay import redirect_outputs, set_flag, with_session
    from bisector.artifacts.session import foreign, load_meta

    meta = load_meta(session)
    root = session.resolve()
    argv = with_session(list(meta["command"][1:]), str(root))
    if output is not None and meta.get("strategy") == "repeat":
        raise UserError("a repeat session writes no model: -o does not apply to it")
    why = foreign(root, meta)
    if why is not None:  # its paths are someone else's: confine them to the session
        argv, said = redirect_outputs(argv, root, output)
        for line in said:
            cli.console.print(f"resume writes {line}", highlight=False, soft_wrap=True)
    elif output is not None:
        argv = set_flag(argv, ("-o", "--output"), str(output.absolute()))
    confirm_command(argv, f"session {root}", why, yes)
    cwd = meta.get("cwd")
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)
    raise typer.Exit(cli.main(argv, exit=False))


@guarded
def log(session: Annotated[Path, typer.Argument(help="The session directory")]):
    """Print the session's verdicts as an editable log (git bisect log); replay it with `bisector replay`."""
    from bisector.artifacts.replay import format_log

    sys.stdout.write(format_log(session))


@guarded
def replay(
    logfile: Annotated[Path, typer.Argument(help="A log written by `bisector log` (edited or not)")],
    session: Annotated[Optional[Path], typer.Option("--session", help="Directory of the new session")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the answer here (default: the new session's result/, never over the original command's files)")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help=YES_HELP)] = False,
):
    """Replay an edited verdict log (git bisect replay): its verdicts are taken as given, the rest is checked.

    The logged command is shown before it runs; a log that does not come from a session this user
    made on this machine asks first (or needs --yes)."""
    from bisector import cli
    from bisector.artifacts.replay import log_is_foreign, parse_log, redirect_outputs, seed_session, with_session

    command, _, _ = parse_log(logfile)
    preview, _ = redirect_outputs(with_session(list(command[1:]), "NEW_SESSION"), Path("NEW_SESSION"), output)
    confirm_command(preview, f"log {logfile}", log_is_foreign(logfile), yes)
    argv, redirected = seed_session(logfile, session, output)
    for line in redirected:
        cli.console.print(f"replay writes {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(cli.main(argv, exit=False))


@guarded
@uses(CheckOptions, SessionOptions)
def repeat(
    chk: CheckOptions,
    s: SessionOptions,
    until: Annotated[str, typer.Option("--until", help="good, bad, or a number of iterations")] = "bad",
):
    """Run the check again and again until it passes, fails, or N times (Polygraphy's debug repeat)."""
    from bisector import cli
    from bisector.commands.repeat import RepeatMaterializer, parse_until
    from bisector.strategies.repeat import RepeatStrategy

    target, limit = parse_until(until)
    check = cli.build_check(chk, CompareOptions())

    def setup(session):
        return RepeatStrategy(until=target, limit=limit), RepeatMaterializer()

    def finish(session, outcome):
        from bisector.artifacts.report import write_reports

        r = outcome.result
        text = (f"stopped after {r['runs']} run(s): {r['reason']}; good {r['good']}, bad {r['bad']}, "
                f"skip {r['skip']}; failure rate {r['bad_rate']:.0%}")
        write_reports(session, strategy="repeat", stats=outcome.stats, result=r, answer_md=f"## Answer\n\n{text}\n",
                      reproduce=cli._check_argv)
        cli.results(s.json).print(text, highlight=False)

    cli.run_session(strategy_name="repeat", model=None, params={"until": until, "check": cli._check_argv}, s=s,
                check=check, setup=setup, finish=finish)
