"""Turn a user's model into a search subject, once per session.

load -> weights out of graph inputs (IR 3) -> stable node names -> frozen input shapes ->
constant folding -> topological order -> weights into the session -> fingerprint.

Every later model (each candidate) is derived from the result and references its weight files,
which the session owns: the user's external weight files are copied in (never linked: onnx.load
refuses a model whose weight file has another hard link), embedded weights are externalized.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from bisector.errors import UserError
from bisector.model import io as mio
from bisector.model import weights as wfiles
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
    """Load and normalise ``path``. With ``weights_dir`` (``SESSION/weights``), the session gets its
    own weights there: the model's external files copied (:func:`own_weights`), embedded ones moved
    to ``bisector.weights``. ``shapes_source`` names the flag ``shapes`` came from, for error
    messages; ``data_dir`` holds the model's external weights if they are not beside it."""
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
        own_weights(model, base, weights_dir)
        mio.externalize(model, weights_dir)
        base = weights_dir
    return Prepared(model=model, weights_dir=base, fingerprint=fp, source=path)


def own_weights(model: onnx.ModelProto, source_dir: Path, weights_dir: Path) -> dict[str, str]:
    """Copy each external weight file of ``model`` from ``source_dir`` (the user's) into
    ``weights_dir`` (the session's), so every location resolves there and nothing links to the
    user's files. A copy already there with the file's size and modification time is kept (a
    resume); one that is a link to the user's file (an older bisector's) is replaced. Returns what
    was done per location (``weights.own_copy``)."""
    done = {}
    for loc in mio.external_locations(model):
        if os.path.isabs(loc) or os.path.normpath(loc).split(os.sep)[0] == "..":
            raise UserError(f"external data location {loc!r} lies outside the model's directory, which onnx, "
                            f"onnxruntime and TensorRT refuse", hint="keep the weight file beside the model, or "
                            "below its directory, and give a location relative to it")
        done[loc] = wfiles.own_copy(Path(source_dir) / loc, Path(weights_dir) / loc)
        log.debug("weights %s: %s", loc, done[loc])
    return done


def default_specs(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list[int]]]:
    return {k: (dt, [int(d) for d in dims]) for k, (dt, dims) in input_specs(model).items()}
