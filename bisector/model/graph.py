"""Graph-level edits on ONNX protos: stable names, topological order, constant folding, and an
index of who produces and consumes each tensor.

Edits read like sentences and return the model they changed::

    model = name_nodes(toposort(model))
    index = GraphIndex(model)
    index.producer["conv1_out"]    # -> position of the node that writes it
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field

import onnx

from bisector.errors import UserError

log = logging.getLogger(__name__)

# Constant folding leaves outputs bigger than this as computed tensors (weights stay weights).
FOLD_SIZE_THRESHOLD_BYTES = 1 << 20
# Ops that hold a subgraph; reduce keeps them whole, as single nodes.
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})


def op_types(path: str | os.PathLike) -> list[str]:
    """The op type of every top-level node of the model file at ``path``, in graph order (its
    weights are not read)."""
    return [node.op_type for node in onnx.load(os.fspath(path), load_external_data=False).graph.node]


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a stable name, ``<op_type>_<position>``, unique in the graph.

    Names that the input model carries are never changed, so checks and users recognise them.
    The generated name depends only on the node's position in the graph as loaded, so it is the
    same on every run and every resume.
    """
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if node.name:
            continue
        base = f"{node.op_type}_{i}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        taken.add(name)
    return model


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Tensors a control-flow node reads from the enclosing scope (implicit inputs), recursively."""
    outer: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(o for o in n.output)
            for n in g.node:
                for name in list(n.input) + sorted(subgraph_inputs(n)):
                    if name and name not in local:
                        outer.add(name)
            for o in g.output:
                if o.name not in local:
                    outer.add(o.name)
    return outer


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus, for If/Loop/Scan, the outer-scope tensors their bodies read."""
    names = [i for i in node.input if i]
    if node.op_type in CONTROL_FLOW_OPS or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                for a in node.attribute):
        names += sorted(subgraph_inputs(node) - set(names))
    return names


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Order nodes so every tensor is produced before it is read (stable: keeps the given order
    where it is already valid). Raises ``UserError`` on a cycle or a tensor nobody produces."""
    nodes = list(model.graph.node)
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    producer = {}
    for idx, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = idx
    deps = []
    users = defaultdict(list)
    for idx, n in enumerate(nodes):
        d = set()
        for name in node_inputs(n):
            if name in available:
                continue
            if name not in producer:
                raise UserError(f"node {n.name or n.op_type!r} reads tensor {name!r}, which no node, input or initializer provides")
            d.add(producer[name])
        deps.append(d)
        for p in d:
            users[p].append(idx)
    pending = [len(d) for d in deps]
    import heapq

    ready = [i for i, c in enumerate(pending) if c == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i, c in enumerate(pending) if c > 0)
        raise UserError(f"the graph has a cycle through node {stuck.name or stuck.op_type!r}")
    if order != list(range(len(nodes))):
        del model.graph.node[:]
        model.graph.node.extend(nodes[i] for i in order)
    return model


@dataclass
class GraphIndex:
    """Positions of nodes and the producer/consumers of every tensor, built once per model.

    ``producer[t]`` is the position of the node writing ``t`` (absent for graph inputs and
    initializers); ``consumers[t]`` the positions reading it (control-flow bodies included).
    """

    model: onnx.ModelProto
    names: list[str] = field(init=False)
    ops: list[str] = field(init=False)
    inputs: list[list[str]] = field(init=False)
    outputs: list[list[str]] = field(init=False)
    producer: dict[str, int] = field(init=False)
    consumers: dict[str, list[int]] = field(init=False)
    initializers: set[str] = field(init=False)
    graph_inputs: list[str] = field(init=False)
    graph_outputs: list[str] = field(init=False)

    def __post_init__(self) -> None:
        g = self.model.graph
        self.names = [n.name for n in g.node]
        self.ops = [n.op_type for n in g.node]
        self.inputs = [node_inputs(n) for n in g.node]
        self.outputs = [[o for o in n.output if o] for n in g.node]
        self.producer = {o: i for i, outs in enumerate(self.outputs) for o in outs}
        self.consumers = defaultdict(list)
        for i, ins in enumerate(self.inputs):
            for t in dict.fromkeys(ins):
                self.consumers[t].append(i)
        self.initializers = {t.name for t in g.initializer}
        self.graph_inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in g.output]

    def __len__(self) -> int:
        return len(self.names)

    def position(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise UserError(f"no node named {name!r} in the model") from None


# Ops whose output may be a constant although their input is not: shape queries.
SHAPE_QUERY_OPS = frozenset({"Shape", "Size"})


def has_foldable(model: onnx.ModelProto, external: set[str]) -> bool:
    """Whether any node could fold: a Constant, a shape query, or a node reading only in-memory
    initializers (in a sorted graph, the first foldable node is always one of these)."""
    const = {t.name for t in model.graph.initializer if t.name not in external}
    for node in model.graph.node:
        if node.op_type in CONTROL_FLOW_OPS:
            continue
        ins = [t for t in node.input if t]
        if node.op_type in ("Constant", *SHAPE_QUERY_OPS) or all(t in const for t in ins):
            return True
    return False


def _quiet_onnxruntime() -> None:
    """onnxruntime's own warnings (a line per node its optimizer cannot rewrite: hundreds on a
    densenet) only at bisector's debug level (-v)."""
    try:
        import onnxruntime
    except ImportError:
        return
    onnxruntime.set_default_logger_severity(1 if log.isEnabledFor(logging.DEBUG) else 3)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold Constant nodes and computations on constants (shape arithmetic after shapes are
    frozen) with onnx-graphsurgeon, leaving anything bigger than ``FOLD_SIZE_THRESHOLD_BYTES``
    and anything that reads external weights alone. Node names of survivors are kept.

    Falls back to the unfolded model (with a warning) if folding fails: folding is an
    optimisation of the search space, never a requirement.
    """
    external = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    if not has_foldable(model, external):
        return model  # onnx-graphsurgeon would only copy the graph: 0.5 s on 1,000 nodes
    try:
        import onnx_graphsurgeon as gs

        # Shapes of intermediate tensors let onnx-graphsurgeon fold Shape ops of frozen inputs.
        typed = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        graph = gs.import_onnx(typed)

        def reads_external(node) -> bool:
            return any(getattr(t, "name", None) in external for t in node.inputs)

        _quiet_onnxruntime()  # graphsurgeon folds through onnxruntime sessions of its own
        graph.fold_constants(fold_shapes=True, error_ok=True, size_threshold=FOLD_SIZE_THRESHOLD_BYTES,
                             should_exclude_node=reads_external)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        folded = gs.export_onnx(graph, do_type_check=False)
        del folded.graph.value_info[:]  # inferred types were for folding only
        folded.ir_version = model.ir_version
        del folded.opset_import[:]
        folded.opset_import.extend(model.opset_import)
        folded.functions.extend(f for f in model.functions if f not in folded.functions)
        return folded
    except Exception as exc:  # pragma: no cover - depends on the model
        log.warning("constant folding skipped: %s", exc)
        return model
