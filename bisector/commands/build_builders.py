"""The builders of ``bisector build``: each turns the model into an engine and a tactics file, in
one build's iteration directory, behind one interface (:class:`Builder`).

- ``command``: the user's own script, ``--build-cmd "python b.py {model} {engine} {tactics}"``,
  run as a subprocess in the iteration directory (stdout and stderr to ``build.log``), killed
  with its process group after ``build_timeout`` seconds. Placeholders: ``{model}``, ``{engine}``
  (also ``{artifact}``), ``{tactics}``, ``{log}``, ``{build}`` (the build number), ``{workdir}``.
  Forcing tactics (``bisector confirm``): a ``{force}`` placeholder is replaced by the tactics
  file to load; without one, ``--load-tactics FILE`` is appended to the command.
- ``tensorrt``: TensorRT's Python API (``backends/tensorrt.py``): a fresh timing cache and
  DETAILED profiling per build, tactics from the engine inspector, timing-cache keys from the
  VERBOSE log's autotuning lines; forcing through the editable timing cache.
- ``trtexec``: the same from a ``trtexec`` command line (``--exportLayerInfo``, ``--verbose``).

The TensorRT and trtexec builders cannot run where TensorRT is missing: ``validate`` refuses
them in one line before a session exists.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from bisector.errors import UserError

BUILDERS = ("command", "tensorrt", "trtexec")
BUILD_LOG = "build.log"
TIMING_CACHE = "timing.cache"  # a TensorRT build's own timing cache, beside its engine
PLACEHOLDERS = ("model", "engine", "artifact", "tactics", "log", "build", "workdir", "force")


class BuildFailed(UserError):
    """One build failed (the builder exited non-zero, ran past `build_timeout`, or wrote no engine
    or tactics file). In a hunt the build is a skip with this message as its note; the hunt goes on."""


@dataclass(frozen=True)
class BuildPaths:
    """Where one build reads and writes: the model, the engine, its tactics file and its log, all
    but the model in ``workdir`` (the iteration directory)."""

    model: Path
    workdir: Path
    engine: Path
    tactics: Path
    log: Path


class Builder(ABC):
    name = "builder"

    def validate(self) -> None:
        """Refuse, in one line, a builder that cannot run here (before a session exists)."""

    @abstractmethod
    def build(self, paths: BuildPaths, build: int, force: Path | None = None) -> None:
        """Build ``paths.model`` into ``paths.engine`` and write ``paths.tactics``; ``force``: a
        tactics file whose choices the build must take. A failed build raises UserError."""


def last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class CommandBuilder(Builder):
    name = "command"

    def __init__(self, build_cmd: str | None, timeout_s: float | None = None, launch_dir: Path | None = None):
        self.template = build_cmd or ""
        self.timeout_s = timeout_s
        self.launch_dir = Path(launch_dir) if launch_dir else Path.cwd()

    def validate(self) -> None:
        if not self.template.strip():
            raise UserError("the command builder needs `build_cmd`",
                            hint='e.g. "python build.py {model} {engine} {tactics}"')
        try:
            argv = shlex.split(self.template)
        except ValueError as exc:
            raise UserError(f"`build_cmd` cannot be split into words: {exc}") from None
        if shutil.which(argv[0]) is None and not (self.launch_dir / argv[0]).exists():
            raise UserError(f"`build_cmd`: {argv[0]!r} is not a program here")
        unknown = sorted({m for m in re.findall(r"\{([^{}]*)\}", self.template) if m not in PLACEHOLDERS})
        if unknown:
            raise UserError(f"`build_cmd`: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                            f"known: {', '.join('{' + k + '}' for k in PLACEHOLDERS)}")
        text = self.template
        named = {"{engine}": "{engine}" in text or "{artifact}" in text, "{tactics}": "{tactics}" in text}
        missing = [p for p, there in named.items() if not there]
        if missing:
            raise UserError(f"`build_cmd` names no {' and no '.join(missing)}: bisector must tell the builder "
                            f"where to write the engine and the tactics file of each build")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise UserError(f"`build_timeout` must be a positive number of seconds, not {self.timeout_s}")
        script = next((t for t in argv[1:] if not t.startswith("-")), None)
        if re.fullmatch(r"python[\d.]*", Path(argv[0]).name):
            if script is not None and script.endswith(".py") and "{" not in script \
                    and not (Path(script) if Path(script).is_absolute() else self.launch_dir / script).is_file():
                raise UserError(f"`build_cmd`: the build script {script} does not exist"
                                + ("" if Path(script).is_absolute() else f" (in {self.launch_dir})"))

    def argv(self, paths: BuildPaths, build: int, force: Path | None = None) -> list[str]:
        values = {"model": str(paths.model), "engine": str(paths.engine), "artifact": str(paths.engine),
                  "tactics": str(paths.tactics), "log": str(paths.log), "build": str(build),
                  "workdir": str(paths.workdir), "force": str(force) if force else ""}
        out = []
        for token in shlex.split(self.template):
            if "{force}" in token and force is None:
                continue
            if "{" not in token and not token.startswith("-") and not Path(token).is_absolute() \
                    and (self.launch_dir / token).exists():
                token = str(self.launch_dir / token)  # "python b.py": b.py where bisector was started
            for key in PLACEHOLDERS:
                token = token.replace("{" + key + "}", values[key])
            out.append(token)
        if force is not None and "{force}" not in self.template:
            out += ["--load-tactics", str(force)]
        return out

    def build(self, paths: BuildPaths, build: int, force: Path | None = None) -> None:
        from bisector.checks.process_group import die_with_parent, kill_group

        argv = self.argv(paths, build, force)
        with open(paths.log, "wb") as log:
            proc = subprocess.Popen(argv, cwd=paths.workdir, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent())
            try:
                code = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                raise BuildFailed(f"build {build} ran past `build_timeout` ({self.timeout_s:g} s); its log: {paths.log}")
            except BaseException:
                kill_group(proc)
                raise
            kill_group(proc)  # what it left running in its group
        if code != 0:
            raise BuildFailed(f"build {build} failed (exit {code}): {last_line(paths.log) or 'no output'}",
                              hint=f"its log: {paths.log}")
        wanted = (("engine", paths.engine, "{engine}"), ("tactics file", paths.tactics, "{tactics}"))
        for what, path, placeholder in wanted:
            if not path.exists():
                raise BuildFailed(f"build {build} wrote no {what} ({path.name})",
                                hint=f"`build_cmd` must write it where {placeholder} says")


class TensorRTBuilder(Builder):
    """TensorRT's Python API: a fresh timing cache per build (so timing noise varies the tactics)."""

    name = "tensorrt"

    def validate(self) -> None:
        from bisector.backends.tensorrt import import_trt

        import_trt()  # a one-line MissingDependency where TensorRT is missing

    def build(self, paths: BuildPaths, build: int, force: Path | None = None) -> None:
        from bisector.backends import tensorrt as trt_backend
        from bisector.backends.trt_parse import parse_autotune_log

        cache = forced_cache(force) if force is not None else None
        engine, timing = trt_backend.build_engine(paths.model, editable_timing_cache=True, detailed_profiling=True,
                                                  verbose_log_path=paths.log, timing_cache=cache)
        paths.engine.write_bytes(engine)
        (paths.workdir / TIMING_CACHE).write_bytes(timing)  # what a forced build starts from
        layers = trt_backend.layer_tactics(engine)
        records = parse_autotune_log(paths.log.read_text(errors="replace"))
        write_engine_tactics(paths.tactics, layers, records,
                             {"builder": "tensorrt", "tensorrt": ".".join(map(str, trt_backend.trt_version()))})


class TrtexecBuilder(Builder):
    """``trtexec`` with a timing cache file of the build's own, layer info and a VERBOSE log."""

    name = "trtexec"
    LAYERS = "layers.json"

    def __init__(self, trtexec: str = "trtexec", timeout_s: float | None = None):
        self.trtexec = trtexec
        self.timeout_s = timeout_s

    def validate(self) -> None:
        if shutil.which(self.trtexec) is None:
            raise UserError(f"trtexec ({self.trtexec}) is not on this machine's PATH",
                            hint="install TensorRT, or build with the tensorrt or command builder")

    def argv(self, paths: BuildPaths, force: Path | None = None) -> list[str]:
        out = [self.trtexec, f"--onnx={paths.model}", f"--saveEngine={paths.engine}",
               f"--timingCacheFile={paths.workdir / TIMING_CACHE}", "--profilingVerbosity=detailed",
               f"--exportLayerInfo={paths.workdir / self.LAYERS}", "--verbose"]
        return out

    def build(self, paths: BuildPaths, build: int, force: Path | None = None) -> None:
        from bisector.backends.trt_parse import parse_autotune_log, parse_layer_information

        if force is not None:
            (paths.workdir / TIMING_CACHE).write_bytes(forced_cache(force))
        with open(paths.log, "wb") as log:
            try:
                code = subprocess.run(self.argv(paths), cwd=paths.workdir, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=self.timeout_s, check=False).returncode
            except subprocess.TimeoutExpired:
                raise BuildFailed(f"build {build} ran past `build_timeout` ({self.timeout_s:g} s)") from None
        if code != 0:
            raise BuildFailed(f"build {build}: trtexec failed (exit {code}): {last_line(paths.log)}",
                            hint=f"its log: {paths.log}")
        layers = parse_layer_information((paths.workdir / self.LAYERS).read_text())
        records = parse_autotune_log(paths.log.read_text(errors="replace"))
        write_engine_tactics(paths.tactics, layers, records, {"builder": "trtexec"})


def write_engine_tactics(path: Path, layers, records, meta: dict) -> Path:
    """Our tactics file from the engine inspector's layers and the VERBOSE log's autotuning records.
    A layer named after a tuned op (``op_layers``: ``matMul1`` -> ``matMul1_myl0_0``) gets that op's
    timing-cache key, its selected tactic hash (what the editable timing cache forces) and its cost;
    any other layer its inspector tactic (``TacticValue``, or the kernel name of a Myelin layer)."""
    from bisector.backends.trt_parse import op_layers
    from bisector.build.tactics import Tactic, write_tactics

    by_op = {r.op: r for r in records}  # an op tuned again (other formats): its last record
    tuned = {}
    for op, names in op_layers(records, layers).items():
        for name in names:
            tuned.setdefault(name, by_op[op])
    tactics, times = {}, {}
    for layer in layers:
        rec = tuned.get(layer.name)
        tactic = (rec.selected if rec is not None and rec.selected else None) or layer.tactic
        if not tactic:
            continue  # LAYER_NAMES_ONLY: nothing to record
        tactics[layer.name] = Tactic(layer.name, tactic, name=layer.tactic_name or "", key=rec.key if rec else "")
        if rec is not None and rec.cost_ms is not None:
            times[layer.name] = rec.cost_ms
    return write_tactics(path, tactics, {**meta, "time_ms": times})


def forced_cache(force: Path) -> bytes:
    """A timing cache with every keyed tactic of the tactics file ``force`` forced (10.8+), edited
    from the ``timing.cache`` beside ``force`` (the keys must be in the cache already)."""
    from bisector.backends.trt_cache import force_tactics
    from bisector.build.tactics import read_tactics

    forced = {t.key: t.tactic for t in read_tactics(force).values() if t.key}
    if not forced:
        raise UserError(f"{force}: no tactic carries a timing-cache key, so none can be forced",
                        hint="the keys come from the build's VERBOSE log (Autotuning op ... (key: 0x...))")
    base = force.parent / TIMING_CACHE
    return force_tactics(base.read_bytes() if base.exists() else b"", forced)


def make_builder(kind: str, build_cmd: str | None = None, timeout_s: float | None = None,
                 trtexec: str = "trtexec", launch_dir: Path | None = None) -> Builder:
    """The builder ``kind`` names; ``launch_dir``: where the command builder's relative paths are found."""
    if kind == "command":
        return CommandBuilder(build_cmd, timeout_s, launch_dir)
    if build_cmd:
        raise UserError(f"`build_cmd` is for the command builder, not `builder` {kind}")
    if kind == "tensorrt":
        return TensorRTBuilder()
    if kind == "trtexec":
        return TrtexecBuilder(trtexec, timeout_s)
    raise UserError(f"`builder` {kind!r}: choose command, tensorrt or trtexec")
