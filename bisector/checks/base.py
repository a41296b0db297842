"""The contract every check fulfils: an artifact in, a verdict (with evidence) out."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


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
    cause: str = ""  # "timeout" or "crash" when the verdict comes from the check not finishing, not from its answer;
    # "build" for a skip whose artifact could not be made (Artifact.skip)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "exit_code": self.exit_code,
            "output": self.output,
            "duration_s": round(self.duration_s, 4),
            "metrics": self.metrics,
            "note": self.note,
            **({"cause": self.cause} if self.cause else {}),
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
            cause=d.get("cause", ""),
        )


@dataclass
class Artifact:
    """One materialized candidate, ready to be checked.

    ``workdir`` is the iteration directory and the check's working directory; ``path`` is the
    artifact file in it (``polygraphy_debug.onnx`` by default); ``inputs_path`` the
    Polygraphy-format inputs JSON for the candidate's graph inputs, when there is one.
    In-process checks may use ``model`` (an ``onnx.ModelProto``) and ``feeds`` (one
    ``{name: array}`` dict per input sample) directly instead of reading files.
    A materializer that cannot make the artifact but wants the search to go on (one build of a
    hunt failed) sets ``skip`` to the reason: the engine journals a SKIP with it as the note
    (``cause="build"``) without running the check. ``prepare``, when set, makes the files where
    the check runs (a build on a Ray node: see ``Materializer``'s ``deferred``); it returns such a
    reason, or "" when the files are there.
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
    skip: str = ""  # why it could not be made (a build that failed): the engine journals a skip, no check
    prepare: Callable[[], str] | None = None  # makes the files where the check runs; "" or a skip reason


class Check(ABC):
    """An artifact in, a :class:`CheckResult` out: subclass it and write :meth:`run`.

    A check raises ``bisector.errors.UserError`` for a problem the user must fix (the command
    does not exist) and ``bisector.errors.SessionAborted`` to stop the session on purpose.
    Every other capability the engine uses is declared here with its default; a check overrides
    only what it has:

    - ``parallel`` (True): False if it must not run two at once or on speculative candidates
      (a person answering); the engine then runs with ``-j 1``.
    - ``cancellable`` (False) with :meth:`cancel`: True if :meth:`cancel` can stop runs in
      progress (speculation the search no longer needs). A check that cannot is let run to its
      end and its verdict is journaled.
    - :meth:`terminate`: stop everything for good (Ctrl-C); later runs raise ``SessionAborted``.
    - :meth:`should_show`: whether a result's output goes with its verdict to the console.
    - ``inner``: the check a wrapper (``RepeatCheck``) runs; the check itself otherwise.

    A wrapper forwards every capability to its inner check.
    """

    parallel: bool = True
    cancellable: bool = False

    @abstractmethod
    def run(self, artifact: Artifact) -> CheckResult:
        """Check one artifact (may be called from several threads at once when ``parallel``)."""

    def cancel(self, workdir: Path | None = None) -> None:
        """Stop the runs in progress, or only the one in ``workdir``; their ``run`` raises
        ``SessionAborted``. Default: nothing to stop (``cancellable`` is False)."""

    def terminate(self) -> None:
        """Stop every run in progress and refuse later ones. Default: nothing to stop."""

    def should_show(self, result: CheckResult) -> bool:
        """Whether ``result.output`` is shown with its verdict. Default: never."""
        return False

    @property
    def inner(self) -> "Check":
        """The check that decides (a wrapper's inner check); the check itself by default."""
        return self
