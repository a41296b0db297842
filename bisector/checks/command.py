"""The command check: run the user's command on the artifact; its exit code and output decide.

Verdict rules are Polygraphy's ``--check`` rules (``--fail-code``, ``--ignore-fail-code``,
``--fail-regex``; see ``verdict_rules.decide``) plus git bisect's exit 125 = skip, so a pasted
``polygraphy debug ... --check <cmd>`` command line gives the same verdicts here. The command's
process group is started and ended by ``process_group``, which also records it in the iteration
directory while it runs (``check.pgid``), so that a run after bisector was killed ends it.

Example::

    check = CommandCheck(["polygraphy", "run", "{artifact}", "--trt", "--onnxrt"],
                         VerdictRules(fail_regexes=["FAILED"]), timeout_s=600)
    check.validate()               # UserError now if 'polygraphy' is not on PATH
    result = check.run(artifact)   # CheckResult; full output in <workdir>/check.log
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from bisector.checks.base import Artifact, Check, CheckResult, Verdict
from bisector.checks.process_group import (adopt_orphans, die_with_parent, kill_group, remove_record, signal_group,
                                            write_record)
from bisector.checks.verdict_rules import SKIP_EXIT_CODE, VerdictRules, decide
from bisector.errors import SessionAborted, UserError

CHECK_LOG_NAME = "check.log"  # full merged output, in the artifact's workdir
DEFAULT_TAIL_CHARS = 4000  # how much output a CheckResult (and the journal) keeps
POLL_S = 0.05  # how often a running check looks for a timeout or terminate()
TAIL_BYTES_PER_CHAR = 4  # utf-8 worst case, to read only the tail when no regex needs it all
ON_FAILURE_CHOICES = ("bad", "skip", "abort")  # for on_timeout / on_crash

PLACEHOLDERS = ("{artifact}", "{inputs}", "{iteration}", "{session}")


def validate_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Return the absolute path of ``argv[0]``, or raise ``UserError`` naming it.

    A bare name is looked up on ``env["PATH"]`` (the process's PATH by default); a name with a
    slash must be an executable file.
    """
    if not argv or not argv[0]:
        raise UserError("the check command is empty", hint="put the command after --check")
    name = argv[0]
    if os.sep in name:
        if not os.path.isfile(name):
            raise UserError(f"check command {name!r} not found")
        if not os.access(name, os.X_OK):
            raise UserError(f"check command {name!r} is not executable", hint=f"chmod +x {name}")
        return os.path.abspath(name)
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = shutil.which(name, path=path)
    if found is None:
        raise UserError(f"check command {name!r} not found on PATH")
    return found


class CommandCheck(Check):
    """Run ``argv`` (no shell) in the artifact's workdir; decide with :class:`VerdictRules`.

    - ``argv`` placeholders ``{artifact}``, ``{inputs}``, ``{iteration}``, ``{session}`` are
      replaced anywhere in an argument (``--model={artifact}`` works); other braces are left alone.
      The same values are in ``$BISECTOR_ARTIFACT``, ``$BISECTOR_INPUTS`` (when there are inputs),
      ``$BISECTOR_ITERATION``, ``$BISECTOR_SESSION`` (when there is a session directory); the
      artifact's ``extra_env`` is added last. ``PYTHONUNBUFFERED=1`` is set unless already set,
      so a Python check's stdout and stderr interleave in the log as they were written.
    - A relative ``argv[0]`` with a slash (``./check.sh``) is resolved against the directory
      bisector was started in, not the workdir.
    - stdout and stderr go, merged in order, to ``<workdir>/check.log``; the result keeps the last
      ``output_tail_chars`` characters. stdin is /dev/null. The command runs in its own process
      group (session); whatever of that group outlives the command is killed. On Linux the
      command also gets SIGKILL if bisector dies (``kill -9``): see
      ``process_group.die_with_parent``; what it started is ended by the next run on the session
      (``process_group.kill_leftovers``, through ``check.pgid`` in the workdir while it runs).
      This process becomes the subreaper of the commands (``process_group.adopt_orphans``).
    - Killed by a signal -> ``on_crash``; over ``timeout_s`` -> the group gets SIGTERM, then
      SIGKILL after ``process_group.KILL_GRACE_S``, then ``on_timeout``. Both take ``"bad"``
      (default), ``"skip"`` or ``"abort"`` (raise ``SessionAborted``).
    - A missing or non-executable command raises ``UserError`` (see :meth:`validate`).
    - :meth:`terminate` (from any thread) kills every running command; their ``run`` raises
      ``SessionAborted``, and so does every later ``run``. :meth:`cancel` kills only the commands
      running now (their ``run`` raises ``SessionAborted``); later runs go on. ``run`` may be
      called from several threads at once.
    - ``show_output`` / ``hide_fail_output`` are Polygraphy's ``--show-output`` /
      ``--hide-fail-output``; :meth:`should_show` applies them, the CLI prints.
    """

    cancellable = True

    def __init__(
        self,
        argv: list[str],
        rules: VerdictRules | None = None,
        timeout_s: float | None = None,
        on_timeout: str = "bad",
        on_crash: str = "bad",
        output_tail_chars: int = DEFAULT_TAIL_CHARS,
        show_output: bool = False,
        hide_fail_output: bool = False,
    ):
        if not argv:
            raise UserError("the check command is empty", hint="put the command after --check")
        for field, value in (("on_timeout", on_timeout), ("on_crash", on_crash)):
            if value not in ON_FAILURE_CHOICES:
                raise UserError(f"`{field}` {value!r}: expected one of {', '.join(ON_FAILURE_CHOICES)}")
        if show_output and hide_fail_output:
            raise UserError("`show_output` and `hide_fail_output` exclude each other")
        if timeout_s is not None and not 0 < timeout_s < float("inf"):  # nan too
            raise UserError(f"`check_timeout` {timeout_s}: expected a positive number of seconds")
        first = argv[0]
        if os.sep in first and not os.path.isabs(first):
            first = os.path.abspath(first)
        self.argv = [first, *argv[1:]]
        self.rules = rules if rules is not None else VerdictRules()
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout
        self.on_crash = on_crash
        self.output_tail_chars = output_tail_chars
        self.show_output = show_output
        self.hide_fail_output = hide_fail_output
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._cancelled: set[subprocess.Popen] = set()
        self._cwd: dict[subprocess.Popen, Path] = {}
        self._terminated = threading.Event()
        self.launch_dir = Path.cwd()

    # -- public ---------------------------------------------------------------------------------

    def validate(self, extra_env: dict[str, str] | None = None) -> str:
        """Find the command now, before the session starts; return its path or raise UserError."""
        env = dict(os.environ, **(extra_env or {}))
        return validate_command(self.argv, env)

    def should_show(self, result: CheckResult) -> bool:
        """Polygraphy's rule: show output always with show_output, else for non-good unless hidden."""
        return self.show_output or (result.verdict is not Verdict.GOOD and not self.hide_fail_output)

    def terminate(self) -> None:
        """Kill every running command (SIGTERM now; SIGKILL follows in ``run``). Thread-safe."""
        self._terminated.set()
        with self._lock:
            procs = list(self._running)
        for proc in procs:
            signal_group(proc.pid, signal.SIGTERM)

    def cancel(self, workdir: Path | None = None) -> None:
        """Kill the commands running now, or only the one running in ``workdir`` (SIGTERM now;
        SIGKILL follows in ``run``, which raises ``SessionAborted``). Thread-safe."""
        with self._lock:
            procs = [p for p in self._running if workdir is None or self._cwd.get(p) == Path(workdir)]
            self._cancelled.update(procs)
        for proc in procs:
            signal_group(proc.pid, signal.SIGTERM)

    def run(self, artifact: Artifact) -> CheckResult:
        """Run the command on ``artifact`` and return the verdict with its evidence."""
        if self._terminated.is_set():
            raise SessionAborted("the check was terminated")
        argv = self.expand(artifact)
        env = self.environment(artifact)
        validate_command(argv, env)
        workdir = Path(artifact.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / CHECK_LOG_NAME
        start = time.monotonic()
        with open(log_path, "wb") as log_file:
            proc = self._start(argv, env, workdir, log_file)
            try:
                code, timed_out = self._wait(proc, start)
                remove_record(workdir)  # the group is gone
            finally:
                with self._lock:
                    self._running.discard(proc)
                    self._cwd.pop(proc, None)
                    cancelled = proc in self._cancelled
                    self._cancelled.discard(proc)
        duration = time.monotonic() - start
        if self._terminated.is_set() or cancelled:
            what = "terminated" if self._terminated.is_set() else "cancelled"
            raise SessionAborted(f"the check was {what} (iteration {artifact.iteration})")
        full_needed = self.rules.fail_regexes is not None and not timed_out and code >= 0
        output = _read_output(log_path, None if full_needed else self.output_tail_chars)
        tail = _tail(output, self.output_tail_chars)
        result = CheckResult(verdict=Verdict.GOOD, exit_code=code, output=tail, duration_s=duration)
        if timed_out:
            result.exit_code = None
            result.note = f"timeout after {self.timeout_s:g} s"
            result.cause = "timeout"
            result.verdict = self._on_failure(self.on_timeout, "--on-timeout", result.note)
        elif code < 0:
            result.note = f"killed by {_signal_name(-code)}"
            result.cause = "crash"
            result.verdict = self._on_failure(self.on_crash, "--on-crash", result.note)
        else:
            result.verdict = decide(code, output, self.rules)
            if code == SKIP_EXIT_CODE:
                result.note = f"exit {SKIP_EXIT_CODE}: skip"
        return result

    def expand(self, artifact: Artifact) -> list[str]:
        """``argv`` with the placeholders replaced for ``artifact`` (UserError if one has no value)."""
        values = {
            "{artifact}": str(artifact.path),
            "{iteration}": str(artifact.iteration),
            "{inputs}": None if artifact.inputs_path is None else str(artifact.inputs_path),
            "{session}": None if artifact.session_dir is None else str(artifact.session_dir),
        }
        out = []
        for arg in self.argv:
            if not any(key in arg for key in values):
                module_name = bool(out) and out[-1] == "-m"  # python -m NAME: a module, not a path
                out.append(arg if module_name else self._from_launch_dir(arg, Path(artifact.workdir)))
                continue
            for key, value in values.items():
                if key in arg:
                    if value is None:
                        what = "inputs file" if key == "{inputs}" else "session directory"
                        raise UserError(f"the check command uses {key} but this artifact has no {what}")
                    arg = arg.replace(key, value)
            out.append(arg)
        return out

    def _from_launch_dir(self, arg: str, workdir: Path) -> str:
        """A relative path that names a file where bisector was started, and nothing in the
        iteration directory, is made absolute: a pasted ``--load-inputs inputs.json`` keeps working
        although the check runs in the iteration directory. ``--flag=path`` too."""
        prefix, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        if not value or os.path.isabs(value) or value.startswith("-"):
            return arg
        try:
            here, there = self.launch_dir / value, workdir / value
            if here.exists() and not there.exists() and not (workdir / Path(value).parts[0]).exists():
                return f"{prefix}{eq}{here}"
        except (OSError, ValueError):
            pass
        return arg

    def environment(self, artifact: Artifact) -> dict[str, str]:
        """The command's environment: ours, the BISECTOR_* variables, then ``extra_env``."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["BISECTOR_ARTIFACT"] = str(artifact.path)
        env["BISECTOR_ITERATION"] = str(artifact.iteration)
        if artifact.session_dir is not None:
            env["BISECTOR_SESSION"] = str(artifact.session_dir)
        if artifact.inputs_path is not None:
            env["BISECTOR_INPUTS"] = str(artifact.inputs_path)
        env.update(artifact.extra_env)
        return env

    # -- private --------------------------------------------------------------------------------

    def _start(self, argv: list[str], env: dict[str, str], cwd: Path, log_file) -> subprocess.Popen:
        adopt_orphans()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except FileNotFoundError:
            raise UserError(f"check command {argv[0]!r} not found") from None
        except PermissionError:
            raise UserError(f"check command {argv[0]!r} is not executable") from None
        except OSError as exc:  # e.g. ENOEXEC: a script without a #! line
            raise UserError(f"check command {argv[0]!r} cannot be run: {exc.strerror}") from None
        write_record(cwd, proc.pid)
        with self._lock:
            self._running.add(proc)
            self._cwd[proc] = Path(cwd)
        if self._terminated.is_set():  # terminate() came between Popen and registration
            signal_group(proc.pid, signal.SIGTERM)
        return proc

    def _wait(self, proc: subprocess.Popen, start: float) -> tuple[int, bool]:
        """Wait for ``proc``; return (returncode, timed_out). Kills the group when done."""
        deadline = None if self.timeout_s is None else start + self.timeout_s
        timed_out = False
        while True:
            try:
                proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if self._terminated.is_set() or proc in self._cancelled:
                break
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                break
        kill_group(proc)
        return proc.returncode, timed_out

    def _on_failure(self, choice: str, flag: str, note: str) -> Verdict:
        if choice == "abort":
            raise SessionAborted(f"the check {note} ({flag} abort)")
        return Verdict.BAD if choice == "bad" else Verdict.SKIP


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _read_output(path: Path, last_chars: int | None) -> str:
    """The log's text (invalid utf-8 replaced); only roughly the tail when ``last_chars`` is set."""
    with open(path, "rb") as f:
        if last_chars is not None:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - last_chars * TAIL_BYTES_PER_CHAR))
        return f.read().decode("utf-8", errors="replace")


def _tail(text: str, chars: int) -> str:
    if chars <= 0:
        return ""
    if len(text) <= chars:
        return text
    return f"[... output cut; full output in {CHECK_LOG_NAME}]\n" + text[-chars:]
