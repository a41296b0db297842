"""``bisector compare``: run a model on a target and a reference and compare the outputs.

The default reference is the unmodified model in fp32 on onnxruntime CPU; the target is a
provider, optionally with a reduced precision and a keep-set (see ``bisector.backends.target``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from bisector.backends.target import Target, run_reference
from bisector.backends.trtexec_args import PRECISION_ALIASES
from bisector.commands.candidates import loaded_samples, model_samples, sample_source
from bisector.compare.comparator import compare_samples
from bisector.compare.config import CompareConfig
from bisector.compare.results import SamplesComparison
from bisector.errors import UserError
from bisector.model import io as mio
from bisector.model.graph import name_nodes, toposort
from bisector.model.shapes import freeze_inputs, shapes_from_samples

log = logging.getLogger(__name__)


@dataclass
class CompareRun:
    comparison: SamplesComparison
    samples: list[dict[str, np.ndarray]]
    target_outputs: list[dict[str, np.ndarray]]
    reference_outputs: list[dict[str, np.ndarray]]
    target: Target


def read_keep(values: list[str] | None) -> frozenset[str]:
    """``--keep-fp32 a b`` or ``--keep-fp32 @keep.json`` (a list of names, or keep_fp32.json)."""
    names: list[str] = []
    for v in values or []:
        if v.startswith("@"):
            path = Path(v[1:])
            if not path.exists():
                raise UserError(f"{path}: no such keep file")
            try:
                doc = json.loads(path.read_text())
            except ValueError as exc:
                raise UserError(f"{path}: not JSON ({exc})") from None
            names += _keep_names(doc, path)
        else:
            names.append(v)
    return frozenset(names)


def _fit_reference(ref: list[dict], outputs: set[str], samples: int) -> list[dict]:
    """``--load-outputs`` against this run: one sample per input sample (a usage error otherwise,
    exit 2, never a "mismatch"), and only the outputs the model has (as Polygraphy compares the
    outputs both runs have); none in common is a usage error too."""
    if len(ref) != samples:
        raise UserError(f"`load_outputs` holds {len(ref)} sample(s), and this run has {samples} input sample(s)",
                        hint="give the inputs the outputs were computed from (`load_inputs`)")
    names = set(ref[0]) if ref else set()
    common = names & outputs
    if not common:
        raise UserError(f"`load_outputs` has outputs {', '.join(sorted(names))}, none of which the model has",
                        hint=f"the model's outputs are {', '.join(sorted(outputs))}")
    if common != names:
        log.warning("--load-outputs: %s not outputs of this model; compared: %s",
                    ", ".join(sorted(names - common)), ", ".join(sorted(common)))
    return [{k: v for k, v in sample.items() if k in common} for sample in ref]


def _keep_names(doc, path: Path) -> list[str]:
    """The node names of a keep file: keep_fp32.json (``{"nodes": [{"name": ...}, ...]}``),
    layer_precisions.json (``{name: "float32", ...}``), or a list of names (or of ``{"name": ...}``)."""
    if isinstance(doc, dict) and "nodes" in doc:
        doc = doc["nodes"]
    elif isinstance(doc, dict):
        if not all(isinstance(v, str) for v in doc.values()):
            raise UserError(f"{path}: not a keep file (keep_fp32.json, layer_precisions.json or a list of names)")
        low = sorted(k for k, v in doc.items() if PRECISION_ALIASES.get(v.lower(), v.lower()) != "fp32")
        if low:
            raise UserError(f"{path}: gives {low[0]!r} the precision {doc[low[0]]!r}; a keep file lists fp32 nodes")
        return list(doc)
    if not isinstance(doc, list):
        raise UserError(f"{path}: not a keep file (keep_fp32.json, layer_precisions.json or a list of names)")
    names = []
    for item in doc:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            names.append(item["name"])
        elif isinstance(item, str):
            names.append(item)
        else:
            raise UserError(f"{path}: {json.dumps(item)[:60]} is neither a node name nor {{\"name\": ...}}")
    return names


def load_model(path: Path, shapes: dict[str, list[int]], samples_for_shapes=None,
               samples_source: str = "--load-inputs", data_dir: Path | None = None) -> onnx.ModelProto:
    model = mio.load(path, data_dir=data_dir)
    mio.drop_initializer_inputs(model)
    mio.normalize_ir(model)
    name_nodes(model)
    source = "--input-shapes"
    if not shapes and samples_for_shapes:
        shapes, source = shapes_from_samples(samples_for_shapes), samples_source
    freeze_inputs(model, shapes, source)
    toposort(model)
    return model


def run_compare(path: Path, target: Target, config: CompareConfig, *, shapes: dict[str, list[int]],
                load: list[Path] | None = None, samples: int = 1, seed: int = 1, val_range=None,
                reference: str = "onnxrt", reference_outputs=None, script: str | None = None,
                data_dir: Path | None = None) -> CompareRun:
    loaded = loaded_samples(load, script)
    model = load_model(path, shapes, loaded, sample_source(script), data_dir)
    outputs = {o.name for o in model.graph.output}
    for flag, named in (("--atol", config.atol_per_output), ("--rtol", config.rtol_per_output),
                        ("--check-error-stat", config.stat_per_output)):
        unknown = sorted(set(named) - outputs)
        if unknown:  # a warning, not an error: as a reduce's check, a candidate may lack the output
            log.warning("%s names %s, which is no output of this model (its outputs: %s); ignored", flag,
                        ", ".join(repr(u) for u in unknown), ", ".join(sorted(outputs)))
    weights = Path(data_dir) if data_dir else path.parent
    unknown = sorted(target.keep - {n.name for n in model.graph.node})
    if unknown:
        raise UserError(f"`keep_fp32` names {unknown[0]!r}, which is no node of the model"
                        + (f" ({len(unknown)} unknown)" if len(unknown) > 1 else ""))
    data = model_samples(model, loaded, sample_source(script), samples, seed, val_range, files=load)
    if reference_outputs is not None:
        reference_outputs = _fit_reference(reference_outputs, outputs, len(data))
    with tempfile.TemporaryDirectory(prefix="bisector-compare-") as tmp:
        ref = reference_outputs or run_reference(reference, model, weights, Path(tmp), data)
        out = target.run(model, weights, Path(tmp), data, output_names=list(ref[0]))
    return CompareRun(compare_samples(out, ref, config), data, out, ref, target)
