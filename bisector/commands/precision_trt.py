"""``bisector precision --precision-constraints obey|prefer``: TensorRT <= 10.11 weak typing.

The default realizations write the keep-set into the ONNX graph, which every TensorRT version
builds as it is (11.x is always strongly typed). For users on TensorRT <= 10.11 this path instead
builds each candidate as ``polygraphy debug precision`` does: the fp32 model, parsed into a weakly
typed network, built with the FP16 (or BF16) flag, the layers of kept nodes constrained to fp32
(``layer.precision`` and ``set_output_type``) and OBEY_PRECISION_CONSTRAINTS (or PREFER_...). The
candidate is the engine, ``polygraphy_debug.engine``, so the check must run it (a ``--check``
command such as ``polygraphy run polygraphy_debug.engine --model-type engine --trt ...``, or a person
at the prompt); the in-process ``--compare`` runs ONNX models on onnxruntime and cannot.

Which network layers belong to a kept ONNX node (``precision_plan``, pure):

- a layer whose metadata (TensorRT 10's ONNX parser) names the node: ``[ONNX Layer: <node>]``;
- without metadata, a layer named after the node: its own name, or ``<node>_<k>``, the unique name
  the parser gives a node's further layers (unless that is itself a node's name).

Like Polygraphy, constants are not constrained (weights, no compute), nor layers with a shape
(non-execution) output or an output that is neither float nor int8. Kept nodes left with no layer
(folded by the parser, or only such layers) are listed in ``PrecisionPlan.unmatched`` and logged.

Needs ``tensorrt`` <= 10.11 to import: otherwise ``check_weak_typing`` (called before a session
starts) raises a one-line UserError naming the reason.
"""

from __future__ import annotations

import logging
import shlex
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from bisector.backends.tensorrt import NetworkLayer
from bisector.backends.trt_parse import RE_ONNX_LAYER
from bisector.backends.trtexec_args import layer_precisions_arg
from bisector.errors import UserError, one_of
from bisector.model import io as mio
from bisector.model.prepare import Prepared
from bisector.model.precision import PRECISIONS as FLOAT_PRECISIONS

log = logging.getLogger(__name__)

CONSTRAINTS = ("obey", "prefer")
WEAK_PRECISIONS = tuple(FLOAT_PRECISIONS)  # int8 needs calibration in a weakly typed build: QDQ only
ENGINE_ARTIFACT = "polygraphy_debug.engine"
# Polygraphy's debug precision marks no CONSTANT layer, and only layers whose outputs are all
# execution tensors of these types.
SKIP_LAYER_TYPES = ("CONSTANT",)
MARKABLE_DTYPES = ("FLOAT", "HALF", "BF16", "INT8")
FLOAT_DTYPES = ("FLOAT", "HALF", "BF16")  # outputs whose type is set to fp32 as well
# The fp32 "baseline" is TF32 unless the flag is cleared: kept layers run true fp32.
KEEP_TF32 = False
TRT_FLAG = {"fp16": "--fp16", "bf16": "--bf16", "int8": "--int8"}


@dataclass(frozen=True)
class LayerConstraint:
    """Run network layer ``index`` (``name``, from ONNX node ``node``) in fp32; ``outputs``: the
    float outputs whose type is set to fp32 too."""

    index: int
    name: str
    node: str
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class PrecisionPlan:
    constraints: tuple[LayerConstraint, ...]
    unmatched: tuple[str, ...]  # kept nodes with no layer to constrain

    def layer_precisions(self) -> dict[str, str]:
        """``{network layer name: "fp32"}``, as ``tensorrt.build_engine(layer_precisions=...)`` takes it."""
        return {c.name: "fp32" for c in self.constraints}


def layer_nodes(layer: NetworkLayer, node_names: Collection[str]) -> tuple[str, ...]:
    """The ONNX nodes ``layer`` comes from (see the module docstring); empty when none is known."""
    named = tuple(m["name"].strip() for m in RE_ONNX_LAYER.finditer(layer.metadata or ""))
    if named:
        return named
    if layer.name in node_names:
        return (layer.name,)
    base, sep, suffix = layer.name.rpartition("_")
    if sep and suffix.isdigit() and base in node_names:
        return (base,)
    return ()


def markable(layer: NetworkLayer) -> bool:
    """Whether a precision constraint on ``layer`` means anything (Polygraphy's rule)."""
    return layer.type not in SKIP_LAYER_TYPES and all(
        execution and dtype in MARKABLE_DTYPES for dtype, execution in layer.outputs)


def precision_plan(layers: Iterable[NetworkLayer], keep: Collection[str], node_names: Collection[str]) -> PrecisionPlan:
    """The fp32 constraints that keep the ONNX nodes ``keep`` in fp32, in network order.

    ``node_names`` are all the model's node names (for the ``<node>_<k>`` rule). Same input, same plan.

    >>> layers = [NetworkLayer(0, "mm", "MATRIX_MULTIPLY", "[ONNX Layer: mm]", (("FLOAT", True),)),
    ...           NetworkLayer(1, "w", "CONSTANT", "", (("FLOAT", True),))]
    >>> precision_plan(layers, {"mm", "w"}, {"mm", "w"}).layer_precisions()
    {'mm': 'fp32'}
    """
    keep, names = set(keep), set(node_names) | set(keep)
    constraints, matched = [], set()
    for layer in layers:
        nodes = [n for n in layer_nodes(layer, names) if n in keep]
        if not nodes or not markable(layer):
            continue
        outputs = tuple(j for j, (dtype, _) in enumerate(layer.outputs) if dtype in FLOAT_DTYPES)
        constraints.append(LayerConstraint(layer.index, layer.name, nodes[0], outputs))
        matched.update(nodes)
    return PrecisionPlan(tuple(constraints), tuple(sorted(keep - matched)))


def check_weak_typing(precision: str, constraints: str) -> None:
    """UserError unless this path can run here: fp16/bf16, obey/prefer, tensorrt <= 10.11 importable."""
    one_of("--precision-constraints", constraints, CONSTRAINTS)
    if precision not in WEAK_PRECISIONS:
        raise UserError(f"`constraints` works with fp16 or bf16, not {precision}",
                        hint="int8 is searched with QDQ models: drop `constraints`")
    from bisector.backends.tensorrt import weak_typing_trt

    weak_typing_trt()


class WeakEngineBuilder:
    """Candidate engines of one session: the fp32 model is written and its network read once."""

    def __init__(self, prepared: Prepared, precision: str, constraints: str, root: Path):
        from bisector.backends.tensorrt import network_layers

        check_weak_typing(precision, constraints)
        self.precision, self.constraints = precision, constraints
        # TensorRT resolves external data next to the model: the weights are linked into root.
        self.model = mio.save(prepared.model, Path(root) / "fp32.onnx", weights_from=prepared.weights_dir)
        self.node_names = frozenset(n.name for n in prepared.model.graph.node)
        self.layers = network_layers(self.model)
        self.warned: set[str] = set()
        self.lock = threading.Lock()

    def plan(self, keep: Collection[str]) -> PrecisionPlan:
        plan = precision_plan(self.layers, keep, self.node_names)
        new = sorted(set(plan.unmatched) - self.warned)
        if new:
            self.warned.update(new)
            log.warning("%d kept node(s) have no TensorRT layer to constrain (folded by the parser, or "
                        "constants/shape layers), e.g. %s", len(new), new[0])
        return plan

    def build(self, keep: Collection[str], path: Path) -> PrecisionPlan:
        """Build the engine of keep-set ``keep`` into ``path``; returns the plan it was built with."""
        from bisector.backends.tensorrt import build_engine

        with self.lock:  # one plan at a time; warnings once
            plan = self.plan(keep)
        engine, _ = build_engine(self.model, strongly_typed=False, fp16=self.precision == "fp16",
                                 bf16=self.precision == "bf16", tf32=KEEP_TF32,
                                 layer_precisions=plan.layer_precisions() or None,
                                 precision_constraints=self.constraints)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(engine)
        return plan


# ---------------------------------------------------------------- the answer, for trtexec users


def trtexec_flags(precision: str, layers: list[str]) -> list[str]:
    """TensorRT <= 10.11 weakly typed builds: obey per-layer precisions (layer = ONNX node name).

    argv elements, written through ``trtexec_args.layer_precisions_arg``: a name holding ``:`` is
    quoted for trtexec; ValueError names a layer trtexec cannot express (``,``, ``'``, empty, or
    ``*``, which trtexec reads as every layer).

    >>> trtexec_flags("fp16", ["mm", "/head/MatMul:0"])[2]
    "--layerPrecisions=mm:fp32,'/head/MatMul:0':fp32"
    """
    if not layers:
        return [TRT_FLAG[precision]]
    if "*" in layers:
        raise ValueError("trtexec cannot name layer '*': it reads '*' as every layer; set its precision "
                         "through the TensorRT Python API instead")
    fp32 = {n: "fp32" for n in layers}
    return [TRT_FLAG[precision], "--precisionConstraints=obey", layer_precisions_arg(fp32),
            layer_precisions_arg(fp32, flag="--layerOutputTypes")]


def trtexec_command(flags: list[str], model: str = "MODEL.onnx") -> str:
    """The trtexec command line, each argument quoted for a POSIX shell where it needs it."""
    return shlex.join(["trtexec", f"--onnx={model}", *flags])


def layer_text(precision: str, flags: list[str] | None, error: str | None = None) -> str:
    """``layer_precisions.txt``: how to apply the answer on TensorRT <= 10.11 (``flags`` None: trtexec
    cannot express a kept layer's name, and ``error`` says which)."""
    if flags is None:
        trtexec = f"trtexec: not possible here. {error}.\n"
    else:
        trtexec = f"""    {trtexec_command(flags)}

The ONNX parser names a layer after its ONNX node (a node that becomes several layers gives them
suffixed names: check with --dumpLayerInfo).
"""
    return f"""Keep these layers in fp32 on TensorRT <= 10.11 (weakly typed builds; layer.precision was removed in 11):

{trtexec}
In Python: for each layer whose name is in layer_precisions.json, set layer.precision = trt.float32
and layer.set_output_type(i, trt.float32), with BuilderFlag.OBEY_PRECISION_CONSTRAINTS.
TensorRT 11 (strongly typed): build mixed.onnx as it is.
"""
