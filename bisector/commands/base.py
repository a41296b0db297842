"""What a command is, for the runner (``bisector.api.run``), the CLI, the tests and the daemon alike.

A :class:`Command` holds what the user asked (its ``options``, a dataclass) and knows four things:

- ``params()``: what a resume must find unchanged;
- ``setup(session)`` -> :class:`Plan`: the strategy, the materializer and the lines that say what
  the search will do;
- ``finish(plan, outcome, session, check, force_output)`` -> :class:`Report`: the typed result, the files it
  wrote, its table, ``report.md``'s answer section and the command that reproduces the answer;
- ``to_json()`` / ``from_json()``: a session records its command, not an argv, so that ``resume``
  rebuilds it from ``session.json``.

It prints nothing. A command that takes a model names the option fields that are outputs
(``OUTPUT_FIELDS``), so that a session from elsewhere can be confined to its own directory.

Example (no CLI)::

    cmd = ReduceCommand(ReduceOptions(model=Path("model.onnx"), output=Path("reduced.onnx")))
    run = api.run(cmd, CheckSpec.command(["python", "check.py", "{artifact}"]))
    run.report.result.node_names
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bisector.codec import decode, encode
from bisector.errors import EXIT_INCONCLUSIVE


@dataclass(frozen=True)
class Plan:
    """What ``setup`` hands the runner: the search and how to materialize its candidates, the
    lines that say what it will do (``intro``) and its notes (``notes``, shown dimmer), and the
    command's own set-up (``state``) for ``finish``."""

    strategy: Any
    materializer: Any
    intro: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    state: Any = None
    artifacts: tuple[str, ...] = ()  # files each iteration writes, sorted into good/ and bad/ like --artifacts


@dataclass(frozen=True)
class Table:
    """One table of nodes, rendered as markdown here and as a rich table by the CLI. Cells in the
    ``code`` columns are names (backticks in markdown)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...] = ()
    code: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"{len(row)} cells for {len(self.columns)} columns")

    def markdown(self) -> list[str]:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        for row in self.rows:
            lines.append("| " + " | ".join(_md_cell(c, i in self.code) for i, c in enumerate(row)) + " |")
        return lines


def _md_cell(text: str, code: bool) -> str:
    text = text.replace("|", "\\|")
    return f"`{text}`" if code and text else text


@dataclass(frozen=True)
class Report:
    """What a finished search says. ``doubt`` (empty when ``conclusive``) says why its answer
    cannot be trusted; ``show_failing_log`` whether the first failing check's log tells why."""

    result: Any  # a frozen dataclass with to_json()
    files: dict[str, str]
    markdown: str
    table: Table | None = None
    lines: tuple[str, ...] = ()
    reproduce: tuple[str, ...] | None = None
    conclusive: bool = True
    doubt: str = ""
    show_failing_log: bool = True
    not_written: tuple[str, ...] = ()  # outputs held back because the answer is inconclusive

    @property
    def exit_code(self) -> int:
        return 0 if self.conclusive else EXIT_INCONCLUSIVE


class Command(ABC):
    """Base class of reduce, precision and repeat (see the module docstring)."""

    name: ClassVar[str]
    options_type: ClassVar[type]
    OUTPUT_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any):
        self.options = options

    @property
    def model(self) -> Path | None:
        return getattr(self.options, "model", None)

    @property
    def per_iteration(self) -> tuple[str, ...]:
        """File names a check finds in each iteration directory (not files of its own)."""
        name = getattr(self.options, "iter_artifact", None)
        return tuple(n for n in (name, "inputs.json") if n)

    @property
    def data_dir(self) -> Path | None:
        return getattr(self.options, "external_data_dir", None)

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """What changes the search: a resume with other params is refused."""

    @abstractmethod
    def setup(self, session) -> Plan:
        """Prepare the search (on resume, reuse what the session holds)."""

    def explain(self, error: Exception) -> Exception:
        """A better error for what the search raised, if the command knows one (default: as is)."""
        return error

    @abstractmethod
    def finish(self, plan: Plan, outcome, session, check, force_output: bool = False) -> Report:
        """Write the answer and describe it (``check``, the CheckSpec, gives the reproduce command).
        ``-o`` and the like are written only for a conclusive answer, or with ``force_output``."""

    def check_outputs(self) -> None:
        """Refuse outputs that cannot be written, before a session exists (default: none)."""

    # -- a session records its command -------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": encode(self.options)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Command":
        return cls(decode(cls.options_type, doc["options"]))

    def replace(self, **changes) -> "Command":
        return type(self)(dataclasses.replace(self.options, **changes))

    def confined(self, root: Path) -> "Command":
        """The command with every output path moved into ``root/result`` (a session from someone
        else must not write where its stored command says)."""
        changes, taken = {}, set()
        for f in self.OUTPUT_FIELDS:
            if getattr(self.options, f, None) is None:
                continue
            name = Path(getattr(self.options, f)).name
            if name in taken:  # -o a/x.onnx --min-good b/x.onnx: kept apart
                name = f"{f}_{name}"
            taken.add(name)
            changes[f] = Path(root) / "result" / name
        return self.replace(**changes)
