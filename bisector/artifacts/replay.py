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
from dataclasses import dataclass
from pathlib import Path

from bisector.artifacts.journal import JOURNAL_NAME, Entry, Journal
from bisector.artifacts.session import load_meta
from bisector.checks.base import Verdict
from bisector.errors import UserError

_LINE = re.compile(r"^(?P<verdict>good|bad|skip|pass|fail)\s+(?P<fp>[0-9a-f]{8,64})\b(?:\s*#\s*(?P<label>.*))?$")
# The comment format_log writes after a verdict: iteration, [phase], label, and (source) if not a check.
_COMMENT = re.compile(r"^iteration \S+ \[(?P<phase>[^\]]*)\](?: \{size (?P<size>\d+)\})? (?P<label>.*?)"
                      r"(?: \((?:replay|import)\))?$")


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
        size = "" if e.size is None else f" {{size {e.size}}}"
        lines.append(f"{e.verdict.value} {e.fingerprint}  # iteration {it} [{e.phase}]{size} {e.label}{src}")
    return "\n".join(lines) + "\n"


def parse_log(path: Path) -> tuple[list[str], str | None, list[tuple[Verdict, str, str, str, int | None]]]:
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
        comment = (m["label"] or "").strip()
        parts = _COMMENT.match(comment)
        phase, label = (parts["phase"], parts["label"]) if parts else ("", comment)
        size = int(parts["size"]) if parts and parts["size"] else None
        verdicts.append((Verdict.parse(m["verdict"]), m["fp"], label, phase, size))
    if not command:
        raise UserError(f"{path}: no '# command:' line; write logs with `bisector log SESSION`")
    return command, cwd, verdicts


def log_is_foreign(logfile: Path) -> str | None:
    """Why a verdict log may not be this user's own (see ``session.foreign``), or None: a log is
    trusted only when the session it names was made by this user on this machine and still holds
    the very command the log would run."""
    from bisector.artifacts.session import foreign

    command, _, _ = parse_log(logfile)
    named = next((line.split(":", 1)[1].strip() for line in Path(logfile).read_text(errors="replace").splitlines()
                  if line.startswith("# session:")), None)
    if not named or not (Path(named) / "session.json").is_file():
        return "the session it comes from is not on this machine"
    try:
        meta = load_meta(Path(named))
    except UserError:
        return "the session it comes from is damaged"
    if meta.get("command") != command:
        return f"its command is not the one session {named} ran"
    return foreign(Path(named), meta)


def seed_journal(root: Path, verdicts: list[tuple[Verdict, str, str, str, int | None]]) -> Path:
    """Create the session directory ``root`` with a journal holding the log's verdicts (taken as
    given: source ``replay``); the command that continues it is the caller's."""
    root = Path(root).absolute()
    if (root / "session.json").exists() or (root / JOURNAL_NAME).exists():
        raise UserError(f"{root} already holds a session", hint="replay into a new `session` directory")
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {root}: {exc.strerror}") from None
    journal = Journal(root / JOURNAL_NAME)
    for verdict, fp, label, phase, size in verdicts:
        journal.append(Entry(fingerprint=fp, verdict=verdict, iteration=None, label=label, phase=phase,
                             source="replay", size=size))
    return root


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
        state = value.get("state") if isinstance(value.get("state"), dict) else {}
        nodes = state.get("num_nodes") if isinstance(state.get("num_nodes"), int) else None
        keyed.append(((phase, int(m[1])), ReplayStep(key, Verdict.GOOD if value["success"] else Verdict.BAD, nodes)))
    return [v for _, v in sorted(keyed)]


@dataclass(frozen=True)
class ReplayStep:
    """One iteration of a Polygraphy debug replay: its key, its verdict, and the size of the model it
    judged (``debug reduce`` records ``num_nodes``; ``debug precision`` records nothing)."""

    key: str
    verdict: Verdict
    num_nodes: int | None = None


def import_polygraphy_replay(session, strategy, materializer, path: Path) -> tuple[int, str]:
    """Journal the verdicts of a Polygraphy debug replay for the candidates they judged.

    Polygraphy keys its replay by iteration only. A `debug reduce` replay records each model's node
    count: an outputs step is then the cone of the one node whose cone has that many nodes, if
    exactly one has and bisector's graph has Polygraphy's nodes; anything else is checked again
    rather than given to the wrong candidate. A replay without node counts (`debug precision`) is
    taken in order, for the candidates this search asks first. Returns the number imported and a
    note on what was not."""
    steps = read_polygraphy_replay(path)
    known = set(session.journal.cache())
    if any(step.num_nodes is not None for step in steps) and hasattr(strategy, "polygraphy_outputs_candidate"):
        return _import_by_size(session, strategy, materializer, steps, known)
    scratch = copy.deepcopy(strategy)
    search = scratch.search()
    ask = next(search)
    n = 0
    for step in steps:
        n += _journal(session, known, materializer, ask.candidate, step.verdict)
        try:
            ask = search.send(step.verdict)
        except StopIteration:
            break
    return n, ""


def _import_by_size(session, strategy, materializer, steps: list[ReplayStep], known) -> tuple[int, str]:
    source = getattr(getattr(materializer, "prepared", None), "source", None)
    if source is not None:
        from bisector.model.graph import op_types

        original = op_types(source)
        if len(original) != strategy.n or "Constant" in original:
            return 0, (f"bisector's graph ({strategy.n} nodes after folding constants) is not the one Polygraphy "
                       f"reduced ({len(original)} nodes): its verdicts cannot be matched to candidates and are "
                       f"checked again")
    n, skipped = 0, []
    for step in steps:
        cand = None
        if step.key.endswith("_outputs") and step.num_nodes is not None:
            cand = strategy.polygraphy_outputs_candidate(step.num_nodes)
        if cand is None:
            skipped.append(step.key)
            continue
        n += _journal(session, known, materializer, cand, step.verdict)
    note = ""
    if skipped:
        note = (f"{len(skipped)} verdict(s) not imported ({', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}): "
                f"inputs steps, and outputs steps whose node count fits no single node's cone, are checked again")
    return n, note


def _journal(session, known: set[str], materializer, candidate, verdict: Verdict) -> int:
    fp = materializer.fingerprint(candidate)
    if fp in known:
        return 0
    session.journal.append(Entry(fingerprint=fp, verdict=verdict, iteration=None, label=candidate.label,
                                 phase=candidate.phase, source="import", size=candidate.size))
    known.add(fp)
    return 1
