"""Turn a user's model into a search subject, once per session.

load -> weights out of graph inputs (IR 3) -> stable node names -> frozen input shapes ->
constant folding -> topological order -> weights externalized into the session -> fingerprint.

Every later model (each candidate) is derived from the result and references its weight files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from bisector.model import io as mio
from bisector.model.fingerprint import model_fingerprint
from bisector.model.graph import fold_constants, name_nodes, toposort
from bisector.model.shapes import freeze_inputs, input_specs

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    model: onnx.ModelProto  # small: weights external
    weights_dir: Path | None  # what external locations are relative to
    fingerprint: str  # of the user's model as given (for resume)
    source: Path


def source_fingerprint(path: Path, data_dir: Path | None = None) -> str:
    """Fingerprint of the user's model file as given (structure + weights, hashed once)."""
    model = mio.load(path, data_dir=data_dir)
    return model_fingerprint(model, Path(data_dir) if data_dir else path.parent)


def prepare(path: str | Path, *, shapes: dict[str, list[int]] | None = None, fold: bool = True,
            weights_dir: Path | None = None, shapes_source: str = "--input-shapes",
            data_dir: Path | None = None) -> Prepared:
    """Load and normalise ``path``. Embedded weights go to ``weights_dir/weights.bin`` (if given).
    ``shapes_source`` names the flag ``shapes`` came from, for error messages; ``data_dir`` holds
    the model's external weights if they are not beside it."""
    path = Path(path)
    model = mio.load(path, data_dir=data_dir)
    base = Path(data_dir) if data_dir else path.parent
    fp = model_fingerprint(model, base)
    mio.drop_initializer_inputs(model)
    mio.normalize_ir(model)
    name_nodes(model)
    freeze_inputs(model, shapes or {}, shapes_source)
    toposort(model)
    if fold:
        model = fold_constants(model)
        name_nodes(model)
        toposort(model)
    if weights_dir is not None:
        ext_before = mio.external_locations(model)
        if ext_before:
            # Link the user's weight files in, so every location resolves against weights_dir.
            mio.link_external(model, base, weights_dir, borrowed=True)
        mio.externalize(model, weights_dir)
        base = weights_dir
    return Prepared(model=model, weights_dir=base, fingerprint=fp, source=path)


def default_specs(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list[int]]]:
    return {k: (dt, [int(d) for d in dims]) for k, (dt, dims) in input_specs(model).items()}
