"""Freeze input shapes (Polygraphy's ``--input-shapes x:[1,3,224,224] y:[4]``) and infer the
shapes of every tensor with onnx's shape inference.

Example::

    freeze_inputs(model, {"x": [1, 3, 224, 224]})   # or shapes_from_samples(samples)
    shapes = infer_shapes(model)                    # {tensor: (np.dtype, shape)}
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from bisector.errors import UserError

log = logging.getLogger(__name__)

def parse_shapes(args: list[str] | None) -> dict[str, list[int | str]]:
    """Parse Polygraphy's ``--input-shapes x:[1,3,224,224] y:[4]`` into ``{name: dims}``.

    Names may contain ``:`` (the last one separates the shape); one argument may hold several
    shapes separated by spaces. A dim is a non-negative int or a symbolic name (which
    :func:`freeze_inputs` refuses); ``x:[]`` is a scalar. Raises ``UserError`` on bad syntax.

    >>> parse_shapes(["x:[1,3,224,224]", "y:[batch,4]"])
    {'x': [1, 3, 224, 224], 'y': ['batch', 4]}
    """
    shapes: dict[str, list[int | str]] = {}
    for arg in args or []:
        for part in _split_top(arg):
            name, sep, value = part.rpartition(":")
            value = value.strip()
            bad = UserError(f"`input_shapes` {part!r}: expected NAME:[d0,d1,...], e.g. x:[1,3,224,224]")
            if not sep or not name or not (value.startswith("[") and value.endswith("]")):
                raise bad
            dims: list[int | str] = []
            for d in (d.strip() for d in value[1:-1].split(",")):
                if d.isdigit():
                    dims.append(int(d))
                elif d.isidentifier():
                    dims.append(d)
                elif d or value[1:-1].strip():
                    raise bad
            shapes[name] = dims
    return shapes


def _split_top(arg: str) -> list[str]:
    """Split ``"x:[1,2] y:[3]"`` on spaces outside brackets (one argv token may hold several)."""
    parts, depth, cur = [], 0, ""
    for ch in arg:
        depth += ch == "["
        depth -= ch == "]"
        if ch == " " and depth == 0:
            if cur:
                parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def input_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each real graph input's dims: ints where fixed, a symbol (or "?") where dynamic."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
        out[vi.name] = dims
    return out


def input_specs(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list[int | str]]]:
    """``{name: (numpy dtype, dims)}`` for each real graph input."""
    inits = {t.name for t in model.graph.initializer}
    specs = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        elem = vi.type.tensor_type.elem_type
        specs[vi.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(elem)), input_dims(model)[vi.name])
    return specs


def freeze_inputs(model: onnx.ModelProto, shapes: dict[str, list[int]],
                  source: str = "--input-shapes") -> onnx.ModelProto:
    """Set the given inputs' shapes (in place); every input must end up static.

    Raises ``UserError`` for a name that is not a graph input, a rank that does not match, or a
    dynamic input left without a shape (naming the flag to use). ``source`` is the flag the shapes
    came from: shapes of loaded data (``--load-inputs``) must also match the model's fixed
    dimensions, which ``--input-shapes`` may override (with a warning, as in Polygraphy). Loaded
    data may also hold values of other tensors (Polygraphy's layerwise inputs): those names are
    skipped here, and the caller checks them against the model it feeds
    (``commands.candidates.model_samples``, which can name the file).
    """
    dims = input_dims(model)
    from_data = source != "--input-shapes"
    for name, new in shapes.items():
        if from_data and name not in dims:
            continue
        if any(not isinstance(d, int) for d in new):
            raise UserError(f"{source} {name}:{new}: every dimension must be a number to freeze the shape")
        if name not in dims:
            raise UserError(f"{source} names {name!r}, which is not an input of the model",
                            hint=f"inputs are: {', '.join(dims) or 'none'}")
    for vi in model.graph.input:
        if vi.name not in dims:
            continue
        if vi.name in shapes:
            new = shapes[vi.name]
            old = dims[vi.name]
            if old and len(old) != len(new):
                raise UserError(f"{source} gives {vi.name!r} rank {len(new)}, the model says rank {len(old)} {old}")
            for d, old_d in zip(new, old):
                if isinstance(old_d, int) and old_d > 0 and old_d != d:
                    if source != "--input-shapes":
                        raise UserError(f"{source} gives {vi.name!r} shape {list(new)}, the model says {old}")
                    log.warning("input %s: overriding fixed dimension %s with %s", vi.name, old_d, d)
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for d in new:
                shape.dim.add().dim_value = d
        else:
            dynamic = [d for d in dims[vi.name] if not isinstance(d, int) or d <= 0]
            if dynamic:
                raise UserError(f"input {vi.name!r} has a dynamic shape {dims[vi.name]} and no shape was given",
                                hint=shape_hint(model, {k: v for k, v in dims.items() if k not in shapes}))
    return model


# Sizes tried, in order, for a dynamic dimension other than the first (batch) one when a shape is
# suggested: 1 first, then sizes that convolutions and pooling of common vision models accept.
HINT_SIZES = (1, 64, 224)


def shape_hint(model: onnx.ModelProto, dims: dict[str, list]) -> str:
    """``pass --input-shapes a:[..] b:[..]`` for every input still dynamic, with sizes that onnx's
    strict shape inference accepts for the whole model (batch 1; same-named dimensions equal), or,
    where none of ``HINT_SIZES`` does, the dimension names to choose."""
    dynamic = {n: d for n, d in dims.items() if any(not isinstance(x, int) or x <= 0 for x in d)}
    for size in HINT_SIZES:
        shapes = {n: [x if isinstance(x, int) and x > 0 else (1 if i == 0 else size) for i, x in enumerate(d)]
                  for n, d in dynamic.items()}
        if _infers(model, shapes):
            text = " ".join(f"{n}:[{','.join(map(str, s))}]" for n, s in shapes.items())
            return f"pass --input-shapes {text} (sizes other than the batch are a guess), or --load-inputs"
    text = " ".join(f"{n}:[{','.join(str(x) if isinstance(x, int) and x > 0 else str(x or '?') for x in d)}]"
                    for n, d in dynamic.items())
    return f"pass --input-shapes with a size for each named dimension: {text}, or --load-inputs"


def _infers(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> bool:
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    for vi in trial.graph.input:
        if vi.name in shapes:
            vi.type.tensor_type.shape.ClearField("dim")
            for d in shapes[vi.name]:
                vi.type.tensor_type.shape.dim.add().dim_value = d
    del trial.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(trial, strict_mode=True, data_prop=True)
    except Exception:  # onnx raises InferenceError and others: this size does not fit
        return False
    return all(d.dim_value >= 0 for vi in inferred.graph.value_info
               for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value"))


def shapes_from_samples(samples: list[dict[str, np.ndarray]]) -> dict[str, list[int]]:
    """The shapes of the first sample's arrays (samples must agree, as they feed one model)."""
    if not samples:
        return {}
    return {name: list(np.shape(arr)) for name, arr in samples[0].items()}


def infer_shapes(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, tuple]]:
    """``{tensor: (dtype, shape)}`` for every tensor onnx's shape inference can type (``{}`` if
    it fails: the shapes of cut tensors come from a real onnxruntime run anyway)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        log.warning("onnx shape inference failed (%s)", exc)
        return {}
    out = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not tt.elem_type or not tt.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        out[vi.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims)
    for t in g.initializer:
        out[t.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)), tuple(t.dims))
    return out
