"""What ``--compare`` runs and against what: a *target* (a provider, optionally a reduced precision
with a keep-set) and a *reference* (onnxruntime CPU fp32 by default, or the fp64 reference
evaluator).

On the CPU provider a reduced precision is emulated by default (``realize="emulate"``): onnxruntime
computes most fp16 ops in fp32 and drops the Casts between them, so a true fp16 model there hides
activation overflow (../shared/notes/ONNXRUNTIME.md). GPU providers run the true mixed model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from bisector.backends.onnxrt import OnnxRuntime, reads_weights_from_folder
from bisector.errors import UserError
from bisector.model import io as mio

REFERENCES = ("onnxrt", "fp64")


@dataclass(frozen=True)
class Target:
    """``provider`` in cpu/cuda/tensorrt; ``precision`` fp16/bf16 or None; ``keep`` node names kept
    in fp32; ``realize`` true/emulate (None: emulate on cpu, true elsewhere)."""

    provider: str = "cpu"
    precision: str | None = None
    keep: frozenset[str] = field(default_factory=frozenset)
    realize: str | None = None
    opt_level: str = "all"

    @property
    def realization(self) -> str:
        if self.realize:
            return self.realize
        return "emulate" if self.provider == "cpu" else "true"

    def describe(self) -> str:
        text = f"onnxruntime {self.provider}"
        if self.precision:
            text += f" {self.precision} ({self.realization})"
            if self.keep:
                text += f", {len(self.keep)} node(s) kept fp32"
        return text

    def transform(self, model: onnx.ModelProto, weights_dir: Path | None) -> onnx.ModelProto:
        """The model this target runs: ``model`` itself, or its precision rewrite."""
        if not self.precision:
            return model
        from bisector.model.precision import rewrite

        present = {n.name for n in model.graph.node}
        keep = frozenset(k for k in self.keep if k in present)
        return rewrite(model, self.precision, keep=keep, realize=self.realization, weights_dir=weights_dir)

    def run(self, model: onnx.ModelProto, weights_dir: Path | None, workdir: Path,
            samples: list[dict[str, np.ndarray]], output_names: list[str] | None = None,
            name: str = "target.onnx") -> list[dict[str, np.ndarray]]:
        """Run ``model`` (its external weights in ``weights_dir``, which may be the user's own). It
        goes to onnxruntime as bytes that read the weights where they are: nothing is written, and
        nothing links to the weight files (``onnx.load`` refuses a model whose weight file has another
        link). An onnxruntime older than 1.21 gets ``workdir/name`` with a copy of the weights used."""
        m = mio.normalize_ir(self.transform(model, weights_dir))
        rt = OnnxRuntime(self.provider, opt_level=self.opt_level)
        if m.ByteSize() < mio.PROTOBUF_LIMIT_BYTES and (weights_dir is None or not mio.external_locations(m)
                                                    or reads_weights_from_folder()):
            return rt.run(m.SerializeToString(), samples, output_names, weights_dir=weights_dir)
        path = mio.save(m, Path(workdir) / name, weights_from=weights_dir, weights="file")
        return rt.run(path, samples, output_names)


def run_reference(kind: str, model: onnx.ModelProto, weights_dir: Path | None, workdir: Path,
                  samples: list[dict[str, np.ndarray]], output_names: list[str] | None = None):
    """The default reference: the unmodified model in fp32 on onnxruntime CPU; ``fp64``: golden."""
    if kind == "onnxrt":
        return Target("cpu").run(model, weights_dir, workdir, samples, output_names, name="reference.onnx")
    if kind == "fp64":
        from bisector.backends.reference import ReferenceBackend

        return ReferenceBackend(float64=True).run(model, samples, weights_dir, output_names)
    raise UserError(f"unknown reference {kind!r}", hint=f"choose one of {', '.join(REFERENCES)}")
