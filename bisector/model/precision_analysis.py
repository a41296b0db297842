"""The analysis behind the mixed-precision rewrite: which nodes can compute in fp16/bf16, and what
each node demands of its inputs.

:func:`analyze` reads the tensor types (shape inference, else what the model declares) and the op
schemas at the model's opset. For each top-level node it gives either a plan (``plans``: the
outputs that turn low and, per float input, whether it must be low or fp32) or, for a node that
stays fp32, its input demands (``fixed``: fp32, or ``"any"`` where the input's type is free and
unshared). Constant nodes get neither: their float outputs join the float initializers in
``constants``. ``pinned`` holds the tensors that must stay fp32 under their own name (graph
outputs, names that subgraphs read). ``precision.rewrite`` realizes a keep-set from one analysis;
the rules (what is lowerable, which inputs stay fp32) are in ``precision``'s module docstring.

Example::

    a = analyze(model, TensorProto.FLOAT16)
    lowerable = [model.graph.node[i].name for i in a.plans]
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from itertools import chain

import onnx
from onnx import TensorProto

log = logging.getLogger(__name__)

_FLOAT = TensorProto.FLOAT
_TYPE_STR = {TensorProto.FLOAT16: "tensor(float16)", TensorProto.BFLOAT16: "tensor(bfloat16)"}
# Inputs that stay fp32 when their node is lowered: Resize/Upsample scales are tensor(float) by
# schema; Resize roi has a type of its own and holds coordinates, which need no rounding.
_FP32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
# Outputs typed by an attribute (stash_type), not by the inputs: they keep their type.
_FP32_OUTPUTS = {"LayerNormalization": {1, 2}}
# Never lowered: outputs typed by a `dtype` attribute, with no fp16 kernel on onnxruntime CPU and
# no input to cast from. They stay fp32; their lowered readers cast.
_FP32_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
             "Bernoulli", "Multinomial"}


@dataclass
class Analysis:
    types: dict[str, int]  # elem type of every top-level tensor we know
    plans: dict[int, tuple[list[int], list[str | None]]] = field(default_factory=dict)
    # plan: (output indices that turn low, per-input demand "low"/"float"/None when lowered)
    fixed: dict[int, list[str | None]] = field(default_factory=dict)  # demands when not lowered
    pinned: set[str] = field(default_factory=set)  # must stay fp32 under their own name
    constants: set[str] = field(default_factory=set)
    unnamed: int = 0  # float nodes left fp32 because they have no name


def analyze(model: onnx.ModelProto, low: int) -> Analysis:
    g = model.graph
    types = _elem_types(model)
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    a = Analysis(types)
    a.pinned = {o.name for o in g.output}
    inputs = {i.name for i in g.input}
    a.constants = {t.name for t in g.initializer if t.data_type == _FLOAT and t.name not in inputs}
    low_str = _TYPE_STR[low]
    for i, node in enumerate(g.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            if types.get(node.output[0]) == _FLOAT:
                a.constants.add(node.output[0])
            continue
        sub = any(True for _ in _subgraphs(node))
        if sub:
            a.pinned |= _subgraph_refs(node)
        schema = _schema(node.op_type, opsets.get(node.domain or "ai.onnx"), node.domain)
        plan = _lower_plan(node, schema, types, low_str) if schema and not sub \
            and node.op_type not in _FP32_OPS else None
        if plan and not node.name:
            a.unnamed, plan = a.unnamed + 1, None
        if plan:
            a.plans[i] = plan
        else:
            a.fixed[i] = _fixed_demands(node, schema, types)
    return a


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    try:
        inferred = list(onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.value_info)
    except Exception as exc:  # too large, or a model onnx cannot infer: what the model declares
        log.debug("shape inference failed (%s); using declared types only", exc)
        inferred = list(g.value_info)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in chain(g.input, g.output, inferred)
             if vi.type.HasField("tensor_type")}
    types.update((t.name, t.data_type) for t in g.initializer)
    return types


@functools.lru_cache(maxsize=None)
def _schema(op_type: str, version: int | None, domain: str):
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(op_type, version, domain)
    except Exception:  # custom domain or unknown op: no schema, never lowered
        return None


def _formal(params, index: int):
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _allowed(schema, type_str: str) -> set[str]:
    for c in schema.type_constraints:
        if c.type_param_str == type_str:
            return set(c.allowed_type_strs)
    return {type_str}


def _lower_plan(node, schema, types, low_str):
    """(outputs that turn low, demand per input) if ``node`` can compute in ``low_str``, else None.

    A node with an input of unknown type (after a custom op, say) stays fp32: we could not cast it.
    """
    if any(name and not types.get(name) for name in node.input):
        return None
    outs = [j for j, name in enumerate(node.output)
            if name and types.get(name) == _FLOAT and j not in _FP32_OUTPUTS.get(node.op_type, ())
            and (f := _formal(schema.outputs, j)) is not None and low_str in _allowed(schema, f.type_str)]
    if not outs:
        return None
    demands: list[str | None] = []
    for k, name in enumerate(node.input):
        f = _formal(schema.inputs, k)
        if not name or types.get(name) != _FLOAT:
            demands.append(None)
        elif f is not None and k not in _FP32_INPUTS.get(node.op_type, ()) \
                and low_str in _allowed(schema, f.type_str):
            demands.append("low")
        else:
            demands.append("float")
    return outs, demands


def _fixed_demands(node, schema, types) -> list[str | None]:
    """Per input of a node that stays fp32: "float", or "any" where its type is free and unshared."""
    demands: list[str | None] = []
    for k, name in enumerate(node.input):
        if not name or types.get(name) != _FLOAT:
            demands.append(None)
            continue
        f = _formal(schema.inputs, k) if schema else None
        free = (f is not None and f.option == onnx.defs.OpSchema.FormalParameterOption.Single
                and any(c.type_param_str == f.type_str for c in schema.type_constraints)
                and sum(p.type_str == f.type_str for p in chain(schema.inputs, schema.outputs)) == 1)
        demands.append("any" if free else "float")
    return demands


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Every name read inside ``node``'s subgraphs (a superset of the outer tensors they use)."""
    refs: set[str] = set()
    for sg in _subgraphs(node):
        refs.update(o.name for o in sg.output)
        for n in sg.node:
            refs.update(n.input)
            refs |= _subgraph_refs(n)
    return refs


def all_names(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    """Every tensor and node name in ``graph`` and its subgraphs, so new names never collide."""
    names.update(vi.name for vi in chain(graph.input, graph.output, graph.value_info))
    names.update(t.name for t in graph.initializer)
    for n in graph.node:
        names.add(n.name)
        names.update(chain(n.input, n.output))
        for sg in _subgraphs(n):
            all_names(sg, names)
    return names
