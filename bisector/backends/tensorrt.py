"""TensorRT 10.x / 11.x, imported lazily: build an engine, read each layer's tactic, run an engine.
Forcing tactics through the editable timing cache is in ``trt_cache``.

Written against the documented Python API (../shared/notes/TENSORRT.md); TensorRT cannot be
installed on the development machines, so this module is only exercised by tests that skip there.
Text formats are parsed without tensorrt: inspector JSON and the VERBOSE log in ``trt_parse``,
Polygraphy's tactic replay in ``trt_replay``.

Example::

    engine, cache = build_engine("model.onnx", editable_timing_cache=True, verbose_log_path="build.log")
    layers = layer_tactics(engine)                                   # [LayerInfo(name, tactic, ...)]
    out = TensorRTRunner(engine).run([{"input": x}])                 # needs torch with CUDA

TensorRT <= 10.11 only (weak typing; ``require_weak_typing`` refuses 10.12 and later)::

    layers = network_layers("model.onnx")                            # [NetworkLayer(index, name, ...)]
    engine3, _ = build_engine("model.onnx", strongly_typed=False, fp16=True,
                              layer_precisions={"/head/MatMul": "fp32"}, precision_constraints="obey")
"""

from __future__ import annotations

import functools

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bisector.backends.trt_parse import LayerInfo, parse_layer_information
from bisector.errors import MissingDependency, UserError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'bisector[tensorrt]' on a machine with an NVIDIA GPU"
LAST_WEAK_TYPING = (10, 11)  # layer.precision / FP16 flags: deprecated in 10.12, removed in 11
# --precision-constraints value -> BuilderFlag name (weak typing only)
PRECISION_CONSTRAINTS = {"obey": "OBEY_PRECISION_CONSTRAINTS", "prefer": "PREFER_PRECISION_CONSTRAINTS"}
PRECISIONS = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16", "int8": "INT8", "int32": "INT32",
              "fp8": "FP8", "int64": "INT64", "bool": "BOOL", "uint8": "UINT8"}
FLOAT_DTYPES = ("FLOAT", "HALF", "BF16")
TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
                "INT32": "int32", "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


def import_trt():
    """Import tensorrt or raise a one-line ``MissingDependency``."""
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: bindings present, libnvinfer missing
        raise MissingDependency("tensorrt is not installed", hint=INSTALL_HINT) from None
    if not hasattr(tensorrt, "Builder"):  # the PyPI stub package
        raise MissingDependency("tensorrt is installed but is only a stub", hint=INSTALL_HINT)
    return tensorrt


def trt_version() -> tuple[int, ...]:
    """``(10, 8, 0, 43)`` for TensorRT 10.8.0.43."""
    return _version_tuple(import_trt().__version__)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:4])


def require_weak_typing(version: str) -> tuple[int, ...]:
    """``version``'s tuple if that TensorRT still has weak typing (<= 10.11), else a UserError.

    Layer precision constraints (``layer.precision``, ``set_output_type``, OBEY/PREFER_PRECISION_
    CONSTRAINTS, the FP16/BF16 flags) were deprecated in 10.12 and removed in 11. Pure: the version
    text is ``tensorrt.__version__``.
    """
    parsed = _version_tuple(version)
    if parsed[:2] > LAST_WEAK_TYPING:
        raise UserError(f"TensorRT {version} has no weak typing for bisector (layer precision constraints were "
                        "deprecated in 10.12 and removed in 11)",
                        hint="drop `constraints`: the keep-set is then written into the ONNX graph "
                             "(mixed.onnx), which every TensorRT version builds strongly typed")
    return parsed


def weak_typing_trt():
    """``tensorrt``, imported, if it is installed and still weakly typed; else a one-line UserError."""
    trt = import_trt()
    require_weak_typing(trt.__version__)
    return trt


def builder_flag(trt, name: str):
    """A BuilderFlag by name; its integer value differs between versions, so never by number."""
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise UserError(f"TensorRT {trt.__version__} has no BuilderFlag.{name}")
    return flag


def _logger(trt, verbose_log_path: str | os.PathLike | None):
    """A trt.ILogger that forwards warnings and errors to ``logging`` and, when a path is given,
    writes every message (VERBOSE included) there, one per line with a ``[V]``-style prefix."""
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: ("F", logging.CRITICAL), sev.ERROR: ("E", logging.ERROR),
              sev.WARNING: ("W", logging.WARNING), sev.INFO: ("I", logging.INFO),
              sev.VERBOSE: ("V", logging.DEBUG)}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.file = open(verbose_log_path, "w", encoding="utf-8") if verbose_log_path else None

        def log(self, severity, msg):
            letter, level = levels.get(severity, ("I", logging.INFO))
            if self.file:
                self.file.write("".join(f"[{letter}] {line}\n" for line in str(msg).splitlines()))
            if level >= logging.ERROR:
                self.errors.append(" ".join(str(msg).split()))
            if level >= logging.WARNING:
                log.log(level, "TensorRT: %s", msg)

        def close(self):
            if self.file:
                self.file.close()
                self.file = None

    return _Logger()


@functools.lru_cache(maxsize=None)
def quiet_logger(trt):
    """One logger (no file) per tensorrt module for runtimes and caches, made once: TensorRT objects
    keep a pointer to their logger, so it must outlive them."""
    return _logger(trt, None)


def parse_onnx(trt, network, onnx_path: str | os.PathLike, logger):
    """Parse with ``parse_from_file``: external data resolves next to the model (no ``../``).
    Returns the parser, which must outlive the build (it owns the weights)."""
    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(path)):
        return parser
    errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
    hint = "keep the model next to its external weight file"
    bad = unsupported_nodes(trt, path, logger)
    if bad:
        hint = f"unsupported ONNX node indices: {', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}"
    raise UserError(f"TensorRT cannot parse {path.name}: {errors[0] if errors else 'unknown error'}"
                    f"{f' (+{len(errors) - 1} more)' if len(errors) > 1 else ''}", hint=hint)


def unsupported_nodes(trt, onnx_path: Path, logger) -> list[int]:
    """ONNX node indices in subgraphs the parser cannot take (``supports_model_v2``, 10.x and 11;
    ``supports_model`` was removed in 11). Empty when the query is unavailable."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not hasattr(parser, "supports_model_v2"):
        return []
    try:
        parser.supports_model_v2(onnx_path.read_bytes(), str(onnx_path))
        return sorted(n for i in range(parser.num_subgraphs) if not parser.is_subgraph_supported(i)
                      for n in parser.get_subgraph_nodes(i))
    except Exception:  # a diagnostic only: the parse error above is what the user sees
        return []


def check_precision_request(version: str, *, strongly_typed: bool, weak: bool) -> None:
    """UserError when a build asks TensorRT ``version`` (``tensorrt.__version__``) for a precision it
    cannot take: ``weak`` (fp16/bf16 flags or layer precisions) on 11.x, which is always strongly
    typed, or together with ``strongly_typed``. A warning from 10.12, which deprecates weak typing.
    Pure: ``build_engine`` calls it before it builds anything."""
    if not weak:
        return
    if _version_tuple(version)[0] >= 11:
        raise UserError(f"TensorRT {version} is always strongly typed (no fp16/bf16 flags, no layer "
                        "precisions): the precision must be written into the ONNX graph",
                        hint="convert the model to fp16/bf16 with Casts around the fp32 keep-set")
    if strongly_typed:
        raise UserError("fp16/bf16/layer precisions need a weakly typed build",
                        hint="pass strongly_typed=False (TensorRT <= 10.11) or put the precision in the ONNX graph")
    if _version_tuple(version)[:2] > LAST_WEAK_TYPING:
        log.warning("TensorRT %s deprecates weak typing (layer precisions, FP16/BF16 flags); 11.x removes it", version)


def build_engine(onnx_path: str | os.PathLike, *, strongly_typed: bool = True, fp16: bool = False,
                 bf16: bool = False, tf32: bool = True, layer_precisions: Mapping[str, str] | None = None,
                 timing_cache: bytes | None = None, editable_timing_cache: bool = False,
                 builder_optimization_level: int | None = None, detailed_profiling: bool = True,
                 verbose_log_path: str | os.PathLike | None = None,
                 precision_constraints: str = "obey") -> tuple[bytes, bytes]:
    """Build a serialized engine; returns ``(engine_bytes, timing_cache_bytes)``.

    - ``strongly_typed`` (default): precision comes from the ONNX graph. 11.x is always strongly
      typed. ``fp16``/``bf16``/``layer_precisions`` ({network layer name: fp32|fp16|...}, set as
      ``layer.precision`` plus float output types, with OBEY_PRECISION_CONSTRAINTS) need
      ``strongly_typed=False`` and TensorRT <= 10.11 (deprecated in 10.12, removed in 11: UserError).
      ``precision_constraints`` says how the builder takes ``layer_precisions``: ``"obey"``
      (OBEY_PRECISION_CONSTRAINTS: fail rather than ignore one) or ``"prefer"`` (PREFER_...).
    - ``tf32=False`` clears BuilderFlag.TF32 (the "FP32" baseline is TF32 otherwise).
    - ``timing_cache``: a serialized cache to start from (None: a fresh empty one, so timing noise
      varies tactic choices between builds). ``editable_timing_cache`` sets EDITABLE_TIMING_CACHE
      (10.8+), needed to force tactics and to get the autotuning lines in the VERBOSE log.
    - ``builder_optimization_level`` 0 takes the first working tactic and ignores the cache.
    - ``detailed_profiling`` builds with ProfilingVerbosity.DETAILED so ``layer_tactics`` sees tactics.
    - ``verbose_log_path`` receives every log line (for ``trt_parse.parse_autotune_log``).
    """
    if precision_constraints not in PRECISION_CONSTRAINTS:
        raise UserError(f"precision constraints {precision_constraints!r}: choose obey or prefer")
    trt = import_trt()
    check_precision_request(trt.__version__, strongly_typed=strongly_typed,
                            weak=fp16 or bf16 or bool(layer_precisions))
    if timing_cache and builder_optimization_level == 0:
        log.warning("builder optimization level 0 ignores the timing cache")

    logger = _logger(trt, verbose_log_path)
    try:
        builder = trt.Builder(logger)
        flags = 0
        if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = parse_onnx(trt, network, onnx_path, logger)  # noqa: F841 (keeps weights alive)
        config = _builder_config(trt, builder, network, detailed_profiling=detailed_profiling,
                                 optimization_level=builder_optimization_level, tf32=tf32, fp16=fp16, bf16=bf16,
                                 layer_precisions=layer_precisions, precision_constraints=precision_constraints,
                                 editable_timing_cache=editable_timing_cache)
        cache = config.create_timing_cache(bytes(timing_cache or b""))
        if not config.set_timing_cache(cache, False):
            raise UserError("TensorRT rejected the timing cache",
                            hint="a cache only fits the TensorRT version and GPU that wrote it")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UserError(f"TensorRT could not build the engine: {logger.errors[-1] if logger.errors else 'no error logged'}",
                            hint="rerun with a verbose log to see why")
        return bytes(serialized), bytes(config.get_timing_cache().serialize())
    finally:
        logger.close()


def _builder_config(trt, builder, network, *, detailed_profiling: bool, optimization_level: int | None, tf32: bool,
                    fp16: bool, bf16: bool, layer_precisions, precision_constraints: str, editable_timing_cache: bool):
    """The builder config that ``build_engine``'s arguments ask for (see its docstring)."""
    config = builder.create_builder_config()
    if detailed_profiling:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    if not tf32:
        config.clear_flag(builder_flag(trt, "TF32"))
    for name, on in (("FP16", fp16), ("BF16", bf16), ("EDITABLE_TIMING_CACHE", editable_timing_cache)):
        if on:
            config.set_flag(builder_flag(trt, name))
    if layer_precisions:
        _constrain_layers(trt, network, layer_precisions)
        config.set_flag(builder_flag(trt, PRECISION_CONSTRAINTS[precision_constraints]))
    return config


def _constrain_layers(trt, network, layer_precisions: Mapping[str, str]) -> None:
    """Weak typing only: ``layer.precision`` and the output type of float outputs."""
    wanted = dict(layer_precisions)
    unknown = [p for p in wanted.values() if p.lower() not in PRECISIONS]
    if unknown:
        raise UserError(f"unknown precision {unknown[0]!r}", hint=f"one of {', '.join(PRECISIONS)}")
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        precision = wanted.pop(layer.name, None)
        if precision is None:
            continue
        dtype = getattr(trt.DataType, PRECISIONS[precision.lower()])
        layer.precision = dtype
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype.name in FLOAT_DTYPES and dtype.name in FLOAT_DTYPES:
                layer.set_output_type(j, dtype)
    if wanted:
        raise UserError(f"{len(wanted)} layer(s) not in the TensorRT network, e.g. {next(iter(wanted))!r}",
                        hint="network layer names follow ONNX node names; engine layer names differ")


@dataclass(frozen=True)
class NetworkLayer:
    """One layer of a parsed (not built) network, as plain data: what a precision plan needs.

    ``type`` is the LayerType member name (``CONSTANT``, ``MATRIX_MULTIPLY``, ...); ``metadata`` is
    what TensorRT 10's ONNX parser records (``[ONNX Layer: <node>]``, empty before that);
    ``outputs`` holds ``(DataType name, is_execution_tensor)`` per output (``("FLOAT", True)``).
    """

    index: int
    name: str
    type: str
    metadata: str = ""
    outputs: tuple[tuple[str, bool], ...] = ()


def network_layers(onnx_path: str | os.PathLike) -> list[NetworkLayer]:
    """Parse ``onnx_path`` into a weakly typed network (nothing is built) and describe its layers."""
    trt = import_trt()
    logger = _logger(trt, None)
    try:
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = parse_onnx(trt, network, onnx_path, logger)  # noqa: F841 (owns the weights)
        out = []
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            outputs = tuple((layer.get_output(j).dtype.name, bool(layer.get_output(j).is_execution_tensor))
                            for j in range(layer.num_outputs))
            out.append(NetworkLayer(i, layer.name, layer.type.name, str(getattr(layer, "metadata", "") or ""),
                                    outputs))
        return out
    finally:
        logger.close()


def _deserialize(trt, engine_bytes: bytes, logger=None):
    runtime = trt.Runtime(logger or quiet_logger(trt))
    engine = runtime.deserialize_cuda_engine(bytes(engine_bytes))
    if engine is None:
        raise UserError("TensorRT cannot load the engine", hint="an engine only loads on the TensorRT version and GPU that built it")
    return runtime, engine


def layer_tactics(engine_bytes: bytes) -> list[LayerInfo]:
    """Each engine layer with its tactic, via the engine inspector (needs a DETAILED build).
    Engine layer names are fused names (``matMul1_myl0_0``), not network layer names."""
    trt = import_trt()
    _runtime, engine = _deserialize(trt, engine_bytes)
    inspector = engine.create_engine_inspector()
    return parse_layer_information(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# ---------------------------------------------------------------- running an engine
class TensorRTRunner:
    """Runs a serialized engine on numpy feeds with ``execute_async_v3``; buffers and the stream come
    from torch (a CUDA build), which must be installed. Inputs are cast to the engine's input types;
    bf16 outputs come back as float32. Host (shape) tensors and data-dependent output shapes are not
    supported: use ``polygraphy run`` for those.
    """

    name = "tensorrt"

    def __init__(self, engine: bytes | str | os.PathLike):
        self.engine_bytes = engine if isinstance(engine, bytes) else Path(engine).read_bytes()

    def run(self, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        trt = import_trt()
        try:
            import torch
        except ImportError:
            raise MissingDependency("running a TensorRT engine needs torch with CUDA",
                                    hint="pip install torch, or use polygraphy run") from None
        _runtime, engine = _deserialize(trt, self.engine_bytes)
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        stream = torch.cuda.current_stream()  # the one the input copies were queued on
        results = []
        for sample in samples:
            missing = set(inputs) - set(sample)
            if missing:
                raise UserError(f"no data for input(s) {', '.join(sorted(missing))}")
            keep = {}
            for n in inputs:
                arr = np.ascontiguousarray(sample[n])
                keep[n] = torch.from_numpy(arr).to("cuda").to(self._torch_dtype(torch, engine.get_tensor_dtype(n)))
                context.set_input_shape(n, tuple(arr.shape))
                context.set_tensor_address(n, keep[n].data_ptr())
            for n in outputs:
                shape = tuple(context.get_tensor_shape(n))
                if any(d < 0 for d in shape):
                    raise UserError(f"output {n!r} has a data-dependent shape", hint="use polygraphy run")
                keep[n] = torch.empty(shape, dtype=self._torch_dtype(torch, engine.get_tensor_dtype(n)), device="cuda")
                context.set_tensor_address(n, keep[n].data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise UserError("TensorRT failed to run the engine")
            stream.synchronize()
            results.append({n: (keep[n].float() if keep[n].dtype == torch.bfloat16 else keep[n]).cpu().numpy()
                            for n in outputs})
        return results

    @staticmethod
    def _torch_dtype(torch, trt_dtype) -> Any:
        name = TORCH_DTYPES.get(trt_dtype.name)
        if name is None:
            raise UserError(f"bisector cannot run TensorRT tensors of type {trt_dtype.name}")
        return getattr(torch, name)
