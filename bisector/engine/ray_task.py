"""What runs inside a Ray task for :class:`~bisector.engine.executors.RayExecutor`.

:func:`run_check` rebuilds the check from its spec, resets ``SIGCHLD`` and runs it beside a guard.

- ``SIGCHLD``: Ray's recursive subreaper mode sets it to ``SIG_IGN`` in workers, and
  ``Popen.wait`` then reads every child's exit status as 0, so a failing check would pass. The task
  puts back ``SIG_DFL`` before the check starts a process.
- The guard (:mod:`bisector.checks.guard`): ``ray.cancel(force=True)`` SIGKILLs the worker; the
  check's command dies with it (``die_with_parent``) but what the command started would live on in
  its process group. The guard, no child of the worker, sees the worker die and ends that group.
- Shipped files (where a node does not see the session directory): :func:`pack` reads the
  iteration directory's files on the driver (at most ``SHIP_LIMIT_BYTES``); the task writes them
  into a directory of its own (``bisector-ray-*`` in the node's temp directory, laid out as the
  session: ``iterations/NNNN``), runs the check there, and returns the files the check made or
  changed (``check.log`` first; at most ``SHIP_LIMIT_BYTES``, the names of any left out in
  ``LEFT_OUT_NAME``), which :func:`unpack` writes back into the iteration directory. The task's
  directory is removed after the check, by the guard if the worker was killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from bisector.checks.base import Artifact, CheckResult, Verdict
from bisector.checks.command import CHECK_LOG_NAME
from bisector.errors import UserError

PATH_FIELDS = ("workdir", "path", "session_dir", "inputs_path", "weights_dir")
NODE_OWN = ("CUDA_VISIBLE_DEVICES", "PWD", "OLDPWD", "SHLVL", "HOSTNAME", "_")  # the node's, never the driver's
SHIP_LIMIT_BYTES = 512 * 2**20  # what one check's files may put through Ray's object store, each way
LEFT_OUT_NAME = "ray_left_out.txt"  # files the check made on its node that were too large to come back
MIB = 2**20


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


def driver_env() -> dict[str, str]:
    """This process's environment, for a check on a node to see what a local check would: less
    Ray's own variables (``RAY_*``) and ``NODE_OWN``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in NODE_OWN}


@contextlib.contextmanager
def environment(env: dict[str, str] | None) -> Iterator[None]:
    """``os.environ`` with ``env`` over it while the check runs (a worker runs one task at a time)."""
    if not env:
        yield
        return
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def reset_sigchld() -> None:
    """``SIGCHLD`` back to ``SIG_DFL`` (the task runs in the worker's main thread)."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except ValueError:  # not the main thread: nothing Ray set can be undone here
        pass


def _files(directory: Path) -> dict[str, Path]:
    """The regular files under ``directory``, by path relative to it."""
    return {str(f.relative_to(directory)): f for f in sorted(directory.rglob("*")) if f.is_file()}


def pack(artifact: Artifact, limit: int = SHIP_LIMIT_BYTES) -> dict[str, Any]:
    """The files of ``artifact``'s iteration directory, to travel with its task; a ``UserError``
    when they are over ``limit`` or the artifact's files are not all in that directory."""
    workdir = Path(artifact.workdir)
    for name in ("path", "inputs_path"):
        value = getattr(artifact, name)
        if value is not None and Path(value) != workdir and workdir not in Path(value).parents:
            raise UserError(f"`ray_files` ship: iteration {artifact.iteration}'s {name} {value} is outside its "
                            f"directory {workdir}, so it cannot travel with the check")
    files = _files(workdir)
    size = sum(f.stat().st_size for f in files.values())
    if size > limit:
        raise UserError(f"`ray_files`: iteration {artifact.iteration}'s files are {size / MIB:.0f} MiB, over the "
                        f"{limit / MIB:.0f} MiB that go through Ray's object store; put the session directory on a "
                        f"filesystem every node sees (NFS, Lustre) with --session")
    root = Path(artifact.session_dir) if artifact.session_dir is not None else workdir.parent
    where = str(workdir.relative_to(root)) if root in workdir.parents else workdir.name
    return {"where": where, "files": {name: f.read_bytes() for name, f in files.items()}}


def unpack(artifact: Artifact, back: dict[str, bytes]) -> None:
    """Write the files a shipped check made (:func:`run_check`'s ``files``) into the iteration directory."""
    workdir = Path(artifact.workdir).resolve()
    for name, data in back.items():
        target = (workdir / name).resolve()
        if workdir not in target.parents:  # a name from the node: never outside the iteration directory
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _unpacked(art: Artifact, shipped: dict[str, Any], root: Path) -> tuple[Artifact, dict[str, tuple[int, int]]]:
    """``art`` moved into ``root`` with its shipped files; the files' (size, mtime) as written."""
    workdir = root / shipped["where"]
    workdir.mkdir(parents=True, exist_ok=True)
    for name, data in shipped["files"].items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_bytes(data)

    def moved(value: Path | None) -> Path | None:
        if value is None:
            return None
        value = Path(value)
        return workdir / value.relative_to(art.workdir) if value != Path(art.workdir) else workdir

    weights = Path(art.weights_dir) if art.weights_dir is not None else None
    inside = weights is not None and Path(art.workdir) in (weights, *weights.parents)
    moved_art = Artifact(workdir=workdir, path=moved(art.path), iteration=art.iteration, session_dir=root,
                         inputs_path=moved(art.inputs_path), weights_dir=moved(art.weights_dir) if inside else None,
                         description=art.description, extra_env=art.extra_env)
    return moved_art, {name: _stamp(f) for name, f in _files(workdir).items()}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _made(workdir: Path, before: dict[str, tuple[int, int]], limit: int) -> dict[str, bytes]:
    """The files the check made or changed, ``check.log`` first, up to ``limit`` bytes."""
    made = [(name, f) for name, f in _files(workdir).items() if before.get(name) != _stamp(f)]
    made.sort(key=lambda nf: (nf[0] != CHECK_LOG_NAME, nf[1].stat().st_size))
    back: dict[str, bytes] = {}
    left_out: list[str] = []
    total = 0
    for name, f in made:
        size = f.stat().st_size
        if total + size > limit:
            left_out.append(f"{name} ({size / MIB:.1f} MiB)")
            continue
        back[name] = f.read_bytes()
        total += size
    if left_out:
        back[LEFT_OUT_NAME] = ("not brought back from the Ray node (over the object store's share):\n"
                               + "\n".join(left_out) + "\n").encode()
    return back


def run_check(spec: dict[str, Any], artifact: dict[str, Any], shipped: dict[str, Any] | None = None,
              limit: int = SHIP_LIMIT_BYTES, prepare: Callable[[], str] | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """The Ray task: the check built from ``spec`` run on ``artifact``; the result as JSON. With
    ``shipped`` (:func:`pack`), the check runs on a copy of those files in a directory of this
    node, and the result's ``files`` are those it made (see the module docstring). ``prepare``
    (``Artifact.prepare``, a deferred build) runs first, here; the reason it gives is a skip. The
    build and the check see ``env`` (:func:`driver_env`) over the worker's environment."""
    from bisector.checks.guard import start_guard
    from bisector.checks.spec import CheckSpec

    reset_sigchld()
    check = CheckSpec.from_json(spec).build()
    art = artifact_from_json(artifact)
    root = Path(tempfile.mkdtemp(prefix="bisector-ray-")) if shipped is not None else None
    try:
        before: dict[str, tuple[int, int]] = {}
        if root is not None:
            art, before = _unpacked(art, shipped, root)
        elif not Path(art.workdir).is_dir():  # a node that joined blind: never a verdict on missing files
            raise UserError(f"`ray_files`: the Ray node {socket.gethostname()} does not see the iteration directory "
                            f"{art.workdir}; put the session directory on a filesystem every node sees, or let the "
                            f"files travel with --ray-files ship")
        dismiss = start_guard(Path(art.workdir), remove=root)
        try:
            with environment(env):
                reason = prepare() if prepare is not None else ""
                result = (CheckResult(Verdict.SKIP, note=reason, cause="build") if reason
                          else check.run(art)).to_json()
        finally:
            dismiss()
        if root is not None:
            result["files"] = _made(Path(art.workdir), before, limit)
        return result
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def sees(path: str) -> bool:
    """The task: whether ``path`` is a directory on this node."""
    return os.path.isdir(path)
