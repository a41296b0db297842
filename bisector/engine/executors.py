"""Where the engine's checks run: an :class:`Executor` runs one check on one artifact.

- :class:`LocalExecutor` (``local``, the default): the check runs in the engine's worker thread,
  as it always has; cancel and terminate go to the check itself.
- :class:`RayExecutor` (``ray``): each check is a Ray task (``num_cpus=1``, ``num_gpus`` =
  ``gpus_per_check``) that rebuilds the check from its :class:`~bisector.checks.spec.CheckSpec` JSON
  (the spec is data; the Check object never travels) and runs it on the artifact by path: the
  session directory must be on a filesystem every node sees (NFS, Lustre). Ray sets
  ``CUDA_VISIBLE_DEVICES`` for the task. A speculative loser is stopped with
  ``ray.cancel(ref, force=True)``; the task's guard (:mod:`bisector.engine.ray_task`) then kills
  the check's process group, which the worker's death alone would leave running.

The engine still accepts results in the strategy's order, so ``-j N`` on either gives the answer
of ``-j 1``. Ray is imported only by :class:`RayExecutor`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bisector.checks.base import Artifact, Check, CheckResult
from bisector.engine import ray_task
from bisector.errors import MissingDependency, SessionAborted, UserError

EXECUTORS = ("local", "ray")
RAY_KINDS = ("command", "func", "script")  # checks that need only the artifact's files


class Executor(ABC):
    """Runs checks for the engine; ``key`` names one run (the candidate's fingerprint)."""

    cancellable: bool = False

    @abstractmethod
    def run(self, artifact: Artifact, key: str) -> CheckResult:
        """The check's result on ``artifact``; ``SessionAborted`` if the run was cancelled."""

    def cancel(self, key: str | None = None, workdir: Path | None = None) -> None:
        """Stop the run ``key`` (in ``workdir``), or every run when both are None."""

    def terminate(self) -> None:
        """Stop every run and refuse later ones (Ctrl-C)."""

    def shutdown(self) -> None:
        """The session is over: release what the executor holds."""


class LocalExecutor(Executor):
    """The check runs in the calling thread (the engine's pool): today's behaviour."""

    def __init__(self, check: Check):
        self.check = check
        self.cancellable = check.cancellable

    def run(self, artifact: Artifact, key: str) -> CheckResult:
        return self.check.run(artifact)

    def cancel(self, key: str | None = None, workdir: Path | None = None) -> None:
        self.check.cancel(workdir)

    def terminate(self) -> None:
        self.check.terminate()


def import_ray():
    """The ``ray`` module, or a one-line ``MissingDependency``."""
    try:
        import ray
    except ImportError:
        raise MissingDependency("`executor` ray needs Ray: pip install 'bisector[ray]'") from None
    return ray


class RayExecutor(Executor):
    """Checks as Ray tasks. ``spec``: the check's ``CheckSpec.to_json()``; ``address``: the
    cluster (None: a local one is started, or the one ``RAY_ADDRESS`` names); ``session_dir``: must
    be visible where the tasks run."""

    cancellable = True

    def __init__(self, spec: dict[str, Any], *, address: str | None = None, gpus_per_check: float = 0,
                 session_dir: Path | None = None):
        if spec.get("kind") not in RAY_KINDS:
            raise UserError(f"`executor` ray runs {', '.join(RAY_KINDS)} checks, not a {spec.get('kind')} check")
        if gpus_per_check < 0:
            raise UserError(f"`gpus_per_check` must be at least 0, not {gpus_per_check}")
        self.ray = import_ray()
        self.spec = spec
        self._refs: dict[str, Any] = {}
        self._cancelled: set[str] = set()
        self._terminated = False
        self._lock = threading.Lock()
        self._started_ray = False
        if not self.ray.is_initialized():
            self.ray.init(address=address, include_dashboard=False, log_to_driver=False,
                          ignore_reinit_error=True)
            self._started_ray = True
        self._task = self.ray.remote(ray_task.run_check).options(num_cpus=1, num_gpus=gpus_per_check,
                                                                 max_retries=3)
        if address and session_dir is not None:
            try:
                self._check_visible(Path(session_dir))
            except BaseException:
                self.shutdown()
                raise

    def _check_visible(self, session_dir: Path) -> None:
        """A cluster's node that does not see the session directory could not run one check."""
        ref = self.ray.remote(ray_task.sees).options(num_cpus=1).remote(str(session_dir))
        if not self.ray.get(ref):
            raise UserError(f"`ray_address`: the session directory {session_dir} is not visible on the cluster's "
                            f"nodes; put it on a shared filesystem (NFS, Lustre) with --session")

    def run(self, artifact: Artifact, key: str) -> CheckResult:
        with self._lock:
            if self._terminated or key in self._cancelled:
                self._cancelled.discard(key)
                raise SessionAborted("the check was cancelled before it started")
            ref = self._task.remote(self.spec, ray_task.artifact_json(artifact))
            self._refs[key] = ref
        try:
            return CheckResult.from_json(self.ray.get(ref))
        except (self.ray.exceptions.TaskCancelledError, self.ray.exceptions.WorkerCrashedError):
            with self._lock:
                stopped = self._terminated or key in self._cancelled
            if stopped:
                raise SessionAborted(f"the check was cancelled (iteration {artifact.iteration})") from None
            raise
        finally:
            with self._lock:
                self._refs.pop(key, None)
                self._cancelled.discard(key)

    def cancel(self, key: str | None = None, workdir: Path | None = None) -> None:
        with self._lock:
            keys = list(self._refs) if key is None else [key]
            self._cancelled.update(k for k in keys if k in self._refs)
            refs = [self._refs[k] for k in keys if k in self._refs]
        for ref in refs:
            self.ray.cancel(ref, force=True)

    def terminate(self) -> None:
        with self._lock:
            self._terminated = True
        self.cancel()

    def shutdown(self) -> None:
        if self._started_ray:
            self.ray.shutdown()


def make_executor(check: Check, spec: dict[str, Any] | None, *, executor: str = "local",
                  address: str | None = None, gpus_per_check: float = 0,
                  session_dir: Path | None = None) -> Executor:
    """The executor named by ``executor`` (``RunOptions.executor``)."""
    if executor == "local":
        return LocalExecutor(check)
    if executor != "ray":
        raise UserError(f"`executor` {executor!r}: choose {', '.join(EXECUTORS)}")
    if spec is None:
        raise UserError("`executor` ray needs the check as data (a CheckSpec), not a Check object")
    return RayExecutor(spec, address=address, gpus_per_check=gpus_per_check, session_dir=session_dir)
