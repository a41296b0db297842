"""Cut a subgraph out of a model by node set. Cut tensors become graph inputs.

The candidate of reduce is just a set of node positions. Everything else follows from it:

- its **inputs** are the tensors its nodes read that no node in the set writes (original graph
  inputs and *cut tensors*), minus weights;
- its **outputs** are the tensors its nodes write that no node in the set reads, or that a node
  outside the set reads, plus original graph outputs written in the set. A tensor read both
  inside and outside stays visible: a fault on it must not hide behind a consumer that happens to
  be in the candidate;
- weights are referenced, never copied: initializers keep their external-data references.

Example::

    cutter = SubgraphCutter(model, types)      # types: {tensor: (np.dtype, shape)}
    sub = cutter.cut({4, 5, 9})
    sub.model, sub.inputs, sub.outputs
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from bisector.model.graph import GraphIndex


@dataclass
class Subgraph:
    model: onnx.ModelProto
    nodes: list[int]
    inputs: list[str]
    outputs: list[str]


class SubgraphCutter:
    """Builds candidate models fast: the index and the per-tensor protos are made once.

    ``types`` gives each tensor's dtype and shape (from recorded activations or shape inference);
    tensors without an entry get an untyped value info, which onnxruntime accepts for outputs.
    """

    def __init__(self, model: onnx.ModelProto, types: dict[str, tuple[np.dtype, list[int]]]):
        self.model = model
        self.index = GraphIndex(model)
        self.types = types
        self._nodes = list(model.graph.node)
        self._inits = {t.name: t for t in model.graph.initializer}
        self._sparse = {t.values.name: t for t in model.graph.sparse_initializer}
        self._graph_outputs = set(self.index.graph_outputs)
        self._vi_cache: dict[str, onnx.ValueInfoProto] = {}
        self._orig_inputs = {vi.name: vi for vi in model.graph.input}
        self._orig_outputs = {vi.name: vi for vi in model.graph.output}
        self._reads = [tuple(dict.fromkeys(ins)) for ins in self.index.inputs]  # each tensor once per node
        self._readers = {t: len(c) for t, c in self.index.consumers.items()}

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        vi = self._vi_cache.get(name)
        if vi is None:
            if name in self._orig_inputs:
                vi = self._orig_inputs[name]
            elif name in self._orig_outputs and self._orig_outputs[name].type.HasField("tensor_type"):
                vi = self._orig_outputs[name]
            elif name in self.types:
                dtype, shape = self.types[name]
                elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
                vi = helper.make_tensor_value_info(name, elem, [d if d >= 0 else None for d in shape])
            else:
                vi = onnx.ValueInfoProto(name=name)
            self._vi_cache[name] = vi
        return vi

    def boundary(self, nodes) -> tuple[list[int], list[str], list[str]]:
        """Sorted node positions, input tensor names and output tensor names of a node set."""
        order = sorted(nodes)
        idx = self.index
        produced: set[str] = set()
        for i in order:
            produced.update(idx.outputs[i])
        inputs: dict[str, None] = {}
        consumed: dict[str, int] = {}  # tensor -> how many nodes of the set read it
        for i in order:
            for t in self._reads[i]:
                consumed[t] = consumed.get(t, 0) + 1
                if t not in produced and t not in self._inits and t not in self._sparse:
                    inputs.setdefault(t, None)
        outputs = [t for i in order for t in idx.outputs[i]
                   if not consumed.get(t) or consumed[t] < self._readers[t] or t in self._graph_outputs]
        return order, list(inputs), outputs

    def cut(self, nodes) -> Subgraph:
        order, inputs, outputs = self.boundary(nodes)
        graph = onnx.GraphProto(name=self.model.graph.name or "bisector_candidate")
        graph.node.extend(self._nodes[i] for i in order)
        needed = {t for i in order for t in self.index.inputs[i]}
        graph.initializer.extend(self._inits[t] for t in needed if t in self._inits)
        graph.sparse_initializer.extend(self._sparse[t] for t in needed if t in self._sparse)
        graph.input.extend(self.value_info(t) for t in inputs)
        graph.output.extend(self.value_info(t) for t in outputs)
        m = onnx.ModelProto(ir_version=self.model.ir_version, producer_name="bisector",
                            model_version=self.model.model_version)
        m.opset_import.extend(self.model.opset_import)
        m.functions.extend(self.model.functions)
        m.graph.CopyFrom(graph)
        return Subgraph(m, order, inputs, outputs)
