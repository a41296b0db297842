"""Where the engine's checks run: an :class:`Executor` runs one check on one artifact.

- :class:`LocalExecutor` (``local``, the default): the check runs in the engine's worker thread,
  as it always has; cancel and terminate go to the check itself.
- :class:`RayExecutor` (``ray``): each check is a Ray task (``num_cpus=1``, ``num_gpus`` =
  ``gpus_per_check``) that rebuilds the check from its :class:`~bisector.checks.spec.CheckSpec` JSON
  (the spec is data; the Check object never travels) and runs it on the artifact. ``files``: how
  the artifact reaches the task. ``shared``: by path, the session directory is on a filesystem
  every node sees (NFS, Lustre); ``ship``: the iteration directory's files go through Ray's object
  store and the files the check makes come back (``ray_task.pack``, at most
  ``ray_task.SHIP_LIMIT_BYTES`` each way); ``auto`` (default): ``shared`` when every node that can
  run a check sees the session directory, else ``ship``. Ray sets ``CUDA_VISIBLE_DEVICES`` for the
  task. A speculative loser is stopped with ``ray.cancel(ref, force=True)``; the task's guard
  (:mod:`bisector.engine.ray_task`) then kills the check's process group, which the worker's death
  alone would leave running. A task lost with its worker or node is retried (``MAX_RETRIES``);
  lost every time, the session stops (``SessionAborted``: nothing journaled, resume tries again),
  and so it does when the cluster's GCS stops answering (a thread asks it every ``WATCH_S``).
  The task runs in this process's environment (``ray_task.driver_env``) over the node's.

The engine still accepts results in the strategy's order, so ``-j N`` on either gives the answer
of ``-j 1``. Ray is imported only by :class:`RayExecutor`.
"""

from __future__ import annotations

import os
import socket
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bisector.checks.base import Artifact, Check, CheckResult
from bisector.engine import ray_task
from bisector.errors import MissingDependency, SessionAborted, UserError, one_of

EXECUTORS = ("local", "ray")
RAY_KINDS = ("command", "func", "script")  # checks that need only the artifact's files
RAY_FILES = ("auto", "shared", "ship")
MAX_RETRIES = 3  # tries after the first of a task lost with its worker or node
REACH_TIMEOUT_S = 5.0  # for the cluster's address to accept a connection and answer
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # and an empty SETTINGS
HTTP2_SETTINGS = 4  # the frame type byte of a SETTINGS frame
MIN_GPU_SHARE = 0.0001  # the smallest fraction of a GPU Ray schedules
WATCH_S = 2.0  # how often the cluster's GCS is asked whether it is there ...
WATCH_MISSES = 3  # ... and after how many misses in a row the run stops (Ray's driver would exit 1 at 60 s)
LOST_ON_RAY = "lost on the Ray cluster"  # in the stop line of a run that lost its checks (the daemon reads it)
PROBE_TIMEOUT_S = 120  # for every node to say whether it sees the session directory


class Executor(ABC):
    """Runs checks for the engine; ``key`` names one run (the candidate's fingerprint)."""

    cancellable: bool = False
    remote: bool = False  # checks run on other machines that see the session's files by path

    @abstractmethod
    def run(self, artifact: Artifact, key: str) -> CheckResult:
        """The check's result on ``artifact``; ``SessionAborted`` if the run was cancelled."""

    def cancel(self, key: str | None = None, workdir: Path | None = None) -> None:
        """Stop the run ``key`` (in ``workdir``), or every run when both are None."""

    def terminate(self) -> None:
        """Stop every run and refuse later ones (Ctrl-C)."""

    def shutdown(self) -> None:
        """The session is over: release what the executor holds."""

    def describe(self) -> str | None:
        """One line for people on where the checks run, or None for here."""
        return None


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


def ray_options(spec: dict[str, Any], gpus_per_check: float, files: str, address: str | None = None) -> None:
    """A one-line ``UserError`` for what the ray executor cannot take (before any session is made)."""
    kind = spec.get("kind")
    if kind not in RAY_KINDS:
        article = "an" if str(kind)[:1] in "aeiou" else "a"
        raise UserError(f"`executor` ray runs {', '.join(RAY_KINDS)} checks, not {article} {kind} check")
    if not 0 <= gpus_per_check < float("inf"):  # nan too
        raise UserError(f"`gpus_per_check` must be a number of GPUs from 0 up, not {gpus_per_check}")
    if gpus_per_check > 1 and gpus_per_check != int(gpus_per_check) or 0 < gpus_per_check < MIN_GPU_SHARE:
        raise UserError(f"`gpus_per_check` {gpus_per_check:g}: Ray takes a share of one GPU from "
                        f"{MIN_GPU_SHARE:g} up, or a whole number of GPUs")
    one_of("`ray_files`", files, RAY_FILES)
    if address:
        host_port(address)


def host_port(address: str, what: str = "`ray_address`") -> tuple[str, int]:
    """``host:port`` (or ``ray://host:port``) split, or a one-line ``UserError``."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{what} {address!r}: expected HOST:PORT (ray start --head prints it)")
    return host, int(port)


def reach(address: str | None, what: str = "`ray_address`", timeout_s: float = REACH_TIMEOUT_S) -> None:
    """A one-line ``UserError`` unless a gRPC server (as Ray's GCS is) answers at ``address``
    (``host:port``, or ``ray://host:port``): ``ray.init`` would wait minutes on a cluster that is
    not there. ``auto``, ``local`` and None are Ray's to resolve."""
    if not address or address in ("auto", "local"):
        return
    host, port = host_port(address, what)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.sendall(HTTP2_PREFACE)  # a GCS is a gRPC server: it answers with HTTP/2 SETTINGS
            frame = conn.recv(9)
    except OSError as exc:
        raise UserError(f"{what} {address}: no Ray cluster answers ({exc.strerror or exc})",
                        hint="start one with `ray start --head`, or check the address it printed") from None
    if len(frame) < 4 or frame[3] != HTTP2_SETTINGS:  # (a gRPC server that is not Ray passes: ray.init says)
        raise UserError(f"{what} {address}: something answers there, but not a Ray cluster (no gRPC)",
                        hint="`ray start --head` prints the address to give")


def import_ray():
    """The ``ray`` module, or a one-line ``MissingDependency``."""
    try:
        import ray
    except ImportError:
        raise MissingDependency("`executor` ray needs Ray: pip install 'bisector[ray]'") from None
    return ray


class RayExecutor(Executor):
    """Checks as Ray tasks. ``spec``: the check's ``CheckSpec.to_json()``; ``address``: the
    cluster (None: a local one is started, or the one ``RAY_ADDRESS`` names); ``files``: how
    artifacts reach the tasks (``RAY_FILES``, see the module docstring); ``session_dir``: where
    they are."""

    cancellable = True

    def __init__(self, spec: dict[str, Any], *, address: str | None = None, gpus_per_check: float = 0,
                 session_dir: Path | None = None, files: str = "auto",
                 ship_limit: int = ray_task.SHIP_LIMIT_BYTES):
        ray_options(spec, gpus_per_check, files)
        self.ray = import_ray()
        if not self.ray.is_initialized() and address:
            reach(address)
        elif not self.ray.is_initialized():
            reach(os.environ.get("RAY_ADDRESS"), "$RAY_ADDRESS")
        self.spec = spec
        self.gpus_per_check = gpus_per_check
        self.files = files
        self.ship_limit = ship_limit
        self.env = ray_task.driver_env()  # a check on a node sees what a local one would
        self._refs: dict[str, Any] = {}
        self._cancelled: set[str] = set()
        self._terminated = False
        self._lock = threading.Lock()
        self._started_ray = False
        self.lost: str | None = None  # why the cluster is taken for gone
        self._stop_watch = threading.Event()
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False,
                              ignore_reinit_error=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:  # a cluster that refuses us, a bad address
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"`ray_address` {address or '(Ray default)'}: Ray did not start or connect: "
                                f"{first}") from None
            self._started_ray = True
        self._task = self.ray.remote(ray_task.run_check).options(num_cpus=1, num_gpus=gpus_per_check,
                                                                 max_retries=MAX_RETRIES)
        try:
            self.ship = self._ship(files, session_dir)
        except BaseException:
            self.shutdown()
            raise
        self.remote = not self.ship  # a deferred build needs the model by path
        self._gcs = self.ray.get_runtime_context().gcs_address
        threading.Thread(target=self._watch, name="bisector-ray-watch", daemon=True).start()

    def _watch(self) -> None:
        """Ask the GCS every ``WATCH_S``; after ``WATCH_MISSES`` misses in a row the cluster is gone:
        runs stop with one line (exit 3, resumable) before Ray's driver ends the process with exit 1."""
        misses = 0
        while not self._stop_watch.wait(WATCH_S):
            try:
                reach(self._gcs, timeout_s=WATCH_S)
                misses = 0
            except UserError:
                misses += 1
            if misses >= WATCH_MISSES:
                self.lost = (f"the Ray cluster at {self._gcs} stopped answering; the checks in flight were "
                             f"{LOST_ON_RAY}, nothing was journaled for them, and a resume runs them again")
                return

    def _ship(self, files: str, session_dir: Path | None) -> bool:
        """Whether artifacts go through the object store: ``files``, or for ``auto`` whether a
        node that can run a check does not see ``session_dir``."""
        if files == "ship" or session_dir is None:
            return files == "ship"
        blind = self._blind_nodes(Path(session_dir))
        if blind and files == "shared":
            raise UserError(f"`ray_files` shared: the session directory {session_dir} is not visible on "
                            f"{len(blind)} of the cluster's nodes ({', '.join(blind[:3])}); put it on a filesystem "
                            f"every node sees (NFS, Lustre) with --session, or let the files travel with "
                            f"--ray-files ship")
        return bool(blind)

    def _blind_nodes(self, session_dir: Path) -> list[str]:
        """The addresses of the nodes that could run a check but do not see ``session_dir``."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in self.ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1
                 and n["Resources"].get("GPU", 0) >= self.gpus_per_check]
        if not nodes:
            raise UserError(f"`gpus_per_check` {self.gpus_per_check:g}: no node of the Ray cluster has a CPU and "
                            f"{self.gpus_per_check:g} GPU(s) for a check")
        probe = self.ray.remote(ray_task.sees)
        refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(session_dir)) for n in nodes]
        try:
            seen = self.ray.get(refs, timeout=PROBE_TIMEOUT_S)
        except self.ray.exceptions.GetTimeoutError:
            raise UserError(f"`ray_address`: the cluster's nodes did not answer within {PROBE_TIMEOUT_S} s") from None
        return [n.get("NodeManagerAddress", n["NodeID"]) for n, ok in zip(nodes, seen) if not ok]

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        why = "as `ray_files` ship says" if self.files == "ship" else "a node does not see the session directory"
        how = (f"the iteration files travel through Ray's object store ({why})" if self.ship
               else "the iteration files are read where they are (every node sees the session directory)")
        return (f"checks run on a Ray cluster of {len(self.ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, "
                f"{resources.get('GPU', 0):g} GPUs; {how}")

    def run(self, artifact: Artifact, key: str) -> CheckResult:
        shipped = ray_task.pack(artifact, self.ship_limit) if self.ship else None
        with self._lock:
            if self._terminated or key in self._cancelled:
                self._cancelled.discard(key)
                raise SessionAborted("the check was cancelled before it started")
            ref = self._task.remote(self.spec, ray_task.artifact_json(artifact), shipped, self.ship_limit,
                                    artifact.prepare, self.env)
            self._refs[key] = ref
        try:
            doc = self._get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the task raised: one line for a user's error
            if isinstance(exc.cause, (UserError, SessionAborted)):
                raise exc.cause from None
            raise
        except self.ray.exceptions.RayError as exc:  # cancelled, or lost with its worker or node every try
            with self._lock:
                stopped = self._terminated or key in self._cancelled
            if stopped:
                raise SessionAborted(f"the check was cancelled (iteration {artifact.iteration})") from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SessionAborted(f"iteration {artifact.iteration}'s check was {LOST_ON_RAY} ({type(exc).__name__}: "
                                 f"{first}); nothing was journaled for it, and a resume runs it again") from None
        finally:
            with self._lock:
                self._refs.pop(key, None)
                self._cancelled.discard(key)
        files = doc.pop("files", None)
        if files:
            ray_task.unpack(artifact, files)
        return CheckResult.from_json(doc)

    def _get(self, ref: Any) -> dict[str, Any]:
        """The task's result, waited for in steps so that a cluster gone is noticed."""
        while not self.ray.wait([ref], timeout=0.5)[0]:
            if self.lost:
                raise SessionAborted(self.lost)
        return self.ray.get(ref)

    def cancel(self, key: str | None = None, workdir: Path | None = None) -> None:
        if self.lost:  # nobody to ask: the tasks went with the cluster
            return
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
        self._stop_watch.set()
        if self._started_ray and not self.lost:
            self.ray.shutdown()


def make_executor(check: Check, spec: dict[str, Any] | None, *, executor: str = "local",
                  address: str | None = None, gpus_per_check: float = 0,
                  session_dir: Path | None = None, files: str = "auto") -> Executor:
    """The executor named by ``executor`` (``RunOptions.executor``)."""
    if executor == "local":
        return LocalExecutor(check)
    if executor != "ray":
        raise UserError(f"`executor` {executor!r}: choose {', '.join(EXECUTORS)}")
    if spec is None:
        raise UserError("`executor` ray needs the check as data (a CheckSpec), not a Check object")
    return RayExecutor(spec, address=address, gpus_per_check=gpus_per_check, session_dir=session_dir, files=files)
