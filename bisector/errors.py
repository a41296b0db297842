"""Two kinds of failure, kept apart.

``UserError`` is the user's to fix (a missing file, a bad flag, a check command that does not
exist): the CLI prints its one-line message, plus the hint if there is one, and exits with 2.
Below the CLI, a message names an option by its field in backticks (`` `check_timeout` ``); the CLI
shows the flag instead (``--check-timeout``, from its one table ``cli.build.FLAGS``).
Anything else is a bug in bisector and keeps its traceback.
"""

from __future__ import annotations

EXIT_GOOD = 0
EXIT_BAD = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3  # the session stopped before the end (Ctrl-C, q at the prompt); it can be resumed
EXIT_INCONCLUSIVE = 4  # the search ended, but its answer cannot be trusted (no candidate passed the check, ...)


class UserError(Exception):
    """A problem with the user's input. Printed as one line; exit code 2.

    >>> raise UserError("model.onnx: no such file", hint="check the path")
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class Inconclusive(UserError):
    """The search cannot give an answer it can vouch for (the check failed even the candidate that
    must pass). Printed as one line like a UserError, but exits ``EXIT_INCONCLUSIVE``."""


class MissingDependency(UserError):
    """An optional dependency (onnxruntime, tensorrt) is not installed."""


class SessionAborted(Exception):
    """The run was stopped on purpose (Ctrl-C, `q` at a prompt, --on-crash abort).

    The session on disk is consistent and can be resumed.
    """


def one_of(flag: str, value, choices) -> None:
    """Refuse ``value`` for ``flag`` unless it is one of ``choices`` (a UserError naming them all)."""
    if value not in choices:
        names = [str(c) for c in choices]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise UserError(f"{flag} {value!r}: choose {listed}")
