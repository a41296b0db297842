"""Polygraphy's flags that are not bisector options, so that a ``polygraphy debug`` command line with
``polygraphy debug`` replaced by ``bisector`` runs as it is.

- Logging (``-v``, ``--verbosity``, ``--silent``, ``--log-file``): they set up Python logging for
  the ``bisector`` loggers, as Polygraphy's do for its logger.
- Flags with nothing to do here (shape inference switches, how Polygraphy saves external data,
  its replay file): taken out, and each is named in one note line with the reason.
- ``bisector compare`` (``polygraphy run``): ``--onnx-outputs``/``--trt-outputs``/``--outputs`` take
  several values (``mark all``) and become ``--outputs``; run flags with nothing to do there
  (``--warm-up``, TensorRT builder flags, ...) are noted.
- Flags bisector cannot honour (``--ignore-external-data``, ``--fp-to-fp16``): refused, with the
  reason and what to do instead.

Example::

    argv, notes, verbosity = take_polygraphy_flags(["-v", "--no-shape-inference", "m.onnx"])
    # argv == ["m.onnx"]; notes == ["--no-shape-inference: ..."]; verbosity.level == logging.INFO
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from bisector.errors import UserError

# Polygraphy's verbosity names (its Logger class), as Python logging levels.
VERBOSITY_LEVELS = {"critical": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING,
                    "info": logging.INFO, "start": logging.INFO, "finish": logging.INFO, "verbose": logging.DEBUG,
                    "extra_verbose": logging.DEBUG, "super_verbose": logging.DEBUG, "ultra_verbose": logging.DEBUG}
LOG_FORMAT = "bisector: %(levelname)s: %(message)s"
LOG_FILE_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"

# flag: (how many values it takes, as in argparse: 0, 1, "?" (optional), "+" (one or more, until the next
# flag) or "*" (none or more)), why it changes nothing here
SHAPES_WHY = "bisector takes every cut tensor's shape from a real onnxruntime run"
WEIGHTS_WHY = "candidates get the session's weights as --weights says"
NO_EFFECT = {
    "--no-shape-inference": (0, SHAPES_WHY),
    "--no-onnxruntime-shape-inference": (0, SHAPES_WHY),
    "--log-format": ("+", "bisector's log lines have one format"),
    "--save-external-data": ("?", WEIGHTS_WHY),
    "--external-data-path": ("?", WEIGHTS_WHY),
    "--external-data-size-threshold": (1, WEIGHTS_WHY),
    "--no-save-all-tensors-to-one-file": (0, WEIGHTS_WHY),
    "--save-debug-replay": (1, "every verdict is in the session's journal: `bisector log SESSION` prints it and "
                               "`bisector replay` replays it"),
    "--data-loader-backend-module": (1, "inputs are generated with numpy"),
}
# TensorRT builder flags of `polygraphy debug precision`: bisector hands ONNX candidates to the check,
# which builds the engines (with --precision-constraints, bisector's own builds use TensorRT's defaults).
TRT_BUILDER_WHY = "a TensorRT builder flag: your check builds the engines"
TRT_BUILDER_FLAGS = {
    **{f: 0 for f in ("--tf32", "--sparse-weights", "--version-compatible", "--exclude-lean-runtime",
                      "--error-on-timing-cache-miss", "--disable-compilation-cache", "--refittable", "--strip-plan",
                      "--use-dla", "--allow-gpu-fallback", "--strongly-typed", "--direct-io", "--weight-streaming",
                      "--mark-unfused-tensors-as-debug-tensors", "--trt-safety-restricted", "--plugin-instancenorm",
                      "--enable-uint8-asymmetric-quantization-dla", "--decomposable-attentions")},
    **{f: 1 for f in ("--calibration-cache", "--calib-base-cls", "--calibration-base-class", "--quantile",
                      "--regression-cutoff", "--load-timing-cache", "--save-timing-cache", "--save-tactics",
                      "--save-tactic-replay", "--load-tactics", "--load-tactic-replay", "--trt-config-script",
                      "--trt-config-postprocess-script", "--trt-cpps", "--builder-optimization-level",
                      "--hardware-compatibility-level", "--max-aux-streams", "--profiling-verbosity",
                      "--runtime-platform", "--tiling-optimization-level", "--all-tensor-dtypes",
                      "--all-tensor-datatypes")},
    **{f: "+" for f in ("--trt-min-shapes", "--trt-max-shapes", "--pool-limit", "--memory-pool-limit", "--plugins",
                        "--onnx-flags", "--trt-outputs", "--trt-exclude-outputs", "--trt-outputs-by-type",
                        "--layer-precisions", "--tensor-dtypes", "--tensor-datatypes", "--tensor-formats",
                        "--all-tensor-formats", "--mark-debug", "--trt-network-postprocess-script", "--trt-npps")},
    **{f: "*" for f in ("--tactic-sources", "--preview-features", "--quantization-flags")},
}
NO_EFFECT.update({f: (nargs, TRT_BUILDER_WHY) for f, nargs in TRT_BUILDER_FLAGS.items()})
NO_EFFECT["--shape-inference"] = NO_EFFECT["--do-shape-inference"] = (0, SHAPES_WHY)
# `polygraphy run` (bisector compare): its tensor-marking flags take several values, as --outputs does;
# the flags that change nothing in a comparison here are noted.
RUN_OUTPUT_FLAGS = ("--outputs", "--onnx-outputs", "--trt-outputs")
RUN_WHY = "bisector compare runs each sample once, with no timing"
RUN_NO_EFFECT = {
    "--warm-up": (1, RUN_WHY),
    "--use-subprocess": (0, "bisector compare runs onnxruntime in its own process"),
    "--sequential-runners": (0, "the target and the reference run one after the other"),
    "--save-engine": (1, "the target runs through onnxruntime here: no engine is written"),
    "--graph-optimization-level": (1, "onnxruntime runs with its default graph optimizations"),
    **{f: (nargs, "a TensorRT builder flag: the target runs through onnxruntime here")
       for f, nargs in TRT_BUILDER_FLAGS.items() if f != "--trt-outputs"},
}
REFUSED = {
    "--ignore-external-data": (0, "a reduce runs its candidates, which needs the weights",
                               "give --external-data-dir DIR if they are elsewhere"),
    "--fp-to-fp16": (0, "bisector does not convert the model before a search",
                     "convert it first, or find what fails in fp16 with `bisector precision --precision fp16`"),
    "--fp8": (0, "bisector lowers nodes to fp16, bf16 or int8", "give --fp16, --bf16 or --int8"),
}


@dataclass
class Verbosity:
    level: int = logging.WARNING
    silent: bool = False
    log_file: Path | None = None
    notes: list[str] = field(default_factory=list)

    def configure(self, nested: bool = False) -> None:
        """Route the ``bisector`` loggers to stderr at ``level`` (nothing when silent), and to
        ``log_file`` too if given. ``nested``: the command line of a ``resume`` or ``replay``,
        run inside the one the user typed; its flags add to what that one set up, and remove none."""
        from bisector.engine.records import EVENTS_LOGGER

        logger = logging.getLogger("bisector")
        ours = [h for h in logger.handlers if getattr(h, "_bisector", False)]
        if not nested:
            for h in ours:
                logger.removeHandler(h)
                h.close()
            ours = []
        handlers: list[logging.Handler] = []
        stream = next((h for h in ours if not isinstance(h, logging.FileHandler)), None)
        if stream is not None:
            stream.setLevel(min(stream.level, self.level))
        elif not self.silent:
            handlers.append(logging.StreamHandler())
            handlers[-1].setFormatter(_LowerLevelFormatter(LOG_FORMAT))
            handlers[-1].addFilter(lambda record: not record.name.startswith(EVENTS_LOGGER))
            handlers[-1].setLevel(self.level)
        files = {getattr(h, "baseFilename", None) for h in ours}
        if self.log_file is not None and str(Path(self.log_file).absolute()) not in files:
            try:
                handlers.append(logging.FileHandler(self.log_file))
            except OSError as exc:
                raise UserError(f"--log-file {self.log_file}: {exc.strerror or exc}") from None
            handlers[-1].setFormatter(logging.Formatter(LOG_FILE_FORMAT))
            handlers[-1].setLevel(min(self.level, logging.INFO))
        for h in handlers:
            h._bisector = True  # type: ignore[attr-defined]
            logger.addHandler(h)
        logger.setLevel(min([h.level for h in ours + handlers], default=logging.CRITICAL))


class _LowerLevelFormatter(logging.Formatter):
    """``bisector: warning: ...``, in the style of the ``bisector: error:`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord({**record.__dict__, "levelname": record.levelname.lower()})
        return super().format(record)


def take_polygraphy_flags(argv: list[str]) -> tuple[list[str], list[str], Verbosity]:
    """``argv`` (the options before ``--check``) without Polygraphy's logging flags and the flags
    that change nothing here; the notes to print about the latter; the logging they ask for."""
    out: list[str] = []
    v = Verbosity()
    verbose = 0
    explicit: int | None = None
    i = 0
    while i < len(argv):
        tok = argv[i]
        name, eq, inline = tok.partition("=")
        if tok in ("-v", "--verbose") or (tok.startswith("-v") and set(tok[1:]) == {"v"}):
            verbose += 1 if tok.startswith("--") else len(tok) - 1
        elif name == "--silent":
            v.silent = True
        elif name == "--verbosity":
            values, i = _values(argv, i, inline if eq else None, "+")
            explicit = _verbosity(values)
            continue
        elif name == "--log-file":
            values, i = _values(argv, i, inline if eq else None, 1)
            v.log_file = Path(values[0])
            continue
        elif _command(out) == "compare" and name in RUN_OUTPUT_FLAGS:
            values, i = _values(argv, i, inline if eq else None, "+")
            out += [x for value in values for x in ("--outputs", value)]
            continue
        elif _command(out) == "compare" and name in RUN_NO_EFFECT:
            nargs, why = RUN_NO_EFFECT[name]
            values, i = _values(argv, i, inline if eq else None, nargs)
            v.notes.append(f"{name}: no effect in bisector compare ({why})")
            continue
        elif name in NO_EFFECT:
            nargs, why = NO_EFFECT[name]
            values, i = _values(argv, i, inline if eq else None, nargs)
            if name == "--data-loader-backend-module" and values != ["numpy"]:
                raise UserError(f"--data-loader-backend-module {values[0]}: bisector generates inputs with numpy only",
                                hint="drop the flag, or save torch-generated inputs and pass --load-inputs")
            v.notes.append(f"{name}: no effect in bisector ({why})")
            continue
        elif name == "--model-type":
            values, i = _values(argv, i, inline if eq else None, 1)
            if values[0] != "onnx":
                raise UserError(f"--model-type {values[0]}: bisector works on ONNX models",
                                hint="give the ONNX model the engine was built from")
            continue
        elif name in REFUSED:
            _, why, hint = REFUSED[name]
            raise UserError(f"{name} is Polygraphy's and cannot work here: {why}", hint=hint)
        else:
            out.append(tok)
        i += 1
    v.level = explicit if explicit is not None else max(logging.DEBUG, logging.WARNING - 10 * verbose)
    return out, v.notes, v


def _command(out: list[str]) -> str | None:
    """The command of the argv taken so far (its first word)."""
    return next((tok for tok in out if not tok.startswith("-")), None)


def _values(argv: list[str], i: int, inline: str | None, nargs) -> tuple[list[str], int]:
    """The values of the flag at ``argv[i]`` and the index after them."""
    if inline is not None:
        return [inline], i + 1
    rest = argv[i + 1:]
    if nargs == 0:
        return [], i + 1
    if nargs == "?":
        return (rest[:1], i + 2) if rest and not rest[0].startswith("-") else ([], i + 1)
    if nargs == "*":
        n = next((k for k, a in enumerate(rest) if a.startswith("-")), len(rest))
        return rest[:n], i + 1 + n
    if not rest or rest[0].startswith("-"):
        raise UserError(f"{argv[i]} needs a value")
    if nargs == 1:
        return rest[:1], i + 2
    n = next((k for k, a in enumerate(rest) if a.startswith("-")), len(rest))
    return rest[:n], i + 1 + n


def _verbosity(values: list[str]) -> int:
    """Polygraphy's ``--verbosity INFO`` (or ``path:LEVEL`` per path: the last level counts here)."""
    level = logging.WARNING
    for value in values:
        word = value.rpartition(":")[2].strip().lower()
        if word not in VERBOSITY_LEVELS:
            raise UserError(f"--verbosity {value!r}: choose one of {', '.join(VERBOSITY_LEVELS)}")
        level = VERBOSITY_LEVELS[word]
    return level
