"""Progress for people and for programs: a live rich display, plain log lines (``--quiet`` or no
terminal), and a JSON-lines event file (``--events``) that other tools and the daemon follow.

Part of the CLI layer (with cli.py and display.py): library code only emits events.
"""

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

VERDICT_STYLE = {"good": "green", "bad": "red", "skip": "yellow"}


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class EventFile:
    """Appends each event as one JSON line, flushed, so ``tail -f`` and the daemon see it at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._f.write(json.dumps(event, default=str) + "\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()


class LogLines:
    """One plain line per verdict (``--quiet``, or when stderr is not a terminal)."""

    def __init__(self, console: Console):
        self.console = console

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "verdict":
            spec = " (speculative)" if e.get("speculative") else ""
            note = " " + escape(f"[{e['note']}]") if e.get("note") else ""  # a note is text, not markup
            self.console.print(f"iteration {e['iteration']}: {e['label']} -> [{VERDICT_STYLE[e['verdict']]}]"
                               f"{e['verdict']}[/] in {e['duration_s']:.2f} s{note}{spec}", highlight=False)
            if e.get("output"):
                self.console.print(Text(_indent(e["output"]), style="dim"))
        elif kind == "cached":
            self.console.print(f"cached: {e['label']} -> {e['verdict']}", style="dim", highlight=False)
        elif kind == "dropped":
            self.console.print(f"iteration {e['iteration']}: {e['label']} -> stopped (speculation no longer "
                               f"needed)", style="dim", highlight=False)


def _indent(text: str, lines: int = 15) -> str:
    tail = text.rstrip().splitlines()[-lines:]
    return "\n".join("    " + t for t in tail)


class LiveDisplay:
    """A live panel: iteration, checks (good/bad/skip), steps left, candidate size, elapsed, ETA."""

    def __init__(self, console: Console, title: str):
        self.console = console
        self.title = title
        self.state: dict[str, Any] = {}
        self.last: list[str] = []
        self.running: dict[int, str] = {}
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> "LiveDisplay":
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def __call__(self, e: dict[str, Any]) -> None:
        with self._lock:
            self.state.update({k: v for k, v in e.items() if k in (
                "search_phase", "remaining", "best_size", "checks", "cached", "verdicts", "mean_check_s", "status")})
            kind = e["event"]
            if kind == "check-start":
                self.running[e["iteration"]] = e["label"]
            elif kind == "dropped":
                self.running.pop(e["iteration"], None)
            elif kind == "verdict":
                self.running.pop(e["iteration"], None)
                style = VERDICT_STYLE[e["verdict"]]
                line = f"#{e['iteration']:<3} [{style}]{e['verdict']:<4}[/] {e['duration_s']:6.2f}s  {e['label']}"
                self.last = (self.last + [line])[-6:]
                if e.get("output"):
                    self.live.console.print(Text(f"iteration {e['iteration']} output:\n" + _indent(e["output"]),
                                                 style="dim"))
            self.live.update(self._render())

    def _render(self):
        s = self.state
        v = s.get("verdicts", {"good": 0, "bad": 0, "skip": 0})
        elapsed = time.monotonic() - self.started
        remaining, mean = s.get("remaining"), s.get("mean_check_s")
        eta = remaining * mean if remaining is not None and mean else None
        head = Table.grid(padding=(0, 2))
        head.add_row(Text(self.title, style="bold"), f"phase [cyan]{s.get('search_phase') or 'endpoints'}[/]",
                     f"checks {s.get('checks', 0)} ([green]{v['good']} good[/] / [red]{v['bad']} bad[/] / "
                     f"[yellow]{v['skip']} skip[/]), {s.get('cached', 0)} cached")
        head.add_row("", f"best failing size {s.get('best_size', '-')}", f"~{remaining if remaining is not None else '?'} "
                     f"steps left   elapsed {_clock(elapsed)}   ETA {_clock(eta)}")
        if s.get("search_phase") == "hunt":  # bisector build: the pass rate and builds per hour
            done = v["good"] + v["bad"]
            rate = f"{v['good'] / done:.0%}" if done else "-"
            per_hour = f"{s.get('checks', 0) / elapsed * 3600:.0f}" if elapsed > 1 else "-"
            head.add_row("", f"pass rate [green]{rate}[/]", f"builds per hour {per_hour}")
        if s.get("status"):
            head.add_row("", Text(s["status"]), "")
        body = [head]
        for it, label in sorted(self.running.items()):
            body.append(Text(f"#{it:<3} running   {label}", style="cyan"))
        body.extend(Text.from_markup(line) for line in self.last)
        return Group(*body)


def make_console(stderr: bool = True) -> Console:
    """stderr (diagnostics and progress) or stdout (results); a file or pipe gets wide lines instead
    of rich's default 80 columns."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=160)
    return console


def is_interactive(console: Console) -> bool:
    return console.is_terminal and sys.stderr.isatty()
