"""``bisector compare MODEL --outputs mark all``: the target and the reference run with every tensor (or
the named ones) as an output, compared tensor by tensor in topological order.

- The reference (onnxruntime CPU fp32) and the target (its provider, precision and keep-set, the
  realized model as ``Target.transform`` makes it) are recorded with ``backends.record``, in chunks
  under a memory budget and read back memory-mapped; ``--reference fp64`` runs the reference
  evaluator; ``--load-outputs`` gives the reference (a mark-all RunResults, e.g. a clean model's).
- Each tensor is compared with the comparator's rules (``compare.layers.tensor_error``);
  ``fail_fast`` stops at the first tensor out of tolerance.
- Each compared node is then run *alone on the reference's inputs*, as the target computes it
  (``precision_sensitivity.shadow_model``: its copy in the realized model with the Casts around it),
  so its own error is told from the one it inherits. Tensors the reference lacks are fed the
  target's values. If that run fails, the ranking falls back to the jump (a warning says so).
- ``check_marking`` (default: on for the ``tensorrt`` provider, where marking changes fusion) runs
  the plain model too and says when its outputs' verdict differs from the marked run's.

Example::

    with tempfile.TemporaryDirectory() as tmp:
        run = run_layers(Path("m.onnx"), Target(precision="fp16"), CompareConfig(), outputs=["mark", "all"],
                         shapes={}, workdir=Path(tmp))
        run.report.suspect   # "matmul6"
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from bisector.backends.onnxrt import OnnxRuntime
from bisector.backends.record import intermediate_tensors, record_activations
from bisector.backends.target import Target, run_reference
from bisector.commands.candidates import loaded_samples, model_samples, sample_source
from bisector.commands.compare import load_model
from bisector.commands.precision_sensitivity import SHADOW_CHUNK, shadow_model
from bisector.compare.comparator import compare_samples
from bisector.compare.config import CompareConfig
from bisector.compare.layers import LayerReport, Marked, diagnose, marking_note, relative_error, tensor_error
from bisector.errors import UserError
from bisector.model import io as mio

log = logging.getLogger(__name__)

MARK_ALL = ["mark", "all"]
# Providers where marking a tensor as an output changes how the model is computed (fusion).
MARKING_CHANGES_FUSION = ("tensorrt",)
SKIPPED_OPS = ("Constant",)  # never marked: their values are the model's, on both sides


@dataclass
class LayersRun:
    """The report, the input samples, and the marked tensors' values per sample of each side
    (``reference_outputs`` None when they were loaded); valid while ``workdir`` exists."""

    report: LayerReport
    samples: list[dict[str, np.ndarray]]
    target_outputs: list[dict[str, np.ndarray]]
    reference_outputs: list[dict[str, np.ndarray]] | None
    target: Target


def marked_tensors(model: onnx.ModelProto, outputs: list[str]) -> list[Marked]:
    """The tensors ``outputs`` names (``["mark", "all"]``: every tensor a node writes), in
    topological order, each with its producer and the marked tensors that producer reads."""
    produced = {}
    for node in model.graph.node:
        if node.op_type not in SKIPPED_OPS:
            for o in node.output:
                if o:
                    produced[o] = node
    if outputs == MARK_ALL:
        wanted = set(produced)
    else:
        wanted = set(outputs)
        unknown = sorted(wanted - set(produced))
        if unknown:
            raise UserError(f"`outputs` names {unknown[0]!r}, which no node of the model writes"
                            + (f" ({len(unknown)} unknown)" if len(unknown) > 1 else ""),
                            hint="give tensor names, or: mark all")
    names = [t for t in produced if t in wanted]
    return [Marked(i, t, produced[t].name, produced[t].op_type, [x for x in produced[t].input if x in wanted])
            for i, t in enumerate(names)]


def run_layers(path: Path, target: Target, config: CompareConfig, *, outputs: list[str], workdir: Path,
               shapes: dict[str, list[int]], fail_fast: bool = False, check_marking: bool | None = None,
               load: list[Path] | None = None, samples: int = 1, seed: int = 1, val_range=None,
               reference: str = "onnxrt", reference_outputs=None, script: str | None = None,
               data_dir: Path | None = None) -> LayersRun:
    """Compare every marked tensor (see the module docstring)."""
    loaded = loaded_samples(load, script)
    model = load_model(path, shapes, loaded, sample_source(script), data_dir)
    weights = Path(data_dir) if data_dir else path.parent
    unknown = sorted(target.keep - {n.name for n in model.graph.node})
    if unknown:
        raise UserError(f"`keep_fp32` names {unknown[0]!r}, which is no node of the model")
    marks = marked_tensors(model, outputs)
    data = model_samples(model, loaded, sample_source(script), samples, seed, val_range, files=load)
    workdir = Path(workdir)
    if reference_outputs is not None:
        marks, ref = _fit_loaded(marks, reference_outputs, len(data)), reference_outputs
    else:
        ref = _reference(reference, model, weights, workdir, data)
    tgt = _record_target(target, model, weights, workdir, data)
    rows, stopped = [], None
    for m in marks:
        rows.append(tensor_error(m, [t[m.tensor] for t in tgt], [r[m.tensor] for r in ref], config))
        if fail_fast and not rows[-1].passed:
            stopped = m.tensor if len(rows) < len(marks) else None
            break
    own = own_errors(model, target, weights, workdir, [r.node for r in rows], ref, tgt, data)
    note, hides = None, False
    if check_marking if check_marking is not None else target.provider in MARKING_CHANGES_FUSION:
        note, hides = _marking(model, target, weights, workdir, data, ref, tgt, config)
    report = diagnose(rows, len(marks), own, stopped, note)
    report.reduce_next = hides
    marked = lambda side: [{m.tensor: values[m.tensor] for m in marks if m.tensor in values} for values in side]
    return LayersRun(report, data, marked(tgt), None if reference_outputs is not None else marked(ref), target)


def _fit_loaded(marks: list[Marked], ref: list[dict], samples: int) -> list[Marked]:
    """The marked tensors the loaded reference has (one sample per input sample, as for outputs)."""
    if len(ref) != samples:
        raise UserError(f"`load_outputs` holds {len(ref)} sample(s), and this run has {samples} input sample(s)",
                        hint="give the inputs the outputs were computed from (`load_inputs`)")
    have = set.intersection(*(set(s) for s in ref)) if ref else set()
    kept = [m for m in marks if m.tensor in have]
    if not kept:
        raise UserError("`load_outputs` has none of the marked tensors",
                        hint="save the reference with `outputs` mark all and `save_outputs`")
    if len(kept) < len(marks):
        log.warning("--load-outputs has %d of the %d marked tensors; only those are compared", len(kept), len(marks))
    return [Marked(i, m.tensor, m.node, m.op_type, m.inputs) for i, m in enumerate(kept)]


def _reference(kind: str, model, weights, workdir: Path, data) -> list[dict]:
    """Every tensor of the model, per sample (memory-mapped from ``workdir`` for onnxruntime)."""
    if kind == "onnxrt":
        return _views(record_activations(model, weights, data, workdir / "reference"), len(data))
    return run_reference(kind, model, weights, workdir, data, output_names=intermediate_tensors(model))


def _record_target(target: Target, model, weights, workdir: Path, data) -> list[dict]:
    """Every tensor of the model the target runs (its realization), recorded on its provider."""
    realized = mio.normalize_ir(target.transform(model, weights))
    store = record_activations(realized, weights, data, workdir / "target",
                               runtime=OnnxRuntime(target.provider, opt_level=target.opt_level))
    return _views(store, len(data))


def _views(store, samples: int) -> list[dict]:
    return [{n: store.get(n, s) for n in store.files if n in store.locations[s]} for s in range(samples)]


def own_errors(model, target: Target, weights, workdir: Path, nodes: list[str], ref: list[dict],
               tgt: list[dict], data: list[dict]) -> dict[str, float] | None:
    """Each node's relative error run alone on the reference's inputs, as the target computes it
    (its worst output over samples); None, with a warning, when that cannot run. A node is run
    when every tensor it reads is known: the reference's, else the target's (a tensor only the
    target has, as a fault's own), an input or a weight."""
    feeds = [{**d, **t, **r} for d, t, r in zip(data, tgt, ref)]
    known = set.intersection(*(set(f) for f in feeds)) | {i.name for i in model.graph.initializer} | {""}
    by_name = {n.name: n for n in model.graph.node}
    nodes = [n for n in dict.fromkeys(nodes) if set(by_name[n].input) <= known]
    try:
        realized = mio.normalize_ir(target.transform(model, weights))
        errors: dict[str, float] = {}
        for c in range(0, len(nodes), SHADOW_CHUNK):
            _shadow_chunk(model, realized, target, weights, workdir / f"shadow_{c}.onnx", nodes[c:c + SHADOW_CHUNK],
                          ref, tgt, feeds, errors)
        return errors
    except (UserError, onnx.checker.ValidationError, KeyError, ValueError, RuntimeError) as exc:
        log.warning("the nodes' own errors could not be measured (%s); they are ranked by the growth of the "
                    "error across them", exc)
        return None


def _shadow_chunk(model, realized, target: Target, weights, path: Path, names: list[str], ref, tgt, known,
                  errors: dict[str, float]) -> None:
    """Run ``names`` alone, each fed with ``known`` values in the dtype the target's run has there."""
    shadow, feeds, compare = shadow_model(model, realized, names)
    compare = [c for c in compare if all(c[1] in r for r in ref)]
    if not compare:
        return
    values = []
    for s in range(len(ref)):
        sample = {}
        for f in feeds:
            dtype = np.asarray(tgt[s][f] if f in tgt[s] else known[s][f]).dtype
            with np.errstate(over="ignore"):  # an fp16 target overflows here as it does in its run
                sample[f] = np.ascontiguousarray(np.asarray(known[s][f]).astype(dtype, copy=False))
        values.append(sample)
    for f in feeds:
        shadow.graph.input.append(onnx.helper.make_tensor_value_info(
            f, onnx.helper.np_dtype_to_tensor_dtype(values[0][f].dtype), values[0][f].shape))
    saved = mio.save(mio.normalize_ir(shadow), path, weights_from=weights)
    outs = OnnxRuntime(target.provider, opt_level=target.opt_level).run(saved, values, [c[0] for c in compare])
    for s, out in enumerate(outs):
        for name, want, node in compare:
            e, _ = relative_error(out[name], ref[s][want])
            old = errors.get(node)
            if old is None or (e > old or (math.isnan(old) and not math.isnan(e))):
                errors[node] = e
    saved.unlink()


def _marking(model, target: Target, weights, workdir: Path, data, ref, tgt,
             config: CompareConfig) -> tuple[str | None, bool]:
    """What marking changed (None: the graph outputs' verdict is the same in the marked run and a
    plain one), and whether the plain model fails where the marked run passes."""
    names = [o.name for o in model.graph.output if all(o.name in r for r in ref)]
    if not names:
        return None, False
    want = [{n: r[n] for n in names} for r in ref]
    marked = compare_samples([{n: t[n] for n in names if n in t} for t in tgt], want, config)
    plain = target.run(model, weights, workdir, data, output_names=names)
    unmarked = compare_samples(plain, want, config)
    note = marking_note(marked.passed, unmarked.passed, f"onnxruntime {target.provider}")
    return note, marked.passed and not unmarked.passed
