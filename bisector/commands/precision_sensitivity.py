"""``bisector precision --order sensitivity``: each node's own error, and the search order from it.

One onnxruntime run of a *shadow* model. For every lowerable node, the shadow holds a copy of the
node as the fully lowered model computes it (rounded weights, input and output round trips; or Q/DQ
for int8), fed with the node's *fp32* inputs recorded from the original model. Its output against
the recorded fp32 output is the error the node adds, not the error it inherits, so an early
overflow does not hide a later one. The same numbers make the report's error table (``error_table``).

**Search order** (``sensitivity_order``): the nodes that stand out (``likely``: inf/NaN, or an
error above ``LIKELY_FACTOR`` times the noise floor) come first and are probed first; then the
other nodes by *band*, the error on a log scale in steps of ``BAND_FACTOR`` above the noise floor
``max(median node error, unit roundoff)``; within a band, topological order. Errors within a band
are not told apart, on purpose. A node's own error at the noise floor is the rounding of its output
and says nothing about the node; ranking by such differences only shuffles the nodes. And a shuffle
costs checks when the failure is many small errors adding up, because a *contiguous* run of kept
nodes carries the small increments along in fp32, while a lowered node between two kept ones rounds
them away. On the ``accumulated_error`` fixture (every own error between 2e-4 and 4e-4, below
fp16's unit roundoff of 4.9e-4) the first 32 Adds kept pass and every other Add of the 64 kept
fails. So when nothing stands out, the sensitivity order *is* the topological order.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bisector.backends.onnxrt import OnnxRuntime
from bisector.backends.record import ActivationStore, record_activations
from bisector.errors import UserError
from bisector.model import io as mio
from bisector.model.prepare import Prepared

log = logging.getLogger(__name__)

# Unit roundoff of each precision: a node's own error well above it stands out.
UNIT_ROUNDOFF = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8, "int8": 2.0 ** -8}
# "likely" culprit: error above LIKELY_FACTOR x the noise floor (max(median node error, unit roundoff)),
# or inf/NaN.
LIKELY_FACTOR = 16.0
# Search order: errors within the same factor-of-BAND_FACTOR band above the noise floor are ties
# (kept in topological order); everything up to BAND_FACTOR x the floor is band 0.
BAND_FACTOR = 4.0
# Nodes per shadow model of the sensitivity pass (bounds the memory of one run).
SHADOW_CHUNK = 256
# Rows of the report's error table; the rest stay in sensitivity.json.
ERROR_TABLE_ROWS = 40
CACHE_NAME = "sensitivity.json"
_TINY = 1e-30


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
        acc: dict[str, list[float]] = {s: [0.0, 0.0, 0.0, 0, 0.0, 0] for s, _, _ in compare}
        for s in range(store.samples):
            outs = sess.run([x[0] for x in compare], {f: np.ascontiguousarray(store.get(f, s)) for f in feeds})
            for (sname, ref, _), low in zip(compare, outs, strict=True):
                low, want = np.asarray(low, np.float64), np.asarray(store.get(ref, s), np.float64)
                if low.shape == want.shape:  # a Loop/If output run alone may differ: no own error then
                    _accumulate(acc[sname], low, want)
        del sess
        path.unlink()
        for sname, ref, node in compare:
            sq_diff, sq_ref, max_err, nonfinite, ref_max, compared = acc[sname]
            if not compared:
                continue
            err = math.inf if nonfinite else math.sqrt(sq_diff / max(sq_ref, _TINY))
            old = errors.get(node)
            if old is None or err > old.error or (math.isnan(old.error) and not math.isnan(err)):
                errors[node] = NodeError(node, ops[node], pos[node], err, ref, max_err, int(nonfinite), ref_max)
    bar = LIKELY_FACTOR * noise_floor(errors, precision)
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
    acc[5] += 1  # samples compared


def noise_floor(errors: dict[str, NodeError], precision: str) -> float:
    """The own error of an unremarkable node: the median finite error, at least the unit roundoff."""
    typical = float(np.median([e.error for e in errors.values() if math.isfinite(e.error)] or [0.0]))
    return max(typical, UNIT_ROUNDOFF[precision])


def error_band(error: float, floor: float) -> float:
    """``error`` on a log scale: 0 up to ``BAND_FACTOR * floor``, +1 per factor ``BAND_FACTOR``
    above it; inf for inf/NaN.

    >>> [error_band(e, 1e-3) for e in (1e-5, 3.9e-3, 4.1e-3, 1.7e-2, float("nan"))]
    [0, 0, 1, 2, inf]
    """
    if not math.isfinite(error):
        return math.inf
    return max(0, math.floor(math.log(max(error, _TINY) / floor, BAND_FACTOR)))


def sensitivity_order(items: list[int], errors: dict[str, NodeError], names: list[str],
                      precision: str) -> tuple[list[int], int]:
    """``items`` in search order, and how many of the first stand out (``likely``).

    The likely nodes first, then by band (``error_band``) from the highest, topological within a
    band; unmeasured nodes last. See the module docstring for why near-equal errors are not ranked.
    """
    floor = noise_floor(errors, precision)

    def key(i: int):
        e = errors.get(names[i])
        if e is None:
            return (True, 1.0, i)
        return (not e.likely, -error_band(e.error, floor), i)

    order = sorted(items, key=key)
    likely = sum(1 for i in order if names[i] in errors and errors[names[i]].likely)
    return order, likely


def load_or_measure(prepared: Prepared, full: onnx.ModelProto, full_dir: Path | None, names: list[str], samples,
                    root: Path, precision: str) -> dict[str, NodeError]:
    """Each node's own error, from ``root/sensitivity.json`` when a session resumes; else recorded
    and measured (``full`` is the fully lowered model). Empty, with a warning, when that fails: the
    search then runs in topological order."""
    cache = root / CACHE_NAME
    if cache.exists():
        doc = json.loads(cache.read_text())
        return {d["name"]: NodeError(**{k: (float(v) if k in ("error", "max_abs_error", "fp32_max_abs") else v)
                                         for k, v in d.items()}) for d in doc["nodes"]}
    try:
        store = record_activations(prepared.model, prepared.weights_dir, samples, root / "activations")
        errors = measure_errors(prepared, full, full_dir, names, store, root, precision)
    except (UserError, onnx.checker.ValidationError, KeyError, ValueError, RuntimeError) as exc:
        log.warning("per-node errors could not be measured (%s); searching in topological order", exc)
        return {}
    cache.write_text(json.dumps({"precision": precision, "nodes": [e.to_json() for e in errors.values()]}))
    return errors


def error_table(errors: dict[str, NodeError], kept: set[str], limit: int = ERROR_TABLE_ROWS) -> list[str]:
    """Markdown rows of the per-node error table, most sensitive first."""
    rows = sorted(errors.values(), key=lambda e: (-(math.inf if math.isnan(e.error) else e.error), e.position))
    md = ["| # | node | op | own error (rel. L2) | max abs error | inf/NaN | fp32 max abs | tensor | kept |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r, e in enumerate(rows[:limit], 1):
        md.append(f"| {r} | `{e.name}` | {e.op_type} | {e.error:.3g} | {e.max_abs_error:.3g} | {e.nonfinite} | "
                  f"{e.fp32_max_abs:.4g} | `{e.tensor}` | {'**fp32**' if e.name in kept else ''} |")
    if len(rows) > limit:
        md.append(f"| | ... {len(rows) - limit} more in `sensitivity.json` | | | | | | | |")
    return md
