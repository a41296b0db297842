"""``journal.jsonl``: one line per verdict, appended and fsync'd before the search goes on.

A line is written only once a check has finished, so ``kill -9`` loses at most the checks in
flight. A torn last line (killed mid-write) is ignored on reading and cut off when the journal is
next opened for a session. Any other line that does not read is damage: a one-line error names it,
and the file is left as it is. Two opposite verdicts for one candidate (``conflicts``) are reported
too, never silently used. Entries are keyed by candidate fingerprint: that is the verdict cache, and resume is
"replay these verdicts into a fresh strategy".
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bisector.checks.base import Verdict
from bisector.errors import UserError

JOURNAL_NAME = "journal.jsonl"


@dataclass
class Entry:
    fingerprint: str
    verdict: Verdict
    iteration: int | None
    label: str = ""
    phase: str = ""
    source: str = "check"  # check | replay | import
    speculative: bool = False
    evidence: dict[str, Any] | None = None
    time: float = 0.0
    items: list | None = None
    size: int | None = None  # the candidate's size (its items are kept only up to 4096 of them)

    def to_json(self) -> dict[str, Any]:
        d = {"fingerprint": self.fingerprint, "verdict": self.verdict.value, "iteration": self.iteration,
             "phase": self.phase, "label": self.label, "source": self.source, "time": round(self.time, 3)}
        if self.speculative:
            d["speculative"] = True
        if self.evidence is not None:
            d["evidence"] = self.evidence
        if self.items is not None:
            d["items"] = self.items
        if self.size is not None:
            d["size"] = self.size
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Entry":
        """An entry from its journal line; ``ValueError`` naming the field that is missing or of the
        wrong type (a hand-edited or damaged journal)."""
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        for key, types, required in _FIELDS:
            if key not in d and not required:
                continue
            if key not in d:
                raise ValueError(f"no {key!r}")
            if not isinstance(d[key], types) or isinstance(d[key], bool) and bool not in types:
                raise ValueError(f"{key!r} is {d[key]!r}")
        if d.get("items") is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in d["items"]):
            raise ValueError(f"'items' holds a value that is no node position: {d['items']!r}"[:200])
        return cls(fingerprint=d["fingerprint"], verdict=Verdict(d["verdict"]), iteration=d.get("iteration"),
                   label=d.get("label", ""), phase=d.get("phase", ""), source=d.get("source", "check"),
                   speculative=d.get("speculative", False), evidence=d.get("evidence"),
                   time=d.get("time", 0.0), items=d.get("items"), size=d.get("size"))


# (field, accepted types, required) of a journal line
_FIELDS = (("fingerprint", (str,), True), ("verdict", (str,), True), ("iteration", (int, type(None)), False),
           ("label", (str,), False), ("phase", (str,), False), ("source", (str,), False),
           ("speculative", (bool,), False), ("evidence", (dict, type(None)), False),
           ("time", (int, float), False), ("items", (list, type(None)), False), ("size", (int, type(None)), False))


def read(path: Path) -> list[Entry]:
    """Every complete entry; a torn final line (a write cut by a kill) is skipped. A damaged line
    before it is a ``UserError`` naming the line: the journal is left as it is, for a person to mend."""
    if not path.exists():
        return []
    entries = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # torn write from a kill: everything before it is intact
            line = line.strip()
            if not line:
                continue
            try:
                entries.append(Entry.from_json(json.loads(line)))
            except ValueError as exc:  # json's errors and Verdict's are ValueErrors too
                raise UserError(f"{path}:{n} is damaged: {exc}",
                                hint="mend or delete that line (bisector log, edit, bisector replay), or start "
                                     "a new session") from None
    return entries


class Journal:
    """Append-only, fsync'd. ``append`` raises ``UserError`` on a full disk, after which the
    journal on disk is still consistent (at worst a torn last line, which readers skip)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries = read(self.path)
        self._repair_tail()

    def _repair_tail(self) -> None:
        """Cut a torn last line (a write cut short by a kill): it holds no verdict, and left in
        place it would read as a damaged line once the next append follows it."""
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) == b"\n":
                    return
                f.seek(0)
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, entry: Entry) -> None:
        if not entry.time:
            entry.time = time.time()
        line = json.dumps(entry.to_json(), separators=(",", ":")) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise UserError(f"disk full while writing {self.path}; the session is consistent up to the "
                                f"last verdict", hint=f"free some space, then: bisector resume {self.path.parent}") from None
            raise UserError(f"cannot write {self.path}: {exc.strerror}",
                            hint=f"bisector resume {self.path.parent} once it is writable") from None
        self.entries.append(entry)

    def conflicts(self) -> list[tuple[Entry, Entry]]:
        """Pairs of checks that gave one candidate (fingerprint) opposite verdicts: two processes ran
        the session at once, or the journal was edited by hand. A replayed or imported verdict may
        override a check's on purpose and is no conflict."""
        seen: dict[str, Entry] = {}
        out = []
        for e in self.entries:
            if e.source != "check" or e.verdict == Verdict.SKIP:
                continue
            first = seen.setdefault(e.fingerprint, e)
            if first.verdict != e.verdict:
                out.append((first, e))
        return out

    def cache(self) -> dict[str, Entry]:
        """fingerprint -> the latest entry for it (an edited replay may override a verdict)."""
        out: dict[str, Entry] = {}
        for e in self.entries:
            out[e.fingerprint] = e
        return out

    def next_iteration(self) -> int:
        its = [e.iteration for e in self.entries if e.iteration is not None]
        return max(its) + 1 if its else 0
