"""The Python check: call a function in-process (``--check-func module:function``, ``--check-script``).

The convention for a check script (``--check-script check.py``) is a function named ``check``::

    # check.py
    def check(artifact_path: str) -> bool:          # True = good (the failure is absent)
        return run_my_comparison(artifact_path) < 1e-3

The function receives the artifact's path as a ``str``, and the :class:`Artifact` itself as a
second argument when it asks for one: when it has two required positional parameters, a second
positional parameter named ``artifact``, or ``*args``. It returns one of

- a ``bool`` (also a numpy scalar bool): ``True`` = good, ``False`` = bad;
- a word: ``"good"``/``"pass"``, ``"bad"``/``"fail"``, ``"skip"`` (any case);
- a :class:`Verdict`, or a full :class:`CheckResult` (for metrics and output of its own).

Anything else (``None`` included: a forgotten ``return``) is a ``UserError``. An exception
raised by the function is a crash: ``on_crash`` decides (``"bad"`` by default, ``"skip"``, or
``"abort"``), and the traceback's tail becomes the output (also written to ``check.log``).
``UserError`` and ``SessionAborted`` raised by the function pass through unchanged.

The function runs in bisector's process and thread, in bisector's working directory (not the
iteration directory: the path it gets is absolute), and cannot be timed out or killed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from bisector.checks.base import Artifact, Check, CheckResult, Verdict
from bisector.checks.command import CHECK_LOG_NAME, DEFAULT_TAIL_CHARS, ON_FAILURE_CHOICES
from bisector.errors import SessionAborted, UserError

log = logging.getLogger(__name__)

SCRIPT_FUNCTION = "check"  # the function a --check-script must define
SCRIPT_MODULE_PREFIX = "bisector_check_script_"  # sys.modules name of a loaded script
RETURN_HINT = "return True (good), False (bad), 'skip', a Verdict or a CheckResult"


class PythonCheck(Check):
    """Call ``func(artifact_path[, artifact])`` and turn what it returns into a verdict.

    Build one with :meth:`from_spec` (``"package.module:function"``) or :meth:`from_script`
    (``"check.py"``, ``"check.py:function"``); both raise ``UserError`` for a missing module,
    file or function. :meth:`terminate` makes later calls of :meth:`run` raise
    ``SessionAborted`` (a call in progress cannot be interrupted).
    """

    def __init__(
        self,
        func: Callable[..., Any],
        name: str | None = None,
        on_crash: str = "bad",
        output_tail_chars: int = DEFAULT_TAIL_CHARS,
    ):
        if not callable(func):
            raise UserError(f"check function {name or func!r} is not callable")
        if on_crash not in ON_FAILURE_CHOICES:
            raise UserError(f"`on_crash` {on_crash!r}: expected one of {', '.join(ON_FAILURE_CHOICES)}")
        self.func = func
        self.name = name or getattr(func, "__qualname__", repr(func))
        self.on_crash = on_crash
        self.output_tail_chars = output_tail_chars
        self._wants_artifact = _wants_artifact(func)
        self._terminated = threading.Event()

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> "PythonCheck":
        """``--check-func module:function``; the current directory is searched for the module too."""
        module_name, sep, func_name = spec.rpartition(":")
        if not sep or not module_name or not func_name:
            raise UserError(f"`check_func` {spec!r}: expected module:function, e.g. mychecks:compare")
        module = _import_module(module_name)
        return cls(_get_function(module, func_name, f"module {module_name!r}"), name=spec, **kwargs)

    @classmethod
    def from_script(cls, script: str | os.PathLike, **kwargs: Any) -> "PythonCheck":
        """``--check-script file.py`` (calls its ``check``) or ``file.py:function``."""
        text = os.fspath(script)
        path_text, func_name = text, SCRIPT_FUNCTION
        head, sep, tail = text.rpartition(":")
        if sep and head.endswith(".py") and tail.isidentifier():
            path_text, func_name = head, tail
        module = _load_script(Path(path_text))
        func = _get_function(module, func_name, f"check script {path_text!r}")
        return cls(func, name=f"{path_text}:{func_name}", **kwargs)

    def terminate(self) -> None:
        """Refuse further runs (the function in progress, if any, runs to its end)."""
        self._terminated.set()

    def run(self, artifact: Artifact) -> CheckResult:
        """Call the function on ``artifact``; see the module docstring for what it may return."""
        if self._terminated.is_set():
            raise SessionAborted("the check was terminated")
        args: tuple[Any, ...] = (str(artifact.path),)
        if self._wants_artifact:
            args += (artifact,)
        start = time.monotonic()
        try:
            value = self.func(*args)
        except (UserError, SessionAborted):
            raise
        except Exception as exc:  # the user's code crashed: evidence, then on_crash
            return self._crashed(artifact, exc, time.monotonic() - start)
        duration = time.monotonic() - start
        result = to_result(value, self.name)
        if not result.duration_s:
            result.duration_s = duration
        return result

    def _crashed(self, artifact: Artifact, exc: Exception, duration: float) -> CheckResult:
        text = traceback.format_exc()
        first_line = (str(exc).splitlines() or [""])[0]
        note = f"raised {type(exc).__name__}: {first_line}".rstrip(": ")
        with contextlib.suppress(OSError):
            Path(artifact.workdir).mkdir(parents=True, exist_ok=True)
            (Path(artifact.workdir) / CHECK_LOG_NAME).write_text(text)
        if self.on_crash == "abort":
            raise SessionAborted(f"the check function {note} (--on-crash abort)") from exc
        log.debug("check function %s %s", self.name, note)
        verdict = Verdict.BAD if self.on_crash == "bad" else Verdict.SKIP
        tail = text[-self.output_tail_chars :] if self.output_tail_chars > 0 else ""
        return CheckResult(verdict=verdict, output=tail, duration_s=duration, note=note)


def to_result(value: Any, name: str = "the check function") -> CheckResult:
    """Turn a check function's return value into a CheckResult (UserError if it is none of the kinds)."""
    if isinstance(value, CheckResult):
        return value
    if _is_scalar_bool(value):
        value = bool(value)
    if isinstance(value, (bool, str, Verdict)):
        try:
            return CheckResult(verdict=Verdict.parse(value))
        except ValueError:
            pass
    raise UserError(f"{name} returned {value!r}, which is not a verdict", hint=RETURN_HINT)


def _is_scalar_bool(value: Any) -> bool:
    """A numpy bool scalar or 0-d bool array (``(a == b).all()``), without importing numpy."""
    dtype = getattr(value, "dtype", None)
    return getattr(dtype, "kind", None) == "b" and getattr(value, "shape", None) == ()


def _wants_artifact(func: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    required = [p for p in positional if p.default is p.empty]
    return len(required) >= 2 or (len(positional) >= 2 and positional[1].name == "artifact")


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    """Put ``directory`` first on sys.path while importing, as ``python script.py`` would."""
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added and directory in sys.path:
            sys.path.remove(directory)


def _import_module(module_name: str) -> Any:
    with _on_sys_path(os.getcwd()):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing == module_name or module_name.startswith(missing + "."):
                raise UserError(
                    f"`check_func`: module {module_name!r} not found",
                    hint="run from the directory that holds it, or set PYTHONPATH",
                ) from None
            raise UserError(f"`check_func`: importing {module_name!r} failed: {exc}") from None
        except Exception as exc:
            raise UserError(f"`check_func`: importing {module_name!r} failed: {_one_line(exc)}") from None


def _load_script(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"check script {str(path)!r} not found")
    path = path.resolve()
    module_name = SCRIPT_MODULE_PREFIX + "".join(c if c.isalnum() else "_" for c in path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"check script {str(path)!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickle look the module up here
    with _on_sys_path(str(path.parent)):
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise UserError(f"check script {str(path)!r} failed to load: {_one_line(exc)}") from None
    return module


def _get_function(module: Any, func_name: str, where: str) -> Callable[..., Any]:
    func = getattr(module, func_name, None)
    if func is None:
        hint = None
        if func_name == SCRIPT_FUNCTION and callable(getattr(module, "main", None)):
            hint = "bisector calls check(artifact_path), not main(); rename it or use file.py:main"
        raise UserError(f"{where} defines no function {func_name!r}", hint=hint)
    if not callable(func):
        raise UserError(f"{where}: {func_name!r} is not a function")
    return func


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError at line {exc.lineno}: {exc.msg}"
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
