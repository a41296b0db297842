"""Mixed-precision rewrite: which nodes compute in fp16/bf16, which stay fp32.

Two realizations of one keep-set, from one analysis:

``realize="true"``: the deployable model (TensorRT 11 is strongly typed and reads precision from
    the graph). Lowerable nodes outside ``keep`` compute in the low type (float weights converted,
    float tensors low); kept nodes stay fp32; Casts sit exactly where a tensor crosses the boundary;
    graph inputs and outputs keep their fp32 types and names. onnxruntime CPU runs the fp16 model
    but computes most fp16 ops in fp32 and drops the Cast pairs it makes, so overflow *between* ops
    does not show there. It has no bf16 kernels for most ops: a true bf16 model passes the checker
    but onnxruntime CPU refuses it (NOT_IMPLEMENTED).
``realize="emulate"``: what a GPU would see, run on the CPU. The graph stays fp32; float weights of
    lowered nodes are rounded to low-precision values (fp16: 1e5 -> inf, subnormals as fp16 has
    them); every float tensor a lowered node produces passes an explicit ``Cast(low)->Cast(float)``
    pair, as does every fp32 tensor (graph input, kept node's output) a lowered node reads. The raw
    output is renamed ``<t>/unrounded`` and the pair writes ``<t>``, so every tensor keeps its name
    and holds what the true model would store. bf16 uses ``Cast(BFLOAT16)``, which onnxruntime CPU
    has (round to nearest even). Not emulated: arithmetic inside one op (accumulation, Softmax).

Example::

    search_space = lowerable_nodes(m)
    gpu_like = rewrite(m, "fp16", keep={"/mm1", "/mul"}, realize="emulate")
    deploy = rewrite(m, "fp16", keep={"/mm1", "/mul"}, realize="true", weights_dir=model_path.parent)

Lowerable (from the op schemas at the model's opset; ``precision_analysis`` applies these rules):
a named top-level node with an fp32 output whose type constraint admits the low type, and no input
of unknown type. Not: Shape, Range (no fp16 in its schema), NonZero, comparisons, Cast to int,
integer/bool-only ops, random ops (``_FP32_OPS``), ops without a schema (custom domains) and what
reads their outputs, unnamed nodes (name them first), and nodes with subgraphs: If/Loop/Scan stay
whole in fp32, and outer tensors they read stay fp32 under their own names. bf16 needs opset >= 13
(most schemas admit bf16 from there on). Constants (initializers and Constant nodes) are not
searched: each is converted for its lowered readers, or duplicated as ``<name>/<precision>`` when
fp32 readers remain. Some inputs of a lowered node stay fp32 (``_FP32_INPUTS``); an input whose
type is free and unshared (Shape, Size, Cast to int) takes either type without a Cast. Inserted
Casts are named ``<tensor>/cast_fp16|bf16|fp32``.

Weights may be external (``data_location == EXTERNAL``, not loaded). Only those converted are read,
from ``weights_dir`` (the directory their locations are relative to), and embedded converted; all
others stay external references, so fp32 weights of kept nodes are never copied. Conversion never
clamps: past 65504, fp16 is inf, as on a GPU. Converted weights are embedded: past 2 GB of them,
``io.externalize`` the result before saving it.

An own pass, not onnxconverter-common's ``convert_float_to_float16``. On the 1,000-node model of
``bench/precision_rewrite.py`` (2 shared cores under load, best of 5, 7 runs): fp16 61-101 ms true,
99-146 ms emulate; bf16 up to 174 ms; the converter 174-274 ms (docs/benchmarks.md, table P4). The
target is 200 ms (one rewrite per check). Correctness decided: the converter (1.16)
clamps weights by default, breaks on an initializer shared by a kept and a lowered node ("B has
inconsistent type"), relabels external fp32 weights as fp16 without converting their bytes
(onnxruntime: "external data size mismatch"), makes Range fp16 (invalid), and has no bf16 or emulation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from bisector.errors import UserError
from bisector.model.io import drop_initializer_inputs, normalize_ir, read_external
from bisector.model.precision_analysis import all_names, analyze

log = logging.getLogger(__name__)

PRECISIONS = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
REALIZE_MODES = ("true", "emulate")
_FLOAT = TensorProto.FLOAT


def lowerable_nodes(model: onnx.ModelProto, precision: str = "fp16") -> list[str]:
    """Names of the nodes a ``precision`` rewrite would move to the low type, in graph order."""
    analysis = analyze(model, _low_type(precision))
    if analysis.unnamed:
        log.warning("%d unnamed float nodes stay fp32: name the nodes to search them", analysis.unnamed)
    return [model.graph.node[i].name for i in analysis.plans]


def rewrite(model: onnx.ModelProto, precision: str = "fp16", keep=frozenset(), realize: str = "true",
            weights_dir: str | Path | None = None) -> onnx.ModelProto:
    """A new model with every lowerable node outside ``keep`` in ``precision`` (``model`` untouched).

    ``realize`` is ``"true"`` (low types in the graph) or ``"emulate"`` (fp32 graph with rounding
    Casts); see the module docstring. ``weights_dir`` is needed only when external weights must be
    converted. Raises ``UserError`` for an unknown precision or realize mode, a ``keep`` name that
    is no node of the model, or a missing weight file. Same input, byte-identical output.
    """
    low = _low_type(precision)
    if realize not in REALIZE_MODES:
        raise UserError(f"unknown realize mode {realize!r}", hint="use 'true' or 'emulate'")
    start = time.perf_counter()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if out.ir_version < 4:
        drop_initializer_inputs(out)
    node_names = {n.name for n in out.graph.node}
    unknown = sorted(set(keep) - node_names)
    if unknown:
        raise UserError(f"no node named {unknown[0]!r} in the model ({len(unknown)} unknown)",
                        hint="check the names given to `keep_fp32`")
    analysis = analyze(out, low)
    lowered = {i: p for i, p in analysis.plans.items() if out.graph.node[i].name not in keep}
    r = _Rewriter(out, analysis, lowered, low, precision, realize == "emulate", weights_dir)
    r.run()
    normalize_ir(out)
    log.debug("rewrite %s/%s: %d nodes lowered, %d kept, %d casts, %d weights converted in %.1f ms",
              precision, realize, len(lowered), len(analysis.plans) - len(lowered), r.casts,
              r.converted, 1000 * (time.perf_counter() - start))
    return out


def _low_type(precision: str) -> int:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


# ---------------------------------------------------------------- realization


class _Rewriter:
    """Emits the rewritten node list into ``model``, a private copy, in one topological pass."""

    def __init__(self, model, analysis, lowered, low, precision, emulate, weights_dir):
        self.m, self.a, self.lowered, self.low, self.prec = model, analysis, lowered, low, precision
        self.emulate = emulate
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        self.names = all_names(model.graph, set())
        self.low_out = {model.graph.node[i].output[j] for i, (outs, _) in lowered.items() for j in outs}
        self.renamed: dict[str, str] = {}             # true mode: pinned low tensor -> its low name
        self.cache: dict[tuple[str, int], str] = {}   # (tensor, target type) -> cast output
        self.const_low: dict[str, str] = {}           # fp32 constant -> name of its low version
        self.nodes: list[onnx.NodeProto] = []
        self.demands: dict[str, set[str]] = {}
        self.casts = self.converted = 0

    def run(self) -> None:
        g = self.m.graph
        for i, node in enumerate(g.node):
            for name, want in zip(node.input, self._wants(i)):
                if want:
                    self.demands.setdefault(name, set()).add(want)
        for name in self.a.pinned:
            self.demands.setdefault(name, set()).add("float")
        self._convert_initializers()
        for i, node in enumerate(list(g.node)):
            for k, want in enumerate(self._wants(i)):
                if want:
                    node.input[k] = self._resolve(node.input[k], want)
            if i in self.lowered and not self.emulate:
                self._lower_attributes(node)
            self.nodes.append(node)
            if node.op_type == "Constant" and node.output[0] in self.const_low:
                self._emit_constant(node)
            for j in self.lowered[i][0] if i in self.lowered else ():
                self._after_low_output(node, j)
        del g.node[:]
        g.node.extend(self.nodes)
        if not self.emulate:
            self._fix_value_info()

    def _wants(self, i: int) -> list[str | None]:
        if i in self.lowered:
            return self.lowered[i][1]
        if i in self.a.plans:  # kept: computes in fp32 from fp32 inputs
            return ["float" if want else None for want in self.a.plans[i][1]]
        return self.a.fixed.get(i, [])

    def _shared(self, name: str) -> bool:
        return bool(self.demands.get(name, set()) - {"low"})

    def _convert_initializers(self) -> None:
        g = self.m.graph
        copies = []
        for idx, t in enumerate(g.initializer):
            if t.name in self.a.constants and "low" in self.demands.get(t.name, ()):
                low_name = self._fresh(f"{t.name}/{self.prec}") if self._shared(t.name) else t.name
                conv = self._convert(t, low_name)
                if low_name == t.name:
                    g.initializer[idx].CopyFrom(conv)
                else:
                    copies.append(conv)
                self.const_low[t.name] = low_name
        for node in g.node:
            out = node.output[0] if node.op_type == "Constant" else None
            if out in self.a.constants and "low" in self.demands.get(out, ()):
                self.const_low[out] = self._fresh(f"{out}/{self.prec}") if self._shared(out) else out
        g.initializer.extend(copies)

    def _emit_constant(self, node: onnx.NodeProto) -> None:
        out = node.output[0]
        low_name = self.const_low[out]
        conv = self._convert(_constant_tensor(node), low_name)
        if low_name == out:
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", conv))
        else:
            self.nodes.append(helper.make_node("Constant", [], [low_name], name=low_name, value=conv))

    def _resolve(self, name: str, want: str) -> str:
        """The name a reader wanting ``want`` ("low", "float", "any") should read."""
        if want == "any":
            return self.renamed.get(name, name)
        if name in self.a.constants:
            return self.const_low[name] if want == "low" else name
        stored_low = name in self.low_out
        if self.emulate:
            return name if stored_low or want == "float" else self._round_trip(name, name)
        if stored_low and want == "low":
            return self.renamed.get(name, name)
        if stored_low:  # a kept reader of a low tensor
            return name if name in self.renamed else self._cast(name, _FLOAT)
        return name if want == "float" else self._cast(name, self.low)

    def _after_low_output(self, node: onnx.NodeProto, j: int) -> None:
        t = node.output[j]
        if self.emulate:
            node.output[j] = self._fresh(f"{t}/unrounded")
            self._round_trip(node.output[j], t, dst=t)
        elif t in self.a.pinned:  # graph output or read by a subgraph: fp32 under its own name
            node.output[j] = self.renamed[t] = self._fresh(f"{t}/{self.prec}")
            self._emit_cast(node.output[j], t, _FLOAT, node_name=self._fresh(f"{t}/cast_fp32"))

    def _cast(self, src: str, to: int) -> str:
        if (src, to) not in self.cache:
            suffix = "fp32" if to == _FLOAT else self.prec
            self.cache[src, to] = self._emit_cast(src, self._fresh(f"{src}/cast_{suffix}"), to)
        return self.cache[src, to]

    def _round_trip(self, src: str, base: str, dst: str | None = None) -> str:
        """Emulation: ``src`` -> Cast(low) -> Cast(float) -> ``dst`` (default ``<base>/cast_fp32``)."""
        if dst is None and (base, _FLOAT) in self.cache:
            return self.cache[base, _FLOAT]
        mid = self._emit_cast(src, self._fresh(f"{base}/cast_{self.prec}"), self.low)
        if dst is None:
            dst = self.cache[base, _FLOAT] = self._emit_cast(mid, self._fresh(f"{base}/cast_fp32"), _FLOAT)
            return dst
        return self._emit_cast(mid, dst, _FLOAT, node_name=self._fresh(f"{base}/cast_fp32"))

    def _emit_cast(self, src: str, dst: str, to: int, node_name: str | None = None) -> str:
        self.nodes.append(helper.make_node("Cast", [src], [dst], name=node_name or dst, to=to))
        self.casts += 1
        return dst

    def _lower_attributes(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Cast":
            _set_attr(node, "to", self.low)
        elif node.op_type == "ConstantOfShape":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is None:
                value = onnx.numpy_helper.from_array(np.zeros(1, np.float32))
            _set_attr(node, "value", self._convert(value, value.name))

    def _fix_value_info(self) -> None:
        """Declared types of tensors that turned low follow (onnxruntime refuses a stale one)."""
        now_low = self.low_out - set(self.renamed) | {c for c, low in self.const_low.items() if c == low}
        for vi in self.m.graph.value_info:
            if vi.name in now_low and vi.type.HasField("tensor_type"):
                vi.type.tensor_type.elem_type = self.low

    def _convert(self, t: TensorProto, name: str) -> TensorProto:
        arr = _read_float(t, self.weights_dir)
        self.converted += 1
        out = TensorProto(name=name, dims=t.dims, data_type=_FLOAT if self.emulate else self.low)
        if self.emulate:
            out.raw_data = _round(arr, self.low).tobytes()
        elif self.low == TensorProto.FLOAT16:
            with np.errstate(over="ignore"):
                out.raw_data = arr.astype("<f2").tobytes()
        else:
            out.raw_data = _bf16_bits(arr).tobytes()
        return out

    def _fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    new = helper.make_attribute(name, value)
    for attr in node.attribute:
        if attr.name == name:
            attr.CopyFrom(new)
            return
    node.attribute.append(new)


def _constant_tensor(node: onnx.NodeProto) -> TensorProto:
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_floats"):
            return onnx.numpy_helper.from_array(np.array(a.f if a.name == "value_float" else a.floats, np.float32))
    raise ValueError(f"Constant node {node.name!r} holds no float value")


def _read_float(t: TensorProto, weights_dir: Path | None) -> np.ndarray:
    """The fp32 values of ``t``, reading only its own bytes (``io.read_external``) when it is external."""
    if t.data_location != TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(t).astype(np.float32, copy=False)
    if weights_dir is None:
        raise ValueError(f"initializer {t.name!r} has external data: pass weights_dir to convert it")
    count = int(np.prod(t.dims, dtype=np.int64))
    data = read_external(t, weights_dir)
    if len(data) < 4 * count:
        location = next((e.value for e in t.external_data if e.key == "location"), "?")
        raise UserError(f"weight file {Path(weights_dir) / location} is truncated at {t.name!r}")
    return np.frombuffer(data, dtype="<f4", count=count).reshape(tuple(t.dims))


def _bf16_bits(arr: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns of fp32 values, rounded to nearest even (NaN stays a quiet NaN)."""
    u = np.ascontiguousarray(arr, dtype="<f4").view("<u4").astype(np.uint64)
    bits = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(np.isnan(arr), (u >> 16) | 0x40, bits).astype("<u2")


def _round(arr: np.ndarray, low: int) -> np.ndarray:
    """fp32 values as the low type stores them (fp16: beyond 65504 -> inf, subnormals kept)."""
    if low == TensorProto.FLOAT16:
        with np.errstate(over="ignore"):
            return arr.astype("<f2").astype("<f4")
    return (_bf16_bits(arr).astype("<u4") << 16).view("<f4")
