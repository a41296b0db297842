"""A check as data: what the user asked for, recorded in ``session.json`` and built into a
:class:`~bisector.checks.base.Check` by :meth:`CheckSpec.build`. ``resume`` rebuilds the very
check the session started with; the daemon queues it with its command.

Example::

    spec = CheckSpec.command(["python", "check.py", "{artifact}"], timeout_s=60)
    check = spec.build()
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bisector.codec import decode, encode
from bisector.errors import UserError, one_of

KINDS = ("command", "func", "script", "compare", "interactive")


@dataclass(frozen=True)
class CompareSpec:
    """The in-process comparison: Polygraphy's flags as given (``atol`` like ``["1e-2"]`` or
    ``["y:1e-3"]``) and the target to run (provider, precision, nodes kept fp32, realization)."""

    provider: str = "cpu"
    precision: str | None = None
    keep: tuple[str, ...] = ()
    realize: str | None = None
    atol: tuple[str, ...] = ()
    rtol: tuple[str, ...] = ()
    check_error_stat: tuple[str, ...] = ()
    error_quantile: float | None = None
    validate: bool = False

    def target(self):
        from bisector.backends.target import Target

        return Target(provider=self.provider, precision=self.precision, keep=frozenset(self.keep),
                      realize=self.realize)

    def config(self):
        from bisector.compare.config import CompareConfig

        return CompareConfig.from_flags(atol=list(self.atol) or None, rtol=list(self.rtol) or None,
                                        check_error_stat=list(self.check_error_stat) or None,
                                        error_quantile=self.error_quantile, validate=self.validate)


@dataclass(frozen=True)
class CheckSpec:
    """``kind``: a ``command`` (``argv``, with Polygraphy's verdict rules and the timeout and crash
    policies), a Python ``func`` (``module:function``) or ``script``, the in-process ``compare``,
    or a person (``interactive``). ``repeat`` > 1 runs each check that often and ``vote``s."""

    kind: str = "interactive"
    argv: tuple[str, ...] = ()
    fail_codes: tuple[int, ...] | None = None
    ignore_fail_codes: tuple[int, ...] | None = None
    fail_regexes: tuple[str, ...] | None = None
    timeout_s: float | None = None
    on_timeout: str = "bad"
    on_crash: str = "bad"
    show_output: bool = False
    hide_fail_output: bool = False
    func: str | None = None
    script: str | None = None
    compare: CompareSpec | None = None
    repeat: int = 1
    vote: str = "any"
    launch_dir: str | None = None  # where the command's relative paths are found (it runs elsewhere)

    @classmethod
    def command(cls, argv, **kw: Any) -> "CheckSpec":
        """A command check; a relative program path (``./check.sh``) is made absolute here, and the
        directory its other relative paths are found in is this one, since the check runs in each
        iteration directory (and a resume may start anywhere)."""
        argv = [str(a) for a in argv]
        if argv and os.sep in argv[0] and not os.path.isabs(argv[0]):
            argv[0] = os.path.abspath(argv[0])
        return cls(kind="command", argv=tuple(argv), launch_dir=kw.pop("launch_dir", os.getcwd()), **kw)

    def file_fingerprints(self, skip: tuple[str, ...] = ()) -> dict[str, str]:
        """``{path: digest}`` of the check's own code: the program it runs and the scripts it names
        (``SCRIPT_SUFFIXES``; not the per-iteration ``skip`` names). A session refuses to go on
        after one changed, since its verdicts came from the old code. Data files are left out: a
        check may write to a file it names (a counter, a log) on every run."""
        if self.kind == "command":
            values = [a.partition("=")[2] if a.startswith("-") else a for a in self.argv]
            values = [v for i, v in enumerate(values) if i == 0 or Path(v).suffix in SCRIPT_SUFFIXES]
        elif self.kind == "script":
            values = [self.script or ""]
        else:
            return {}
        base = Path(self.launch_dir or os.getcwd())
        out = {}
        for value in values:
            if not value or value in skip or "{" in value:
                continue
            path = Path(value) if os.path.isabs(value) else base / value
            try:
                if path.is_file():
                    out[str(path)] = _digest(path)
            except OSError:
                continue
        return out

    def anchored(self) -> "CheckSpec":
        """The spec with what it names made absolute or pinned to this directory (a script's path;
        the directory a command's relative paths and a ``--check-func`` module are found in), so
        that a resume from anywhere rebuilds the same check."""
        changes: dict[str, Any] = {}
        if self.launch_dir is None and self.kind in ("command", "func"):
            changes["launch_dir"] = os.getcwd()
        if self.kind == "script" and self.script and not os.path.isabs(self.script):
            changes["script"] = os.path.abspath(self.script)
        return replace(self, **changes) if changes else self

    @property
    def interactive(self) -> bool:
        return self.kind == "interactive"

    def build(self):
        """The :class:`~bisector.checks.base.Check`; ``UserError`` for a bad policy or vote."""
        from bisector.checks.repeat import VOTES, RepeatCheck

        if self.kind not in KINDS:
            raise UserError(f"unknown check kind {self.kind!r}")
        if self.repeat < 1:
            raise UserError("`repeat` must be at least 1")
        one_of("`vote`", self.vote, VOTES)
        check = self._build_one()
        return RepeatCheck(check, repeat=self.repeat, vote=self.vote) if self.repeat > 1 else check

    def _build_one(self):
        if self.kind == "command":
            from bisector.checks.command import CommandCheck
            from bisector.checks.verdict_rules import VerdictRules

            rules = VerdictRules(fail_codes=_list(self.fail_codes), ignore_fail_codes=_list(self.ignore_fail_codes),
                                 fail_regexes=_list(self.fail_regexes))
            check = CommandCheck(list(self.argv), rules, timeout_s=self.timeout_s, on_timeout=self.on_timeout,
                                 on_crash=self.on_crash, show_output=self.show_output,
                                 hide_fail_output=self.hide_fail_output)
            if self.launch_dir:
                check.launch_dir = Path(self.launch_dir)
            return check
        if self.kind in ("func", "script"):
            from bisector.checks.python import PythonCheck

            if self.kind == "func":
                import sys

                if self.launch_dir and self.launch_dir not in sys.path:  # `module:function` as seen from there
                    sys.path.insert(0, self.launch_dir)
                return PythonCheck.from_spec(self.func, on_crash=self.on_crash)
            return PythonCheck.from_script(self.script, on_crash=self.on_crash)
        if self.kind == "compare":
            from bisector.checks.compare import CompareCheck

            spec = self.compare or CompareSpec()
            return CompareCheck(spec.target(), spec.config())
        from bisector.checks.interactive import InteractiveCheck

        return InteractiveCheck()

    # -- recorded in session.json --------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "CheckSpec":
        if isinstance(doc, dict) and isinstance(doc.get("compare"), dict):
            doc = {**doc, "compare": decode(CompareSpec, doc["compare"])}
        return decode(cls, doc)


HASH_LIMIT_BYTES = 64 << 20
SCRIPT_SUFFIXES = frozenset({".py", ".sh", ".bash", ".zsh", ".pl", ".rb", ".js", ".lua"})


def _digest(path: Path) -> str:
    import hashlib

    st = path.stat()
    if st.st_size > HASH_LIMIT_BYTES:
        return f"size {st.st_size}, mtime {st.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _list(values) -> list | None:
    return None if values is None else list(values)

