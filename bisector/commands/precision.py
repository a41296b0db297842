"""``bisector precision``: prepare the model, measure each node's own error, search, write the answer.

**Realization.** The materializer turns a keep-set into the model the check runs, and every check
gets that same model: ``polygraphy_debug.onnx`` in the iteration directory for a command check, and
``artifact.model`` for the in-process compare check (which must then run it as it is: the CLI gives
it a Target without a precision). fp16/bf16 use ``bisector.model.precision.rewrite``: ``emulate``
(an fp32 graph with fp16 round trips, what onnxruntime CPU needs to show overflow) or ``true`` (the
deployable mixed model, for TensorRT strongly typed builds and GPU providers). int8 uses the QDQ
models of ``precision_int8`` (onnxruntime's ``quantize_static``, the keep-set excluded).

**Order.** ``--order sensitivity`` (the default for ``auto``) searches the nodes that stand out by
their own error first, then the others by error band, topological within a band
(``precision_sensitivity.sensitivity_order``; with nothing above the noise floor, that is graph
order); ``--order topo`` in graph order.

**TensorRT <= 10.11** (``constraints="obey"|"prefer"``, ``--precision-constraints``): each candidate
is instead a weakly typed engine with the keep-set's layers constrained to fp32
(``precision_trt``); the check runs ``polygraphy_debug.engine``.

**Answer.** ``write_result`` writes ``keep_fp32.json``, ``mixed.onnx`` (the deployable model),
``checked.onnx`` (the model as the search checked it; ``checked.engine`` for TensorRT weak typing)
and the per-layer precisions for TensorRT <= 10.11 weakly typed builds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bisector.backends.target import run_reference
from bisector.checks.base import Artifact
from bisector.commands.base import Command, Plan, Report
from bisector.commands.candidates import (INPUTS_NAME, CandidateOptions, check_writable,
                                          prepare_candidates, candidate_weights)
from bisector.commands.precision_int8 import Int8Quantizer, quantized_nodes
from bisector.commands.precision_sensitivity import NodeError, load_or_measure, sensitivity_order
from bisector.commands.precision_trt import WeakEngineBuilder, layer_text, trtexec_flags
from bisector.data import save_inputs
from bisector.errors import UserError, one_of
from bisector.model import io as mio
from bisector.model.fingerprint import items_fingerprint
from bisector.model.precision import PRECISIONS as FLOAT_PRECISIONS
from bisector.model.precision import lowerable_nodes, rewrite
from bisector.model.prepare import Prepared
from bisector.strategies.base import Candidate
from bisector.strategies.precision import PrecisionStrategy

log = logging.getLogger(__name__)

PRECISIONS = (*FLOAT_PRECISIONS, "int8")  # what the search can lower to: the float rewrite's, and QDQ int8
ORDERS = ("sensitivity", "topo")
# The emulation's re-check of an answer fails it for inf/NaN where fp32 is finite, or for an error
# above this share of the output's range: far more than low-precision rounding, so a real overflow
# or a lost keep-set, not the tolerance the check happened to use.
GROSS_ERROR = 0.1


@dataclass
class PrecisionOptions(CandidateOptions):
    precision: str = "fp16"
    mode: str = "auto"
    direction: str = "forward"
    order: str | None = None  # default: sensitivity for auto, topo for bisect/linear (Polygraphy's)
    realize: str = "emulate"  # fp16/bf16 only
    keep_always: frozenset[str] = frozenset()  # --keep-fp32: kept in every candidate, not searched
    verify_minimal: bool = False
    reference: str = "onnxrt"
    constraints: str | None = None  # TensorRT <= 10.11: "obey"/"prefer" builds weakly typed engines

    @property
    def search_order(self) -> str:
        return self.order or ("sensitivity" if self.mode == "auto" else "topo")

    def params(self) -> dict[str, Any]:
        """What changes the search (compared on resume)."""
        return {"precision": self.precision, "mode": self.mode, "direction": self.direction,
                "order": self.search_order, "realize": self.realize, "keep_always": sorted(self.keep_always),
                "verify_minimal": self.verify_minimal, "reference": self.reference,
                "constraints": self.constraints, **self.data_params()}


# ---------------------------------------------------------------- materializer


class PrecisionMaterializer:
    """Keep-set (node positions) -> the realized model, its inputs, and the fp32 reference outputs."""

    def __init__(self, prepared: Prepared, names: list[str], samples, reference, opts: PrecisionOptions,
                 quantizer: Int8Quantizer | None = None, inputs_file: Path | None = None,
                 engines: WeakEngineBuilder | None = None):
        self.prepared = prepared
        self.names = names
        self.samples = samples
        self.reference = reference
        self.opts = opts
        self.quantizer = quantizer
        self.inputs_file = inputs_file
        self.engines = engines
        self.weights = candidate_weights(opts.weights, prepared, command_check=opts.write_inputs)

    @property
    def realization(self) -> str:
        if self.engines is not None:
            return f"trt-weak-{self.opts.constraints}"
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
        mio.save(model, path, weights_from=self.prepared.weights_dir, weights=self.weights)
        return model, self.prepared.weights_dir

    def materialize(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact:
        keep = self.keep_names(candidate.items)
        if self.engines is not None:  # the artifact is an engine: no ONNX model for in-process checks
            self.engines.build(keep, workdir / self.opts.iter_artifact)
            model, weights_dir = None, None
        else:
            model, weights_dir = self.realize(keep, workdir / self.opts.iter_artifact)
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
    one_of("--precision", opts.precision, PRECISIONS)
    root = Path(session_root)
    prepared, samples = prepare_candidates(opts, root)
    inputs_file = save_inputs(samples, root / INPUTS_NAME)
    names = [n.name for n in prepared.model.graph.node]
    unknown = sorted(opts.keep_always - set(names))
    if unknown:
        raise UserError(f"`keep_fp32` names {unknown[0]!r}, which is no node of the model")
    (root / "reference").mkdir(exist_ok=True)
    reference = run_reference(opts.reference, prepared.model, prepared.weights_dir, root / "reference", samples)
    engines = None
    if opts.constraints is not None:  # fails early (no tensorrt, TensorRT >= 10.12, int8)
        engines = WeakEngineBuilder(prepared, opts.precision, opts.constraints, root / "trt")
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
    errors = load_or_measure(prepared, full, full_dir, [names[i] for i in items], samples, root,
                             opts.precision)
    likely = 0
    if opts.search_order == "sensitivity" and errors:
        items, likely = sensitivity_order(items, errors, names, opts.precision)
    else:
        one_of("--order", opts.search_order, ORDERS)
    strategy = PrecisionStrategy(items, mode=opts.mode, direction=opts.direction, names=names, likely=likely,
                                 verify_minimal=opts.verify_minimal)
    materializer = PrecisionMaterializer(prepared, names, samples, reference, opts, quantizer, inputs_file, engines)
    return Setup(prepared, strategy, materializer, errors, sorted(items))


# ---------------------------------------------------------------- the answer


def emulation_disagrees(result: dict, st: Setup, opts: PrecisionOptions, workdir: Path) -> str | None:
    """Check the answer once more with bisector's own fp16/bf16 emulation against the fp32
    reference, in process, when the search checked true mixed models. A check that runs those on
    onnxruntime's CPU provider computes fp16 in fp32 between ops and hides overflow, so it can bless
    a keep-set that overflows on a GPU; the emulation agreed with real fp16 kernels on 19 of 19
    verdicts (shared/notes/ONNXRUNTIME.md). Returns why the emulation fails the answer, or None."""
    m = st.materializer
    if opts.precision == "int8" or m.engines is not None or m.realization == "emulate":
        return None
    from bisector.backends.onnxrt import OnnxRuntime

    keep = m.keep_names(int(i) for i in result["keep"])
    model = rewrite(st.prepared.model, opts.precision, keep=keep, realize="emulate",
                    weights_dir=st.prepared.weights_dir)
    path = mio.save(mio.normalize_ir(model), Path(workdir) / "emulated.onnx", weights_from=st.prepared.weights_dir)
    names = list(m.reference[0]) if m.reference else None
    try:
        outputs = OnnxRuntime("cpu").run(path, m.samples, names)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    for k, (got, ref) in enumerate(zip(outputs, m.reference)):
        for name, r in ref.items():
            g = np.asarray(got[name], dtype=np.float64)
            r = np.asarray(r, dtype=np.float64)
            bad = ~np.isfinite(g) & np.isfinite(r)
            if bad.any():
                return f"output {name} of sample {k} overflows ({int(bad.sum())} inf/NaN where fp32 is finite)"
            span = float(np.max(np.abs(r[np.isfinite(r)]), initial=0.0)) or 1.0
            err = float(np.max(np.abs(g - r)[np.isfinite(r)], initial=0.0))
            if err > GROSS_ERROR * span:
                return (f"output {name} of sample {k} mismatches (max error {err:.3g}, "
                        f"{err / span:.0%} of the output's range)")
    return None


def write_result(result: dict, st: Setup, opts: PrecisionOptions, result_dir: Path,
                 publish: bool = True) -> dict[str, Any]:
    """keep_fp32.json, mixed.onnx, checked.onnx, layer precisions, inputs; -o too with ``publish``
    (an answer that can be trusted); returns what was written."""
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
    if opts.output and publish:
        out["output"] = str(mio.save_standalone(model, opts.output, wdir).absolute())
    layers = {n: "float32" for n in sorted(kept, key=lambda n: m.names.index(n))}
    if m.engines is not None:  # as checked: the engine; its constraints name the real network layers
        plan = m.engines.build(kept, result_dir / "checked.engine")
        out["checked"] = str(result_dir / "checked.engine")
        layers = {c.name: "float32" for c in plan.constraints}
    elif m.realization != deploy:
        model, wdir = m.realize(kept, tmp / "checked.onnx")
        out["checked"] = str(mio.save_standalone(model, result_dir / "checked.onnx", wdir))
    else:
        out["checked"] = out["mixed"]
    shutil.rmtree(tmp, ignore_errors=True)
    out["layer_precisions"] = str(_write(result_dir / "layer_precisions.json", layers))
    try:
        out["trtexec_flags"] = trtexec_flags(opts.precision, list(layers))
    except ValueError as exc:  # a kept layer's name trtexec cannot express: the Python API can
        log.warning("%s", exc)
        out["trtexec_flags"], out["trtexec_error"] = None, str(exc)
    (result_dir / "layer_precisions.txt").write_text(
        layer_text(opts.precision, out["trtexec_flags"], out.get("trtexec_error")))
    return out


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=1) + "\n")
    return path


class PrecisionCommand(Command):
    """``bisector precision``: the fewest nodes to keep in fp32 so that fp16, bf16 or int8 passes."""

    name = "precision"
    options_type = PrecisionOptions
    OUTPUT_FIELDS = ("output", "save_inputs")

    def params(self) -> dict[str, Any]:
        return self.options.params()

    def check_outputs(self) -> None:
        for path in (self.options.output, self.options.save_inputs):
            check_writable(path, self.options.model)

    def setup(self, session) -> Plan:
        from bisector.commands.reduce_report import count

        o = self.options
        st = setup(o, session.root)
        how = "QDQ int8 (onnxruntime quantize_static)" if o.precision == "int8" else f"{o.precision} ({o.realize})"
        if o.constraints:
            how = f"TensorRT {o.precision} engines, kept layers fp32 ({o.constraints} precision constraints)"
        intro = [f"model: {Path(o.model).absolute()} ({count(len(st.prepared.model.graph.node), 'node')}, "
                 f"{len(st.lowerable)} can run in {o.precision}); candidates realized as {how}"]
        flagged = [st.materializer.names[i] for i in st.strategy.items[:st.strategy.likely]]
        if o.search_order == "sensitivity":
            shown = f" and come first: {', '.join(flagged[:6])}{' ...' if len(flagged) > 6 else ''}" if flagged else ""
            intro.append(f"order: {len(flagged)} node(s) stand out{shown}; the rest by error band, topological "
                         f"within a band")
        return Plan(st.strategy, st.materializer, tuple(intro), state=st)

    def finish(self, plan: Plan, outcome, session, check, force_output: bool = False) -> Report:
        from bisector.commands.precision_report import precision_report

        o, st = self.options, plan.state
        doubt = emulation_disagrees(outcome.result, st, o, session.root / "emulation")
        written = write_result(outcome.result, st, o, session.result_dir, publish=doubt is None or force_output)
        if o.save_inputs:
            save_inputs(st.materializer.samples, o.save_inputs)
        return precision_report(session, outcome, written, st, o, check, doubt)

    def explain(self, error: Exception) -> Exception:
        from bisector.engine import EndpointError, TrivialFails

        o = self.options
        if isinstance(error, EndpointError) and not isinstance(error, TrivialFails) and o.realize == "true" \
                and o.precision != "int8" and o.constraints is None:
            return type(error)(error.message, hint="onnxruntime CPU computes most fp16 ops in fp32, so a true fp16 "
                                                   "model hides overflow there: try `realize` emulate")
        return error
