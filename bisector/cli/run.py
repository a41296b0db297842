"""Run an :class:`~bisector.cli.build.Invocation` through the runner and show it to people:
the session and the plan as they come, progress (a live display, a line per check, or nothing
with ``-q``), the answer on stdout (stderr with ``--json``, which keeps stdout for one JSON
object), and an inconclusive answer said loudly."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from typing import Any

from rich.markup import escape

from bisector import api
from bisector.cli.build import Invocation, render_fields
from bisector.cli.progress import EventFile, LiveDisplay, LogLines, is_interactive, make_console
from bisector.cli.tables import rich_table
from bisector.errors import SessionAborted, UserError


class Ui:
    """The two consoles of one command: ``err`` for diagnostics and progress, ``out`` for the
    answer (``err`` too with ``--json``)."""

    def __init__(self, json_mode: bool = False):
        self.err = make_console()
        self.out = self.err if json_mode else make_console(stderr=False)
        self.summary_written = False  # --json: the one object is on stdout
        self.last_error: str | None = None

    def note(self, text: str) -> None:
        self.err.print(f"note: {escape(text)}", style="dim", highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


def execute(inv: Invocation, ui: Ui) -> int:
    """Show, confirm, run, report; the exit code."""
    if inv.display.json:  # (a replayed command line may ask for it): stdout keeps the one object
        ui.out = ui.err
    for text in inv.notes:
        ui.note(text)
    for text in inv.warnings:
        ui.warn(text)
    if inv.confirm is not None:
        confirm(ui, inv.argv, *inv.confirm)
    interactive = inv.check.interactive
    listeners, closers, live = _listeners(inv, ui, interactive)
    with contextlib.ExitStack() as stack:
        for close in closers:
            stack.callback(close)
        if live is not None:
            stack.enter_context(live)
        try:
            done = api.run(inv.command, inv.check, inv.run, listeners=tuple(listeners), argv=inv.argv)
        except (SessionAborted, UserError) as exc:
            _resume_hint(ui, exc, inv.run.session)
            raise
    for note in done.notes:
        ui.note(note)
    code = show(ui, done)
    if inv.display.json:
        doc = json.loads((done.session.root / "result" / "report.json").read_text())
        doc.pop("iterations", None)
        sys.stdout.write(json.dumps({**doc, "exit_code": code}, default=str) + "\n")
        sys.stdout.flush()
        ui.summary_written = True
    return code


def _resume_hint(ui: Ui, exc: Exception, root) -> None:
    """After a stop or a fixable error in the search (not one that resuming would only repeat)."""
    from bisector.engine import EndpointError

    if root is not None and (root / "session.json").exists() and not isinstance(exc, EndpointError):
        ui.err.print(f"session kept: {root}; continue with: bisector resume {shlex.quote(str(root))}",
                     highlight=False, soft_wrap=True)


def show(ui: Ui, done: api.Run) -> int:
    """The answer for people, and the exit code."""
    report = done.report
    if report.table is not None:
        ui.out.print(rich_table(report.table))
    for line in report.lines:
        ui.out.print(escape(line), highlight=False, soft_wrap=True)
    if report.reproduce:
        ui.out.print(f"reproduce: {escape(' '.join(shlex.quote(a) for a in report.reproduce))}", highlight=False,
                     soft_wrap=True)
    if not report.conclusive:
        inconclusive(ui, done)
    ui.err.print(f"[bold]session:[/] {done.session.root}  (report: {done.session.root / 'result' / 'report.md'})",
                 highlight=False)
    return report.exit_code


def inconclusive(ui: Ui, done: api.Run) -> None:
    """Say loudly that the answer cannot be trusted, why, where to look, and what was not written."""
    from bisector.artifacts.report import first_failure

    report = done.report
    ui.err.print(f"[bold red]inconclusive:[/] {escape(report.doubt)}", highlight=False, soft_wrap=True)
    if report.show_failing_log:
        ui.err.print(f"  first failing check: {escape(first_failure(done.session))}", highlight=False, soft_wrap=True)
    if report.not_written:
        ui.err.print(f"  not written: {', '.join(report.not_written)} (the unconfirmed answer is in "
                     f"{done.session.root / 'result'}; --force-output writes it)", highlight=False, soft_wrap=True)


def confirm(ui: Ui, argv: list[str], source: str, why: str | None, yes: bool) -> None:
    """Show the command a session or log will run, before it runs; where it may not be the user's
    own (``why``), ask, or need ``--yes`` when no one can answer. A shared bug-report session must
    not run a command nobody read."""
    import typer

    shown = " ".join(shlex.quote(a) for a in argv)
    ui.err.print(f"{escape(source)} runs: {escape(shown)}", highlight=False, soft_wrap=True)
    if why is None or yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{source} may not be yours ({why}): read the command above", hint="then pass --yes to run it")
    if not typer.confirm(f"{source} may not be yours ({why}). Run this command?", default=False):
        raise SessionAborted("not confirmed; nothing was run")


def _listeners(inv: Invocation, ui: Ui, interactive: bool) -> tuple[list, list, Any]:
    listeners: list = [SessionLines(ui)]
    closers = []
    if inv.display.events:
        ev = EventFile(inv.display.events)
        listeners.append(ev)
        closers.append(ev.close)
    live = None
    if inv.display.quiet:
        pass
    elif not is_interactive(ui.err) or interactive:
        listeners.append(LogLines(ui.err))
    else:
        live = LiveDisplay(ui.err, f"bisector {inv.command.name}")
        listeners.append(live)
    return listeners, closers, live


class SessionLines:
    """The runner's own events, for people: which session, and what the search will do."""

    def __init__(self, ui: Ui):
        self.ui = ui

    def __call__(self, e: dict[str, Any]) -> None:
        if e["event"] == "session":
            verb = "resuming" if e["resumed"] and not e["replayed"] else "session"
            known = f" ({e['known']} verdicts known)" if e["resumed"] else ""
            self.ui.err.print(f"[bold]{verb}:[/] {e['root']}{known}", highlight=False)
        elif e["event"] == "plan":
            for line in e["intro"]:
                self.ui.err.print(escape(line), highlight=False, soft_wrap=True)
            for line in e["notes"]:
                self.ui.note(render_fields(line))
