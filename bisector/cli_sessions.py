"""The session commands: ``resume``, ``log``, ``replay`` (as ``git bisect log``/``replay``) and
``repeat`` (Polygraphy's ``debug repeat``).

Registered by ``bisector/cli.py`` at its end; ``resume`` and ``replay`` run a session's own
command line through ``cli.main``.
"""

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bisector.cli_options import CheckOptions, CompareOptions, SessionOptions, guarded, uses
from bisector.errors import UserError


@guarded
def resume(
    session: Annotated[Path, typer.Argument(help="The session directory")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the answer here instead of the original command's -o")] = None,
):
    """Continue a session after Ctrl-C, a crash or kill -9 (at most the check in flight is repeated)."""
    from bisector import cli
    from bisector.artifacts.replay import set_flag, with_session
    from bisector.artifacts.session import load_meta

    meta = load_meta(session)
    argv = with_session(list(meta["command"][1:]), str(session.resolve()))
    if output is not None and meta.get("strategy") == "repeat":
        raise UserError("a repeat session writes no model: -o does not apply to it")
    if output is not None:
        argv = set_flag(argv, ("-o", "--output"), str(output.absolute()))
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
):
    """Replay an edited verdict log (git bisect replay): its verdicts are taken as given, the rest is checked."""
    from bisector import cli
    from bisector.artifacts.replay import seed_session

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
        cli.console.print(text, highlight=False)

    cli.run_session(strategy_name="repeat", model=None, params={"until": until, "check": cli._check_argv}, s=s,
                check=check, setup=setup, finish=finish)
