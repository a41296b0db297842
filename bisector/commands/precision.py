"""``bisector precision``: prepare the model, measure each node's own error, search, write the answer.

**Realization.** The materializer turns a keep-set into the model the check runs, and every check
gets that same model: ``polygraphy_debug.onnx`` in the iteration directory for a command check, and
``artifact.model`` for the in-process compare check (which must then run it as it is: the CLI gives
it a Target without a precision). fp16/bf16 use ``bisector.model.precision.rewrite``: ``emulate``
(an fp32 graph with fp16 round trips, what onnxruntime CPU needs to show overflow) or ``true`` (the
deployable mixed model, for TensorRT strongly typed builds and GPU providers). int8 uses
onnxruntime's QDQ ``quantize_static`` with ``nodes_to_exclude`` = the keep-set, calibrated once per
session (MinMax over the input samples, symmetric, as TensorRT wants), after which the Q/DQ pairs
that still fed a kept node's activations are bypassed: a kept node reads fp32.

**Sensitivity** (``--order sensitivity``, also the report's error table): one onnxruntime run of a
*shadow* model. For every lowerable node, the shadow holds a copy of the node as the fully lowered
model computes it (rounded weights, input and output round trips; or Q/DQ for int8), fed with the
node's *fp32* inputs recorded from the original model. Its output against the recorded fp32 output
is the error the node adds, not the error it inherits, so an early overflow does not hide a later
one. Nodes are searched most sensitive first (inf/NaN first), ties in topological order; the
nodes that stand out (``likely``) are probed first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bisector.backends.onnxrt import OnnxRuntime
from bisector.backends.record import ActivationStore, record_activations
from bisector.backends.target import run_reference
from bisector.checks.base import Artifact
from bisector.commands.reduce import input_samples, weights_embedded
from bisector.data import load_inputs, save_inputs
from bisector.errors import UserError
from bisector.model import io as mio
from bisector.model.fingerprint import items_fingerprint
from bisector.model.precision import lowerable_nodes, rewrite
from bisector.model.prepare import Prepared, prepare
from bisector.model.shapes import shapes_from_samples
from bisector.strategies.base import Candidate
from bisector.strategies.precision import PrecisionStrategy

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "bf16", "int8")
ORDERS = ("sensitivity", "topo")
DEFAULT_ARTIFACT = "polygraphy_debug.onnx"
INPUTS_NAME = "inputs.json"
# Unit roundoff of each precision: a node's own error well above it stands out.
UNIT_ROUNDOFF = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8, "int8": 2.0 ** -8}
# "likely" culprit: error above LIKELY_FACTOR x max(median node error, unit roundoff), or inf/NaN.
LIKELY_FACTOR = 16.0
# Nodes per shadow model of the sensitivity pass (bounds the memory of one run).
SHADOW_CHUNK = 256
_TINY = 1e-30
TRT_FLAG = {"fp16": "--fp16", "bf16": "--bf16", "int8": "--int8"}


@dataclass
class PrecisionOptions:
    model: Path
    precision: str = "fp16"
    output: Path | None = None
    mode: str = "auto"
    direction: str = "forward"
    order: str | None = None  # default: sensitivity for auto, topo for bisect/linear (Polygraphy's)
    realize: str = "emulate"  # fp16/bf16 only
    keep_always: frozenset[str] = frozenset()  # --keep-fp32: kept in every candidate, not searched
    verify_minimal: bool = False
    reference: str = "onnxrt"
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    load_inputs: list[Path] = field(default_factory=list)
    seed: int = 1
    val_range: dict[str, tuple[float, float]] | None = None
    samples: int = 1
    iter_artifact: str = DEFAULT_ARTIFACT
    write_inputs: bool = True
    weights: str = "auto"

    @property
    def search_order(self) -> str:
        return self.order or ("sensitivity" if self.mode == "auto" else "topo")

    def params(self) -> dict[str, Any]:
        """What changes the search (compared on resume)."""
        return {"precision": self.precision, "mode": self.mode, "direction": self.direction,
                "order": self.search_order, "realize": self.realize, "keep_always": sorted(self.keep_always),
                "verify_minimal": self.verify_minimal, "reference": self.reference,
                "input_shapes": self.input_shapes, "load_inputs": [str(p) for p in self.load_inputs],
                "seed": self.seed, "samples": self.samples, "val_range": self.val_range,
                "iter_artifact": self.iter_artifact, "weights": self.weights}


# ---------------------------------------------------------------- sensitivity


@dataclass
class NodeError:
    """The error one node adds when it alone runs in the low precision, on exact fp32 inputs."""

    name: str
    op_type: str
    position: int  # in the prepared model's topological order
    error: float  # relative L2 error of its worst output; inf when it makes inf/NaN
    tensor: str | None  # that output
    max_abs_error: float
    nonfinite: int  # elements inf/NaN in low precision but finite in fp32
    fp32_max_abs: float  # largest |value| of that output in fp32 (fp16 holds up to 65504)
    likely: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: (_num(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


class _Shadow:
    """Copies of realized nodes, renamed per target, reading the original model's tensors."""

    def __init__(self, original: onnx.ModelProto, realized: onnx.ModelProto):
        self.orig = {n.name for n in original.graph.node}
        self.orig_out = {(n.name, j): t for n in original.graph.node for j, t in enumerate(n.output)}
        nodes = list(realized.graph.node)
        self.by_name = {n.name: n for n in nodes}
        self.prod = {t: (n, j) for n in nodes for j, t in enumerate(n.output) if t}
        self.cons: dict[str, list] = defaultdict(list)
        for n in nodes:
            for t in n.input:
                self.cons[t].append(n)
        self.inits = {t.name: t for t in realized.graph.initializer}
        self.graph_inputs = {i.name for i in realized.graph.input}
        self.nodes: list[onnx.NodeProto] = []
        self.feeds: dict[str, None] = {}  # ordered set
        self.used: dict[str, onnx.TensorProto] = {}
        self.pre, self.local = "", {}

    def real(self, n) -> bool:
        return n.name in self.orig and n.op_type != "Constant"

    def add(self, name: str) -> list[tuple[str, str, str]]:
        """Shadow node ``name``; returns ``(shadow output, original tensor, name)`` per output."""
        target = self.by_name.get(name)
        if target is None:  # the realization removed it (a Relu folded into Q/DQ)
            return []
        self.pre, self.local = f"{name}//", {}
        self.emit(target)
        out = []
        for j, o in enumerate(target.output):
            want = self.orig_out.get((name, j))
            if not o or not want:
                continue
            cur = o
            for _ in range(2):  # the emulation's round trip: Cast(low) -> Cast(float) -> want
                nxt = [c for c in self.cons[cur] if c.op_type == "Cast" and not self.real(c)]
                if not nxt or cur == want:
                    break
                self.emit(nxt[0])
                cur = nxt[0].output[0]
            out.append((self.local[cur if cur == want else o], want, name))
        return out

    def resolve(self, t: str) -> str:
        if not t or t in self.local:
            return self.local.get(t, t)
        if t in self.inits:
            self.used[t] = self.inits[t]
            return t
        if t in self.graph_inputs:
            self.feeds[t] = None
            return t
        p, j = self.prod[t]
        if self.real(p):  # computed by the original model: fed with its recorded fp32 value
            self.local[t] = self.orig_out[(p.name, j)]
            self.feeds[self.local[t]] = None
            return self.local[t]
        self.emit(p)  # added by the realization (Cast, Q/DQ, Constant): copied along
        return self.local[t]

    def emit(self, p: onnx.NodeProto) -> None:
        c = onnx.NodeProto()
        c.CopyFrom(p)
        c.name = self.pre + p.name
        for k, x in enumerate(p.input):
            c.input[k] = self.resolve(x)
        for j, o in enumerate(p.output):
            if o:
                self.local[o] = c.output[j] = self.pre + o
        self.nodes.append(c)


def shadow_model(original: onnx.ModelProto, realized: onnx.ModelProto, names: list[str]):
    """``(model, feeds, compare)``: each named node of ``realized`` with the nodes the realization
    added around it (Casts, Q/DQ, Constants), fed with the *original* model's tensors.

    ``compare`` lists ``(shadow output, original tensor, node name)``.
    """
    sh = _Shadow(original, realized)
    compare = [c for name in names for c in sh.add(name)]
    graph = onnx.helper.make_graph(sh.nodes, "shadow", [], [onnx.ValueInfoProto(name=s) for s, _, _ in compare],
                                   list(sh.used.values()))
    return onnx.helper.make_model(graph, opset_imports=list(realized.opset_import)), list(sh.feeds), compare


def measure_errors(prepared: Prepared, realized: onnx.ModelProto, realized_dir: Path | None, names: list[str],
                   store: ActivationStore, workdir: Path, precision: str) -> dict[str, NodeError]:
    """Each node's own error (see the module docstring); ``realized`` is the fully lowered model."""
    pos = {n.name: i for i, n in enumerate(prepared.model.graph.node)}
    ops = {n.name: n.op_type for n in prepared.model.graph.node}
    errors: dict[str, NodeError] = {}
    rt = OnnxRuntime("cpu")
    for c in range(0, len(names), SHADOW_CHUNK):
        model, feeds, compare = shadow_model(prepared.model, realized, names[c:c + SHADOW_CHUNK])
        compare = [x for x in compare if np.dtype(store.spec(x[1])[0]).kind == "f"]
        if not compare:
            continue
        for f in feeds:
            dtype, shape = store.spec(f)
            model.graph.input.append(onnx.helper.make_tensor_value_info(
                f, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))
        del model.graph.output[:]
        model.graph.output.extend(onnx.ValueInfoProto(name=s) for s, _, _ in compare)
        path = mio.save(mio.normalize_ir(model), workdir / f"shadow_{c // SHADOW_CHUNK}.onnx",
                        weights_from=realized_dir)
        sess = rt.session(path)
        acc: dict[str, list[float]] = {s: [0.0, 0.0, 0.0, 0, 0.0] for s, _, _ in compare}
        for s in range(store.samples):
            outs = sess.run([x[0] for x in compare], {f: np.ascontiguousarray(store.get(f, s)) for f in feeds})
            for (sname, ref, _), low in zip(compare, outs, strict=True):
                _accumulate(acc[sname], np.asarray(low, np.float64), np.asarray(store.get(ref, s), np.float64))
        del sess
        path.unlink()
        for sname, ref, node in compare:
            sq_diff, sq_ref, max_err, nonfinite, ref_max = acc[sname]
            err = math.inf if nonfinite else math.sqrt(sq_diff / max(sq_ref, _TINY))
            old = errors.get(node)
            if old is None or err > old.error or (math.isnan(old.error) and not math.isnan(err)):
                errors[node] = NodeError(node, ops[node], pos[node], err, ref, max_err, int(nonfinite), ref_max)
    typical = float(np.median([e.error for e in errors.values() if math.isfinite(e.error)] or [0.0]))
    bar = LIKELY_FACTOR * max(typical, UNIT_ROUNDOFF[precision])
    for e in errors.values():
        e.likely = not math.isfinite(e.error) or e.error > bar
    return errors


def _accumulate(acc: list, low: np.ndarray, ref: np.ndarray) -> None:
    ok = np.isfinite(ref)
    bad = ok & ~np.isfinite(low)
    both = ok & ~bad
    diff = np.abs(low[both] - ref[both])
    acc[0] += float(np.sum(diff ** 2))
    acc[1] += float(np.sum(ref[both] ** 2))
    acc[2] = max(acc[2], float(diff.max(initial=0.0)))
    acc[3] += int(bad.sum())
    acc[4] = max(acc[4], float(np.abs(ref[ok]).max(initial=0.0)))


def sensitivity_order(items: list[int], errors: dict[str, NodeError], names: list[str]) -> tuple[list[int], int]:
    """``items`` most sensitive first (unmeasured last), ties topological; and how many stand out."""
    def key(i: int):
        e = errors.get(names[i])
        err = -1.0 if e is None else (math.inf if math.isnan(e.error) else e.error)
        return (-err, i)

    order = sorted(items, key=key)
    likely = sum(1 for i in order if names[i] in errors and errors[names[i]].likely)
    return order, likely


# ---------------------------------------------------------------- int8


class _Samples:
    """onnxruntime's CalibrationDataReader protocol over our input samples."""

    def __init__(self, samples):
        self.it = iter(samples)

    def get_next(self):
        return next(self.it, None)


class _QuantizerLogOnce(logging.Filter):
    """onnxruntime.quantization logs through the root logger on every call: say each thing once,
    and not its advice to pre-process (shape inference is done; the model is already prepared)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname or "quantization" not in record.pathname:
            return True
        text = record.getMessage()
        if "pre-processing before quantization" in text or text in self.seen:
            return False
        self.seen.add(text)
        return True


_LOG_FILTER = _QuantizerLogOnce()


class Int8Quantizer:
    """QDQ models of keep-sets; calibration runs once (``root/calibration.json``) and is reused."""

    def __init__(self, prepared: Prepared, samples, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.src = self.root / "fp32.onnx"
        if not self.src.exists():
            tmp = mio.save_standalone(prepared.model, self.root / "fp32.partial.onnx", prepared.weights_dir)
            os.replace(tmp, self.src)
        self.cache = self.root / "calibration.json"
        self.samples = samples
        self.big = mio.external_bytes(prepared.model) > 1 << 30
        self.lock = threading.Lock()
        if _LOG_FILTER not in logging.getLogger().filters:
            logging.getLogger().addFilter(_LOG_FILTER)

    def quantize(self, keep: frozenset[str], path: Path) -> onnx.ModelProto:
        try:
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        except ImportError:
            raise UserError("--precision int8 needs onnxruntime's quantization tools",
                            hint="pip install onnxruntime") from None
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with self.lock:  # the first call calibrates and writes the cache
            quantize_static(str(self.src), str(path), None if self.cache.exists() else _Samples(self.samples),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=sorted(keep),
                            use_external_data_format=self.big, calibration_cache_path=str(self.cache),
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        model = onnx.load(str(path))
        bypass_input_qdq(model, keep)
        onnx.save(mio.normalize_ir(model), str(path))
        return model


def bypass_input_qdq(model: onnx.ModelProto, keep) -> int:
    """Kept nodes read the fp32 tensor instead of its ``Q -> DQ`` copy; dead Q/DQ nodes go."""
    g = model.graph
    prod = {t: n for n in g.node for t in n.output}
    bypassed = 0
    for n in g.node:
        if n.name not in keep:
            continue
        for k, x in enumerate(n.input):
            dq = prod.get(x)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]
                bypassed += 1
    while True:
        read = {t for n in g.node for t in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            return bypassed
        for n in dead:
            g.node.remove(n)


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes of a QDQ model that read a DequantizeLinear output (what int8 runs)."""
    prod = {t: n.op_type for n in model.graph.node for t in n.output}
    return [n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(prod.get(t) == "DequantizeLinear" for t in n.input)]


# ---------------------------------------------------------------- materializer


class PrecisionMaterializer:
    """Keep-set (node positions) -> the realized model, its inputs, and the fp32 reference outputs."""

    def __init__(self, prepared: Prepared, names: list[str], samples, reference, opts: PrecisionOptions,
                 quantizer: Int8Quantizer | None = None, inputs_file: Path | None = None):
        self.prepared = prepared
        self.names = names
        self.samples = samples
        self.reference = reference
        self.opts = opts
        self.quantizer = quantizer
        self.inputs_file = inputs_file
        self.embed = weights_embedded(opts.weights, prepared)

    @property
    def realization(self) -> str:
        return "qdq" if self.opts.precision == "int8" else self.opts.realize

    def keep_names(self, items) -> frozenset[str]:
        return frozenset(self.names[i] for i in items) | self.opts.keep_always

    def fingerprint(self, candidate: Candidate) -> str:
        extra = f"{self.opts.precision}/{self.realization}/{','.join(sorted(self.opts.keep_always))}"
        return items_fingerprint("precision", candidate.items, extra)

    def realize(self, keep: frozenset[str], path: Path,
                realize: str | None = None) -> tuple[onnx.ModelProto, Path | None]:
        """Write the realized model to ``path``; returns it and the directory its weights are in."""
        if self.opts.precision == "int8":
            return self.quantizer.quantize(keep, path), path.parent
        model = rewrite(self.prepared.model, self.opts.precision, keep=keep, realize=realize or self.opts.realize,
                        weights_dir=self.prepared.weights_dir)
        mio.save(model, path, weights_from=self.prepared.weights_dir, embed=self.embed)
        return model, self.prepared.weights_dir

    def materialize(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact:
        model, weights_dir = self.realize(self.keep_names(candidate.items), workdir / self.opts.iter_artifact)
        inputs_path = None
        if self.opts.write_inputs and self.inputs_file is not None:
            inputs_path = workdir / INPUTS_NAME
            try:
                os.link(self.inputs_file, inputs_path)
            except OSError:
                save_inputs(self.samples, inputs_path)
        return Artifact(workdir=workdir, path=workdir / self.opts.iter_artifact, iteration=iteration,
                        inputs_path=inputs_path, model=model, feeds=self.samples, reference=self.reference,
                        weights_dir=weights_dir, description=f"{candidate.label} [{candidate.phase}]")


# ---------------------------------------------------------------- setup


@dataclass
class Setup:
    prepared: Prepared
    strategy: PrecisionStrategy
    materializer: PrecisionMaterializer
    errors: dict[str, NodeError]
    lowerable: list[int]


def setup(opts: PrecisionOptions, session_root: Path) -> Setup:
    """Everything before the search; on resume the recording, calibration and errors are reused."""
    if opts.precision not in PRECISIONS:
        raise UserError(f"--precision {opts.precision!r}: choose one of {', '.join(PRECISIONS)}")
    root = Path(session_root)
    shapes = dict(opts.input_shapes)
    if opts.load_inputs and not shapes:
        shapes = shapes_from_samples([s for p in opts.load_inputs[:1] for s in load_inputs(p)])
    prepared = prepare(opts.model, shapes=shapes, weights_dir=root / "weights")
    samples = input_samples(prepared, opts)
    inputs_file = save_inputs(samples, root / INPUTS_NAME)
    names = [n.name for n in prepared.model.graph.node]
    unknown = sorted(opts.keep_always - set(names))
    if unknown:
        raise UserError(f"--keep-fp32 names {unknown[0]!r}, which is no node of the model")
    (root / "reference").mkdir(exist_ok=True)
    reference = run_reference(opts.reference, prepared.model, prepared.weights_dir, root / "reference", samples)
    quantizer, full_dir = None, prepared.weights_dir
    if opts.precision == "int8":
        quantizer = Int8Quantizer(prepared, samples, root / "int8")
        full = quantizer.quantize(frozenset(), root / "int8" / "all_int8.onnx")
        full_dir = root / "int8"
        low = quantized_nodes(full)
    else:
        low = lowerable_nodes(prepared.model, opts.precision)
        full = rewrite(prepared.model, opts.precision, realize="emulate", weights_dir=prepared.weights_dir)
    pos = {n: i for i, n in enumerate(names)}
    items = [pos[n] for n in low if n in pos and n not in opts.keep_always]
    if not items:
        raise UserError(f"{opts.model}: no node can run in {opts.precision}",
                        hint="float nodes with a schema are lowerable; unnamed nodes and custom ops are not")
    errors = _load_or_measure(prepared, full, full_dir, [names[i] for i in items], samples, root, opts)
    likely = 0
    if opts.search_order == "sensitivity" and errors:
        items, likely = sensitivity_order(items, errors, names)
    elif opts.search_order not in ORDERS:
        raise UserError(f"--order {opts.order!r}: choose sensitivity or topo")
    strategy = PrecisionStrategy(items, mode=opts.mode, direction=opts.direction, names=names, likely=likely,
                                 verify_minimal=opts.verify_minimal)
    materializer = PrecisionMaterializer(prepared, names, samples, reference, opts, quantizer, inputs_file)
    return Setup(prepared, strategy, materializer, errors, sorted(items))


def _load_or_measure(prepared, full, full_dir, names, samples, root: Path, opts) -> dict[str, NodeError]:
    cache = root / "sensitivity.json"
    if cache.exists():
        doc = json.loads(cache.read_text())
        return {d["name"]: NodeError(**{k: (float(v) if k in ("error", "max_abs_error", "fp32_max_abs") else v)
                                         for k, v in d.items()}) for d in doc["nodes"]}
    try:
        store = record_activations(prepared.model, prepared.weights_dir, samples, root / "activations")
        errors = measure_errors(prepared, full, full_dir, names, store, root, opts.precision)
    except (UserError, onnx.checker.ValidationError, KeyError, ValueError, RuntimeError) as exc:
        log.warning("per-node errors could not be measured (%s); searching in topological order", exc)
        return {}
    cache.write_text(json.dumps({"precision": opts.precision, "nodes": [e.to_json() for e in errors.values()]}))
    return errors


# ---------------------------------------------------------------- the answer


def write_result(result: dict, st: Setup, opts: PrecisionOptions, result_dir: Path) -> dict[str, Any]:
    """keep_fp32.json, mixed.onnx (-o), checked.onnx, layer precisions, inputs; returns what was written."""
    m = st.materializer
    idx = st.prepared.model.graph.node
    keep = [int(i) for i in result["keep"]]
    kept = m.keep_names(keep)
    rows = []
    for i in keep:
        e = st.errors.get(m.names[i])
        row = {"name": m.names[i], "op_type": idx[i].op_type, "position": i}
        row.update({k: v for k, v in (e.to_json() if e else {"tensor": list(idx[i].output)[0]}).items()
                    if k not in ("name", "op_type", "position")})
        rows.append(row)
    rows += [{"name": n, "op_type": next(x.op_type for x in idx if x.name == n), "forced": True}
             for n in sorted(opts.keep_always)]
    out: dict[str, Any] = {"kept_nodes": rows}
    doc = {"precision": opts.precision, "realize": m.realization, "mode": opts.mode, "order": opts.search_order,
           "lowerable": len(st.lowerable), "one_minimal": result.get("one_minimal"), "nodes": rows}
    out["keep_fp32"] = str(_write(result_dir / "keep_fp32.json", doc))
    out["inputs"] = str(save_inputs(m.samples, result_dir / INPUTS_NAME))
    deploy = "qdq" if opts.precision == "int8" else "true"
    tmp = result_dir / ".mixed"
    model, wdir = m.realize(kept, tmp / "mixed.onnx", realize=None if opts.precision == "int8" else "true")
    out["mixed"] = str(mio.save_standalone(model, result_dir / "mixed.onnx", wdir))
    if opts.output:
        out["output"] = str(mio.save_standalone(model, opts.output, wdir))
    if m.realization != deploy:
        model, wdir = m.realize(kept, tmp / "checked.onnx")
        out["checked"] = str(mio.save_standalone(model, result_dir / "checked.onnx", wdir))
    else:
        out["checked"] = out["mixed"]
    shutil.rmtree(tmp, ignore_errors=True)
    layers = {n: "float32" for n in sorted(kept, key=lambda n: m.names.index(n))}
    out["layer_precisions"] = str(_write(result_dir / "layer_precisions.json", layers))
    out["trtexec_flags"] = trtexec_flags(opts.precision, list(layers))
    (result_dir / "layer_precisions.txt").write_text(_layer_text(opts.precision, out["trtexec_flags"]))
    return out


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=1) + "\n")
    return path


def trtexec_flags(precision: str, layers: list[str]) -> list[str]:
    """TensorRT <= 10 weakly typed builds: obey per-layer precisions (layer = ONNX node name)."""
    if not layers:
        return [TRT_FLAG[precision]]
    spec = ",".join(f"{n}:fp32" for n in layers)
    return [TRT_FLAG[precision], "--precisionConstraints=obey", f"--layerPrecisions={spec}",
            f"--layerOutputTypes={spec}"]


def _layer_text(precision: str, flags: list[str]) -> str:
    return f"""Keep these layers in fp32 on TensorRT <= 10.11 (weakly typed builds; layer.precision was removed in 11):

    trtexec --onnx=MODEL.onnx {' '.join(flags)}

The ONNX parser names a layer after its ONNX node (a node that becomes several layers gives them
suffixed names: check with --dumpLayerInfo). In Python: for each layer whose name is in
layer_precisions.json, set layer.precision = trt.float32 and layer.set_output_type(i, trt.float32),
with BuilderFlag.OBEY_PRECISION_CONSTRAINTS. TensorRT 11 (strongly typed): build mixed.onnx as it is.
"""


def error_table(st: Setup, kept: set[str], limit: int = 40) -> list[str]:
    """Markdown rows of the per-node error table, most sensitive first."""
    rows = sorted(st.errors.values(), key=lambda e: (-(math.inf if math.isnan(e.error) else e.error), e.position))
    md = ["| # | node | op | own error (rel. L2) | max abs error | inf/NaN | fp32 max abs | tensor | kept |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r, e in enumerate(rows[:limit], 1):
        md.append(f"| {r} | `{e.name}` | {e.op_type} | {e.error:.3g} | {e.max_abs_error:.3g} | {e.nonfinite} | "
                  f"{e.fp32_max_abs:.4g} | `{e.tensor}` | {'**fp32**' if e.name in kept else ''} |")
    if len(rows) > limit:
        md.append(f"| | ... {len(rows) - limit} more in `sensitivity.json` | | | | | | | |")
    return md
