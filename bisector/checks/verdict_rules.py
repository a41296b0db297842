"""Verdict rules of the command check: Polygraphy's ``--check`` rules plus git bisect's exit 125.

``--fail-code``, ``--ignore-fail-code`` and ``--fail-regex`` mean what they mean in Polygraphy
(see :func:`decide`), so a pasted ``polygraphy debug ... --check <cmd>`` command line gives the
same verdicts here.

Example::

    rules = VerdictRules(fail_regexes=["FAILED"])
    decide(0, "3 tests FAILED", rules)   # Verdict.BAD
    decide(125, "", rules)               # Verdict.SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Pattern

from bisector.checks.base import Verdict
from bisector.errors import UserError

SKIP_EXIT_CODE = 125  # git bisect run: "the source code at hand cannot be tested"


@dataclass(frozen=True)
class VerdictRules:
    """Which exit codes and outputs count as failures (Polygraphy's flags, same semantics).

    ``fail_codes`` = ``--fail-code``, ``ignore_fail_codes`` = ``--ignore-fail-code`` (they exclude
    each other: ``UserError``), ``fail_regexes`` = ``--fail-regex`` (strings or compiled patterns,
    searched with ``re.search``, no flags). ``None`` means the flag was not given.
    """

    fail_codes: tuple[int, ...] | None = None
    ignore_fail_codes: tuple[int, ...] | None = None
    fail_regexes: tuple[Pattern[str], ...] | None = None

    def __init__(
        self,
        fail_codes: Iterable[int] | None = None,
        ignore_fail_codes: Iterable[int] | None = None,
        fail_regexes: Iterable[str | Pattern[str]] | None = None,
    ):
        if fail_codes is not None and ignore_fail_codes is not None:
            raise UserError(
                "--fail-code and --ignore-fail-code exclude each other",
                hint="keep one of them, as in Polygraphy",
            )
        object.__setattr__(self, "fail_codes", None if fail_codes is None else tuple(fail_codes))
        object.__setattr__(
            self, "ignore_fail_codes", None if ignore_fail_codes is None else tuple(ignore_fail_codes)
        )
        object.__setattr__(
            self, "fail_regexes", None if fail_regexes is None else tuple(map(_compile, fail_regexes))
        )


def _compile(regex: str | Pattern[str]) -> Pattern[str]:
    if isinstance(regex, re.Pattern):
        return regex
    try:
        return re.compile(regex)
    except re.error as exc:
        raise UserError(f"`fail_regex` {regex!r} is not a valid regular expression: {exc}") from None


def decide(exit_code: int, output: str, rules: VerdictRules) -> Verdict:
    """The verdict for a finished command: Polygraphy's rules, after git bisect's 125.

    In order (Polygraphy 0.53.6, ``tools/debug/subtool/iterative_debug_args.py``,
    ``CheckCmdArgs.run_check.is_status_success``):

    0. exit 125 -> SKIP, before every other rule (git bisect run; bisector's only addition).
    1. ``ignore_fail_codes`` non-empty and the code is in it -> GOOD, whatever the output.
    2. ``fail_codes`` given -> BAD iff the code is in it and, when ``fail_regexes`` are given,
       one of them matches (a zero exit can be BAD if 0 is a fail code).
    3. no ``fail_codes`` but ``fail_regexes`` -> BAD iff one matches, whatever the code.
    4. neither -> BAD iff the code is non-zero.

    ``output`` is stdout and stderr together. Killed-by-signal (negative codes) is not special
    here; ``CommandCheck`` routes it to ``on_crash`` before calling this.
    """
    if exit_code == SKIP_EXIT_CODE:
        return Verdict.SKIP
    if rules.ignore_fail_codes and exit_code in rules.ignore_fail_codes:
        return Verdict.GOOD
    matched = None
    if rules.fail_regexes is not None:
        matched = any(regex.search(output) is not None for regex in rules.fail_regexes)
    if rules.fail_codes is not None:
        failed = exit_code in rules.fail_codes and (matched is None or matched)
    else:
        failed = exit_code != 0 if matched is None else matched
    return Verdict.BAD if failed else Verdict.GOOD
