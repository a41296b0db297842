"""``journal.jsonl``: one line per verdict, appended and fsync'd before the search goes on.

A line is written only once a check has finished, so ``kill -9`` loses at most the checks in
flight. A torn last line (killed mid-write) is ignored on reading, and the next append starts on a
fresh line. Entries are keyed by candidate fingerprint: that is the verdict cache, and resume is
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

    def to_json(self) -> dict[str, Any]:
        d = {"fingerprint": self.fingerprint, "verdict": self.verdict.value, "iteration": self.iteration,
             "phase": self.phase, "label": self.label, "source": self.source, "time": round(self.time, 3)}
        if self.speculative:
            d["speculative"] = True
        if self.evidence is not None:
            d["evidence"] = self.evidence
        if self.items is not None:
            d["items"] = self.items
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Entry":
        return cls(fingerprint=d["fingerprint"], verdict=Verdict(d["verdict"]), iteration=d.get("iteration"),
                   label=d.get("label", ""), phase=d.get("phase", ""), source=d.get("source", "check"),
                   speculative=d.get("speculative", False), evidence=d.get("evidence"),
                   time=d.get("time", 0.0), items=d.get("items"))


def read(path: Path) -> list[Entry]:
    """Every complete entry; a torn final line is skipped."""
    if not path.exists():
        return []
    entries = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn write from a kill: everything before it is intact
            line = line.strip()
            if not line:
                continue
            try:
                entries.append(Entry.from_json(json.loads(line)))
            except (ValueError, KeyError):
                continue
    return entries


class Journal:
    """Append-only, fsync'd. ``append`` raises ``UserError`` on a full disk, after which the
    journal on disk is still consistent (at worst a torn last line, which readers skip)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries = read(self.path)
        self._repair_tail()

    def _repair_tail(self) -> None:
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    with open(self.path, "ab") as g:
                        g.write(b"\n")

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

    def cache(self) -> dict[str, Entry]:
        """fingerprint -> the latest entry for it (an edited replay may override a verdict)."""
        out: dict[str, Entry] = {}
        for e in self.entries:
            out[e.fingerprint] = e
        return out

    def next_iteration(self) -> int:
        its = [e.iteration for e in self.entries if e.iteration is not None]
        return max(its) + 1 if its else 0
