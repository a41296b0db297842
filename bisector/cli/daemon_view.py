"""What the daemon's commands show: the jobs table (``bisector jobs``) and the live view of one
job (``bisector watch``), fed by the job's event stream (``--events``, JSON lines)."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from bisector.cli.progress import LiveDisplay, LogLines, _clock, is_interactive, make_console

POLL_S = 0.2
PROGRESS_KEYS = ("search_phase", "remaining", "best_size", "checks", "cached", "verdicts")


def progress_of(events_path: Path) -> dict[str, Any]:
    """The latest progress fields of a job's event stream."""
    from bisector.daemon.store import tail_events

    out: dict[str, Any] = {}
    for event in tail_events(events_path):
        out.update({k: v for k, v in event.items() if k in PROGRESS_KEYS})
    return out


def job_rows(home: Path, jobs) -> list[dict[str, Any]]:
    """Each job as ``jobs --json`` gives it: the daemon's summary, its progress and elapsed time."""
    from bisector.daemon.service import job_paths, summary_of

    rows = []
    for job in jobs:
        row = summary_of(job, home)
        row["progress"] = progress_of(job_paths(home, job)["events"]) if job.started else {}
        end = job.ended if job.state != "running" else time.time()
        row["elapsed_s"] = round(end - job.started, 1) if job.started and end else None
        rows.append(row)
    return rows


def answer_text(answer: Any) -> str:
    if answer is None:
        return ""
    if isinstance(answer, dict) and answer.get("node_names") is not None:
        return ", ".join(answer["node_names"]) or "(none)"
    text = json.dumps(answer, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def progress_text(progress: dict[str, Any]) -> str:
    if not progress:
        return ""
    parts = [f"{progress.get('checks', 0)} checks"]
    if progress.get("remaining") is not None:
        parts.append(f"~{progress['remaining']} left")
    if progress.get("search_phase"):
        parts.append(str(progress["search_phase"]))
    return ", ".join(parts)


INTERRUPTED = "interrupted (daemon not running)"  # a running job's state in the listing once its daemon died


def print_jobs(rows: list[dict[str, Any]], daemon_running: bool = True) -> None:
    """The jobs table. A job the store says is running while no daemon runs (killed with -9) is
    shown as :data:`INTERRUPTED`; the next ``daemon start`` resumes it."""
    console = make_console(stderr=False)
    if not rows:
        console.print("no jobs")
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("id", "name", "state", "elapsed", "progress", "answer", "command"):
        table.add_column(column)
    for r in rows:
        why = r["reason"] or "" if r["state"] in ("failed", "cancelled", "queued") else ""
        answer = answer_text(r["answer"]) or why
        state = INTERRUPTED if r["state"] == "running" and not daemon_running else r["state"]
        table.add_row(str(r["id"]), r["name"] or "", state, _clock(r["elapsed_s"]) if r["elapsed_s"] else "",
                      progress_text(r["progress"]), answer, shlex.join(r["command"]), style=_style(state))
    console.print(table)


def _style(state: str) -> str:
    return {"running": "cyan", "done": "green", "failed": "red", "cancelled": "yellow"}.get(state, "")


def follow(home: Path, store, job_id: int) -> int:
    """Show the job's events as they come (a live panel on a terminal, a line per check
    otherwise) until it ends; then its state and answer. Exit 0 if it ended done, 1 otherwise."""
    from bisector.daemon.service import job_paths
    from bisector.daemon.store import FINISHED

    job = store.get(job_id)
    path = job_paths(home, job)["events"]
    console = make_console(stderr=False)
    display = LiveDisplay(console, f"job {job_id}: bisector {job.argv[0]}") if is_interactive(console) else None
    listener = display if display is not None else LogLines(console)
    if display is not None:
        display.__enter__()
    try:
        reader = _Tail(path)
        while True:
            for event in reader.new():
                listener(event)
            job = store.get(job_id)
            if job.state in FINISHED:
                for event in reader.new():
                    listener(event)
                break
            time.sleep(POLL_S)
    finally:
        if display is not None:
            display.__exit__(None, None, None)
    detail = answer_text(job.answer) if job.state == "done" else job.reason or ""
    console.print(f"job {job_id} {job.state}" + (f": {detail}" if detail else ""), highlight=False)
    return 0 if job.state == "done" else 1


class _Tail:
    """The complete lines appended to a file since the last look."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
