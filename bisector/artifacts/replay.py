"""Verdict logs in and out: ``bisector log`` / ``bisector replay`` (git bisect's log/replay), and
the import of Polygraphy debug replays (``--load-debug-replay``).

A log line is ``<verdict> <fingerprint>  # iteration N [phase] label``. Fingerprints name
candidates by content, so a replayed verdict applies to exactly the candidate it was given for,
whatever order the search now asks in. Polygraphy's replays are keyed by iteration index only; they
are matched to our candidates by driving a scratch copy of the strategy with them, in order.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from bisector.artifacts.journal import JOURNAL_NAME, Entry, Journal
from bisector.artifacts.session import default_dir, load_meta, set_command
from bisector.checks.base import Verdict
from bisector.errors import UserError

_LINE = re.compile(r"^(?P<verdict>good|bad|skip|pass|fail)\s+(?P<fp>[0-9a-f]{8,64})\b(?:\s*#\s*(?P<label>.*))?$")


def format_log(session_dir: Path) -> str:
    meta = load_meta(session_dir)
    journal = Journal(Path(session_dir) / JOURNAL_NAME)
    lines = ["# bisector log: edit the verdicts (good, bad, skip) or delete lines, then: bisector replay FILE",
             f"# session: {Path(session_dir).resolve()}",
             f"# command: {json.dumps(meta.get('command'))}",
             f"# cwd: {meta.get('cwd', '')}"]
    for e in journal:
        it = "-" if e.iteration is None else e.iteration
        src = "" if e.source == "check" else f" ({e.source})"
        lines.append(f"{e.verdict.value} {e.fingerprint}  # iteration {it} [{e.phase}] {e.label}{src}")
    return "\n".join(lines) + "\n"


def parse_log(path: Path) -> tuple[list[str], str | None, list[tuple[Verdict, str, str]]]:
    if not Path(path).exists():
        raise UserError(f"{path}: no such log file")
    command, cwd, verdicts = None, None, []
    for n, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("# command:"):
            try:
                command = json.loads(line.split(":", 1)[1])
            except ValueError:
                raise UserError(f"{path}:{n}: the command line is not valid JSON") from None
            continue
        if line.startswith("# cwd:"):
            cwd = line.split(":", 1)[1].strip() or None
            continue
        if line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise UserError(f"{path}:{n}: expected '<good|bad|skip> <fingerprint>', got {line[:60]!r}")
        verdicts.append((Verdict.parse(m["verdict"]), m["fp"], (m["label"] or "").strip()))
    if not command:
        raise UserError(f"{path}: no '# command:' line; write logs with `bisector log SESSION`")
    return command, cwd, verdicts


def seed_session(logfile: Path, session: Path | None) -> list[str]:
    """Create a session whose journal holds the log's verdicts; return the argv that continues it."""
    import os

    command, cwd, verdicts = parse_log(logfile)
    root = Path(session) if session else default_dir()
    if (root / "session.json").exists() or (root / JOURNAL_NAME).exists():
        raise UserError(f"{root} already holds a session", hint="replay into a new --session directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {root}: {exc.strerror}") from None
    journal = Journal(root / JOURNAL_NAME)
    for verdict, fp, label in verdicts:
        journal.append(Entry(fingerprint=fp, verdict=verdict, iteration=None, label=label, source="replay"))
    argv = with_session(list(command[1:]), str(root.resolve()))
    set_command(argv)  # the new session records the command it runs, so that resume runs it again
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)
    return argv


def with_session(argv: list[str], root: str) -> list[str]:
    """``argv`` with its ``--session`` (bisector's, before ``--check``) set to ``root``; the check
    command after ``--check`` is never touched, even if it has a ``--session`` of its own."""
    end = argv.index("--check") if "--check" in argv else len(argv)
    head, tail = argv[:end], argv[end:]
    for i, arg in enumerate(head):
        if arg == "--session" and i + 1 < len(head):
            head[i + 1] = root
            return head + tail
        if arg.startswith("--session="):
            head[i] = f"--session={root}"
            return head + tail
    return head + ["--session", root] + tail


def read_polygraphy_replay(path: Path) -> list[Verdict]:
    """Verdicts of a Polygraphy debug replay, in iteration order (``_N<i>``, reduce's
    ``_N<i>_outputs`` before ``_N<i>_inputs``)."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such replay file") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a Polygraphy debug replay ({exc})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: not a Polygraphy debug replay (expected a JSON object)")
    keyed = []
    for key, value in doc.items():
        m = re.fullmatch(r"_N(\d+)(?:_(outputs|inputs))?", key)
        if not m or not isinstance(value, dict) or "success" not in value:
            continue
        phase = {"outputs": 0, None: 0, "inputs": 1}[m[2]]
        keyed.append(((phase, int(m[1])), Verdict.GOOD if value["success"] else Verdict.BAD))
    return [v for _, v in sorted(keyed)]


def import_polygraphy_replay(session, strategy, materializer, path: Path) -> int:
    verdicts = read_polygraphy_replay(path)
    scratch = copy.deepcopy(strategy)
    search = scratch.search()
    ask = next(search)
    known = session.journal.cache()
    n = 0
    for verdict in verdicts:
        fp = materializer.fingerprint(ask.candidate)
        if fp not in known:
            session.journal.append(Entry(fingerprint=fp, verdict=verdict, iteration=None, label=ask.candidate.label,
                                         phase=ask.candidate.phase, source="import"))
            n += 1
        try:
            ask = search.send(verdict)
        except StopIteration:
            break
    return n
