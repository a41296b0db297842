"""What runs inside a Ray task for :class:`~bisector.engine.executors.RayExecutor`.

:func:`run_check` rebuilds the check from its spec, resets ``SIGCHLD`` and runs it beside a guard.

- ``SIGCHLD``: Ray's recursive subreaper mode sets it to ``SIG_IGN`` in workers, and
  ``Popen.wait`` then reads every child's exit status as 0, so a failing check would pass. The task
  puts back ``SIG_DFL`` before the check starts a process.
- The guard (:mod:`bisector.checks.guard`): ``ray.cancel(force=True)`` SIGKILLs the worker; the
  check's command dies with it (``die_with_parent``) but what the command started would live on in
  its process group. The guard, no child of the worker, sees the worker die and ends that group.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from bisector.checks.base import Artifact

PATH_FIELDS = ("workdir", "path", "session_dir", "inputs_path", "weights_dir")


def artifact_json(artifact: Artifact) -> dict[str, Any]:
    """What a task needs of ``artifact``: its paths and environment (not the in-memory model).
    ``CUDA_VISIBLE_DEVICES`` is Ray's to set, so a per-worker one is left out."""
    doc: dict[str, Any] = {k: None if getattr(artifact, k) is None else str(getattr(artifact, k))
                           for k in PATH_FIELDS}
    doc.update(iteration=artifact.iteration, description=artifact.description,
               extra_env={k: v for k, v in artifact.extra_env.items() if k != "CUDA_VISIBLE_DEVICES"})
    return doc


def artifact_from_json(doc: dict[str, Any]) -> Artifact:
    paths = {k: None if doc.get(k) is None else Path(doc[k]) for k in PATH_FIELDS}
    return Artifact(iteration=doc["iteration"], description=doc.get("description", ""),
                    extra_env=dict(doc.get("extra_env") or {}), **paths)


def reset_sigchld() -> None:
    """``SIGCHLD`` back to ``SIG_DFL`` (the task runs in the worker's main thread)."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except ValueError:  # not the main thread: nothing Ray set can be undone here
        pass


def run_check(spec: dict[str, Any], artifact: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: the check built from ``spec`` run on ``artifact``; the result as JSON."""
    from bisector.checks.guard import start_guard
    from bisector.checks.spec import CheckSpec

    reset_sigchld()
    check = CheckSpec.from_json(spec).build()
    art = artifact_from_json(artifact)
    Path(art.workdir).mkdir(parents=True, exist_ok=True)
    dismiss = start_guard(Path(art.workdir))
    try:
        return check.run(art).to_json()
    finally:
        dismiss()


def sees(path: str) -> bool:
    """The task: whether ``path`` is a directory on this node."""
    return os.path.isdir(path)
