"""The contract every check fulfils: an artifact in, a verdict (with evidence) out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Verdict(str, enum.Enum):
    """What a check says of one candidate.

    ``GOOD`` = the failure is absent (Polygraphy: "pass"), ``BAD`` = the failure is present
    ("fail"), ``SKIP`` = cannot tell (git bisect's exit 125; a crash or timeout when so configured).
    """

    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"

    @classmethod
    def parse(cls, value: "str | bool | Verdict") -> "Verdict":
        """Accept a Verdict, a bool (True = good) or a word: good/bad/skip, pass/fail."""
        if isinstance(value, Verdict):
            return value
        if isinstance(value, bool):
            return cls.GOOD if value else cls.BAD
        word = str(value).strip().lower()
        aliases = {"good": cls.GOOD, "pass": cls.GOOD, "bad": cls.BAD, "fail": cls.BAD, "skip": cls.SKIP}
        if word not in aliases:
            raise ValueError(f"not a verdict: {value!r} (expected good, bad or skip)")
        return aliases[word]


@dataclass
class CheckResult:
    """A verdict plus the evidence behind it, as written to the journal."""

    verdict: Verdict
    exit_code: int | None = None
    output: str = ""  # tail of stdout+stderr, or a comparator summary
    duration_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # e.g. "timeout after 30 s", "killed by SIGSEGV"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "exit_code": self.exit_code,
            "output": self.output,
            "duration_s": round(self.duration_s, 4),
            "metrics": self.metrics,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CheckResult":
        return cls(
            verdict=Verdict(d["verdict"]),
            exit_code=d.get("exit_code"),
            output=d.get("output", ""),
            duration_s=d.get("duration_s", 0.0),
            metrics=d.get("metrics", {}),
            note=d.get("note", ""),
        )


@dataclass
class Artifact:
    """One materialized candidate, ready to be checked.

    ``workdir`` is the iteration directory and the check's working directory; ``path`` is the
    artifact file in it (``polygraphy_debug.onnx`` by default); ``inputs_path`` the
    Polygraphy-format inputs JSON for the candidate's graph inputs, when there is one.
    In-process checks may use ``model`` (an ``onnx.ModelProto``) and ``feeds`` (one
    ``{name: array}`` dict per input sample) directly instead of reading files.
    """

    workdir: Path
    path: Path
    iteration: int
    session_dir: Path | None = None
    inputs_path: Path | None = None
    model: Any = None
    feeds: list[dict[str, Any]] | None = None
    reference: list[dict[str, Any]] | None = None  # expected outputs per sample (compare check)
    weights_dir: Path | None = None  # what the model's external-data locations are relative to
    description: str = ""  # one line for people: "12 nodes: Conv_3 .. Relu_9"
    extra_env: dict[str, str] = field(default_factory=dict)  # per-worker, e.g. CUDA_VISIBLE_DEVICES


class Check(Protocol):
    """Anything with ``run(artifact) -> CheckResult``.

    A check raises ``bisector.errors.UserError`` for a problem the user must fix (the command
    does not exist) and ``bisector.errors.SessionAborted`` to stop the session on purpose.
    Optional: ``parallel = False`` if it must not run two at once or on speculative candidates
    (a person answering), ``terminate()`` to stop everything for good (Ctrl-C), ``cancel()`` to
    stop only the runs in progress (speculation the search no longer needs).
    """

    def run(self, artifact: Artifact) -> CheckResult: ...
