"""``bisector repeat``: no model, no artifact file; each run gets its own iteration directory."""

from __future__ import annotations

from pathlib import Path

from bisector.checks.base import Artifact, Verdict
from bisector.errors import UserError
from bisector.model.fingerprint import items_fingerprint
from bisector.strategies.base import Candidate


def parse_until(text: str) -> tuple[Verdict | None, int | None]:
    """``good``/``bad`` -> stop at that verdict; ``N`` -> run N times."""
    word = text.strip().lower()
    if word in ("good", "bad", "pass", "fail"):
        return Verdict.parse(word), None
    if word.isdigit() and int(word) > 0:
        return None, int(word)
    raise UserError(f"--until {text!r}: expected good, bad or a positive number")


class RepeatMaterializer:
    def fingerprint(self, candidate: Candidate) -> str:
        return items_fingerprint("repeat", candidate.items)

    def materialize(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact:
        return Artifact(workdir=workdir, path=workdir, iteration=iteration, description=candidate.label)
