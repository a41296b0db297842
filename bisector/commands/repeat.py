"""``bisector repeat``: no model, no artifact file; each run gets its own iteration directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bisector.checks.base import Artifact, Verdict
from bisector.commands.base import Command, Plan, Report
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
    raise UserError(f"`until` {text!r}: expected good, bad or a positive number")


class RepeatMaterializer:
    def fingerprint(self, candidate: Candidate) -> str:
        return items_fingerprint("repeat", candidate.items)

    def materialize(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact:
        return Artifact(workdir=workdir, path=workdir, iteration=iteration, description=candidate.label)


@dataclass(frozen=True)
class RepeatOptions:
    until: str = "bad"  # good, bad, or a number of runs


class RepeatCommand(Command):
    """``bisector repeat``: run the check again and again until it passes, fails, or N times."""

    name = "repeat"
    options_type = RepeatOptions

    def params(self) -> dict[str, Any]:
        return {"until": self.options.until}

    def setup(self, session) -> Plan:
        from bisector.strategies.repeat import RepeatStrategy

        target, limit = parse_until(self.options.until)
        return Plan(RepeatStrategy(until=target, limit=limit), RepeatMaterializer())

    def finish(self, plan: Plan, outcome, session, check, force_output: bool = False) -> Report:
        from bisector.commands.results import RepeatResult

        r = RepeatResult.of(outcome.result)
        text = (f"stopped after {r.runs} run(s): {r.reason}; good {r.good}, bad {r.bad}, skip {r.skip}; "
                f"failure rate {r.bad_rate:.0%}")
        return Report(result=r, files={}, markdown=f"## Answer\n\n{text}\n", lines=(text,),
                      reproduce=tuple(check.argv) if check.kind == "command" else None)
