"""onnxruntime, imported lazily, with the provider chosen by flag (cpu, cuda, tensorrt).

Example::

    rt = OnnxRuntime("cpu")
    outputs = rt.run("model.onnx", [{"x": x0}, {"x": x1}])   # one dict of outputs per sample
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from bisector.errors import MissingDependency, UserError

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_DISTS = ("onnxruntime", "onnxruntime-gpu")
# Session option that tells onnxruntime (1.21+) where a model given as bytes finds its external data.
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
EXTERNAL_FOLDER_SINCE = (1, 21)


def ort_severity() -> int:
    """onnxruntime's own log lines: warnings and up at bisector's debug level (-v), else errors only
    (its optimizer writes a line per node it cannot rewrite: hundreds on a densenet)."""
    return 1 if log.isEnabledFor(logging.DEBUG) else 3


def import_ort():
    """Import onnxruntime or raise a one-line ``MissingDependency`` saying which extra to install."""
    installed = []
    for dist in _DISTS:
        try:
            importlib.metadata.version(dist)
            installed.append(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(installed) > 1:
        log.warning("both onnxruntime and onnxruntime-gpu are installed; they provide the same module "
                    "and break each other: keep one (pip uninstall onnxruntime)")
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("onnxruntime is not installed",
                                hint="pip install 'bisector[cpu]' (or 'bisector[gpu]' for CUDA, never both)") from None
    onnxruntime.set_default_logger_severity(ort_severity())
    return onnxruntime


class OnnxRuntime:
    """Runs models on one execution provider. ``provider`` is cpu, cuda or tensorrt.

    ``provider_options`` go to the provider (e.g. ``{"trt_fp16_enable": True}``); ``opt_level``
    is onnxruntime's graph optimization level (``all`` by default; ``disable`` for debugging).
    """

    def __init__(self, provider: str = "cpu", provider_options: dict[str, Any] | None = None,
                 opt_level: str = "all", threads: int | None = None):
        if provider not in PROVIDERS:
            raise UserError(f"unknown provider {provider!r}", hint=f"choose one of {', '.join(PROVIDERS)}")
        self.provider = provider
        self.provider_options = provider_options or {}
        self.opt_level = opt_level
        self.threads = threads

    @property
    def name(self) -> str:
        return f"onnxrt-{self.provider}"

    def session(self, model: str | os.PathLike | bytes, weights_dir: Path | None = None):
        """An inference session; a model given as bytes reads its external data from ``weights_dir``
        (see :func:`reads_weights_from_folder`)."""
        ort = import_ort()
        available = ort.get_available_providers()
        wanted = PROVIDERS[self.provider]
        if wanted not in available:
            raise UserError(f"onnxruntime here has no {wanted}", hint=f"available: {', '.join(available)}")
        providers = [(wanted, self.provider_options)] if self.provider_options else [wanted]
        if wanted != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.opt_level]
        opts.log_severity_level = ort_severity()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if weights_dir is not None and isinstance(model, bytes):
            opts.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(Path(weights_dir).resolve()))
        src = model if isinstance(model, bytes) else str(model)
        try:
            return ort.InferenceSession(src, sess_options=opts, providers=providers)
        except Exception as exc:
            text = _one_line(exc)
            hint = None
            if "NOT_IMPLEMENTED" in text:
                hint = ("the provider has no kernel for that op in the types the model uses; for an fp16/bf16 "
                        "model on the CPU, --realize emulate runs it as fp32 with explicit rounding")
            raise UserError(f"onnxruntime cannot load the model: {text}", hint=hint) from None

    def run(self, model: str | os.PathLike | bytes, samples: list[dict[str, np.ndarray]],
            output_names: list[str] | None = None, weights_dir: Path | None = None) -> list[dict[str, np.ndarray]]:
        """Run every sample; returns ``[{output: array}]`` in sample order."""
        sess = self.session(model, weights_dir)
        return run_session(sess, samples, output_names)


def run_session(sess, samples, output_names=None) -> list[dict[str, np.ndarray]]:
    names = output_names or [o.name for o in sess.get_outputs()]
    expected = {i.name for i in sess.get_inputs()}
    results = []
    for s in samples:
        unknown = set(s) - expected
        missing = expected - set(s)
        if missing:
            raise UserError(f"no data for input(s) {', '.join(sorted(missing))}",
                            hint=f"the model's inputs are {', '.join(sorted(expected))}")
        feeds = {k: v for k, v in s.items() if k not in unknown}
        try:
            values = sess.run(names, feeds)
        except Exception as exc:
            raise UserError(f"onnxruntime failed to run the model: {_one_line(exc)}") from None
        results.append(dict(zip(names, values)))
    return results


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def reads_weights_from_folder() -> bool:
    """Whether this onnxruntime reads a model given as bytes with its external data from a folder
    (``EXTERNAL_FOLDER_KEY``): then nothing needs writing, or linking, beside the weights."""
    version = import_ort().__version__.split("+")[0].split(".")
    try:
        return tuple(int(v) for v in version[:2]) >= EXTERNAL_FOLDER_SINCE
    except ValueError:
        return False


def session_from_path(path: Path, provider: str = "cpu"):
    return OnnxRuntime(provider).session(path)
