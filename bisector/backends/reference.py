"""The ONNX reference evaluator (``onnx.reference``), usable as a float64 golden reference.

``ReferenceBackend(float64=True)`` runs a copy of the model in which every float32 tensor,
initializer, Constant and Cast target is float64, then casts the outputs back to their declared
types, so its answer is free of the rounding that fp32 kernels add. It is slow (pure numpy):
use it on small models and reduced subgraphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from bisector.model import io as mio


def _to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)

    def fix_type(t: onnx.TypeProto) -> None:
        if t.HasField("tensor_type") and t.tensor_type.elem_type == TensorProto.FLOAT:
            t.tensor_type.elem_type = TensorProto.DOUBLE

    def fix_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
        if t.data_type != TensorProto.FLOAT:
            return t
        arr = numpy_helper.to_array(t).astype(np.float64)
        return numpy_helper.from_array(arr, t.name)

    def fix_graph(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            fix_type(vi.type)
        new = [fix_tensor(t) for t in g.initializer]
        del g.initializer[:]
        g.initializer.extend(new)
        for n in g.node:
            for a in n.attribute:
                if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.DOUBLE
                if a.type == onnx.AttributeProto.TENSOR:
                    a.t.CopyFrom(fix_tensor(a.t))
                if a.type == onnx.AttributeProto.GRAPH:
                    fix_graph(a.g)
                for sub in a.graphs:
                    fix_graph(sub)

    fix_graph(m.graph)
    return m


class ReferenceBackend:
    """Runs a model with ``onnx.reference.ReferenceEvaluator``; ``float64=True`` for a golden run."""

    def __init__(self, float64: bool = True):
        self.float64 = float64

    @property
    def name(self) -> str:
        return "reference-fp64" if self.float64 else "reference"

    def run(self, model: onnx.ModelProto | str | Path, samples, weights_dir: Path | None = None,
            output_names: list[str] | None = None) -> list[dict[str, np.ndarray]]:
        from onnx.reference import ReferenceEvaluator

        if not isinstance(model, onnx.ModelProto):
            weights_dir = Path(model).parent
            model = mio.load(model)
        m = onnx.ModelProto()
        m.CopyFrom(model)
        if mio.external_locations(m):
            mio.load_weights(m, Path(weights_dir or "."))
        declared = {o.name: o.type.tensor_type.elem_type for o in m.graph.output}
        if self.float64:
            m = _to_double(m)
        evaluator = ReferenceEvaluator(m)
        names = output_names or [o.name for o in m.graph.output]
        results = []
        for s in samples:
            feeds = {k: (np.asarray(v, np.float64) if self.float64 and np.asarray(v).dtype == np.float32 else np.asarray(v))
                     for k, v in s.items()}
            values = evaluator.run(names, feeds)
            out = {}
            for name, v in zip(names, values):
                if declared.get(name) == TensorProto.FLOAT:
                    v = np.asarray(v).astype(np.float32)
                out[name] = v
            results.append(out)
        return results
