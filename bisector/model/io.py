"""Load and save ONNX models without ever holding or copying the weights twice.

A model is loaded *without* its external data: initializers stored outside the ``.onnx`` file keep
their ``external_data`` references and are read by onnxruntime (or TensorRT) straight from the
session's copy of their file. Models whose weights are embedded are externalized once per session
(:func:`externalize`), so every derived model (a reduce candidate, a mixed-precision model) is a
small protobuf that *references* the weight file instead of copying it. How a written model
reaches its weights is one of ``CANDIDATE_WEIGHTS`` (see :func:`save`); the files themselves are
handled by :mod:`bisector.model.weights`.

Example::

    m = load("resnet.onnx")             # ModelProto, weights left on disk
    save(m, "iter/polygraphy_debug.onnx", weights_from=session_weights)                  # hard links
    save(m, "iter/polygraphy_debug.onnx", weights_from=session_weights, weights="file")  # its own .data
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import onnx
from onnx import external_data_helper

from bisector.errors import UserError
from bisector.model import weights as wfiles

# Initializers at least this large are moved to the session's weight file.
EXTERNALIZE_THRESHOLD_BYTES = 1024
# Below this many bytes of weights, candidates for a command check embed their weights; from it on
# they get their own data file beside them (a protobuf cannot pass 2 GB; onnx.load reads both).
EMBED_WEIGHTS_BELOW_BYTES = 64 << 20
# How a written model reaches its external weights (see save): hard links to the session's files,
# embedded in the protobuf, or its own data file (DATA_SUFFIX) holding only the tensors it uses.
CANDIDATE_WEIGHTS = ("link", "embed", "file")
DATA_SUFFIX = wfiles.DATA_SUFFIX
# protobuf's limit on one message: a model past it keeps its weights in a file beside it.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
# onnxruntime refuses IR versions newer than it knows; this is the oldest we ever lower to.
MIN_IR_VERSION = 7
# Attribute that records where a loaded model came from (not part of ONNX).
_ORIGIN = "_bisector_base_dir"
# Bits per element of the types onnx packs below a byte (the rest take their numpy item size).
_PACKED_BITS = {getattr(onnx.TensorProto, name): bits for name, bits in (
    ("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2), ("FLOAT6E2M3", 6),
    ("FLOAT6E3M2", 6)) if hasattr(onnx.TensorProto, name)}


def load(path: str | os.PathLike, *, check_external: bool = True, data_dir: Path | None = None) -> onnx.ModelProto:
    """Read an ONNX model, leaving external weights on disk (in ``data_dir``, Polygraphy's
    ``--external-data-dir``, or else beside the model).

    Raises ``UserError`` (exit 2) for a missing file, a file that is not ONNX, a truncated
    protobuf, or (with ``check_external``) a missing external-data file.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, not an ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises others
        raise UserError(f"{p}: not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    if len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise UserError(f"{p}: not an ONNX model (no graph found; truncated or a different format?)")
    if check_external:
        missing = missing_external_files(model, Path(data_dir) if data_dir else p.parent)
        if missing and data_dir:
            raise UserError(f"{p}: external data file {missing[0]!r} not found in {data_dir} (`external_data_dir`)")
        if missing:
            raise UserError(
                f"{p}: external data file {missing[0]!r} not found next to the model",
                hint="keep the weight file beside the .onnx file, as it was exported, or give `external_data_dir`",
            )
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no detail"


def external_locations(model: onnx.ModelProto) -> list[str]:
    """Every distinct external-data location referenced by the model, in first-seen order."""
    seen: dict[str, None] = {}
    for t in _tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for entry in t.external_data:
                if entry.key == "location":
                    seen.setdefault(entry.value, None)
    return list(seen)


_A = onnx.AttributeProto


def _tensors(graph: onnx.GraphProto):
    """Initializers and tensor attributes of ``graph`` and its subgraphs (onnx's own walk is 5x
    slower: it wraps every node, and a 10,000-node candidate is cut dozens of times)."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == _A.TENSOR:
                yield a.t
            elif a.type == _A.TENSORS:
                yield from a.tensors
            elif a.type == _A.GRAPH:
                yield from _tensors(a.g)
            elif a.type == _A.GRAPHS:
                for g in a.graphs:
                    yield from _tensors(g)


def external_bytes(model: onnx.ModelProto) -> int:
    """Total bytes of external tensors (from their ``length`` entries)."""
    total = 0
    for t in _tensors(model.graph):
        for e in t.external_data:
            if e.key == "length" and e.value:
                total += int(e.value)
    return total


def missing_external_files(model: onnx.ModelProto, base_dir: Path) -> list[str]:
    return [loc for loc in external_locations(model) if not (base_dir / loc).exists()]


def externalize(model: onnx.ModelProto, weights_dir: Path, location: str = "bisector.weights",
                threshold: int = EXTERNALIZE_THRESHOLD_BYTES) -> None:
    """Move embedded initializers of ``threshold`` bytes or more into ``weights_dir/location``.

    Done once per session (rewritten identically on resume). Already-external tensors are left
    where they are; should one of their files be called ``location``, another name is taken. Large
    tensors start on a block boundary (``weights.align``), so candidates' own data files can share
    extents with this one. Modifies ``model`` in place; afterwards it is small and every derived
    model can reference the same file.
    """
    # Top-level initializers only: onnxruntime rejects external data inside If/Loop bodies.
    tensors = [t for t in model.graph.initializer
               if not external_data_helper.uses_external_data(t)
               and t.HasField("raw_data") and len(t.raw_data) >= threshold]
    if not tensors:
        return
    taken = set(external_locations(model))
    base, n = location, 0
    while location in taken:
        n += 1
        location = f"{base}.{n}"
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / location
    if target.is_symlink():  # never write through a link
        target.unlink()
    with open(target, "wb") as f:
        end = 0
        for t in tensors:
            length = len(t.raw_data)
            offset = wfiles.align(end, length)
            f.seek(offset)
            f.write(t.raw_data)
            end = offset + length
            external_data_helper.set_external_data(t, location=location, offset=offset, length=length)
            t.data_location = onnx.TensorProto.EXTERNAL
            t.ClearField("raw_data")
        f.flush()
        os.fsync(f.fileno())


def save(model: onnx.ModelProto, path: str | os.PathLike, *, weights_from: Path | None = None,
         weights: str = "link") -> Path:
    """Write ``model`` (small: its weights stay external) to ``path``; ``model`` is left as it was.

    ``weights_from`` is the directory its external locations are relative to, which must be the
    session's own (``SESSION/weights``), never the user's. ``weights`` says how the written model
    reaches them (``CANDIDATE_WEIGHTS``):

    - ``link``: those files are hard-linked next to ``path`` (``weights.link_files``): no bytes
      copied; onnxruntime and TensorRT read them, ``onnx.load`` refuses them;
    - ``embed``: the weights the model uses are copied into the protobuf (under 2 GB);
    - ``file``: they are copied into one data file of its own, ``path`` + ``DATA_SUFFIX``, holding
      only the tensors the model uses (:func:`write_data_file`), which any tool reads.

    Raises ``UserError`` when the directory is not writable or the disk is full.
    """
    p = Path(path)
    _check_mode(weights)
    external = weights_from is not None and bool(external_locations(model))
    if weights == "embed" and external:
        full = onnx.ModelProto()
        full.CopyFrom(model)
        load_weights(full, Path(weights_from))
        model, weights_from = full, None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if weights == "file" and external:
            saved = write_data_file(model, Path(weights_from), p.with_name(p.name + DATA_SUFFIX))
            try:
                data = model.SerializeToString()
            finally:
                _restore(saved)
        else:
            data = model.SerializeToString()
        with open(p, "wb") as f:
            f.write(data)
        if weights == "link" and external:
            wfiles.link_files(external_locations(model), Path(weights_from), p.parent)
    except OSError as exc:
        raise UserError(f"cannot write {p}: {exc.strerror or exc}") from None
    except ValueError as exc:  # protobuf refuses > 2 GB: weights were not externalized
        raise UserError(f"cannot write {p}: {exc}", hint="weights must be external for models over 2 GB") from None
    return p


def _check_mode(weights: str) -> None:
    if weights not in CANDIDATE_WEIGHTS:
        raise ValueError(f"weights={weights!r}: not one of {', '.join(CANDIDATE_WEIGHTS)}")


def write_data_file(model: onnx.ModelProto, weights_from: Path, data_path: Path) -> list:
    """Copy the bytes of every external tensor of ``model`` from ``weights_from`` into
    ``data_path`` and point the tensors there (location ``data_path.name``, beside the model).

    Tensors that share a range share it in the new file too; each starts where ``weights.align``
    says. The copy is ``os.copy_file_range`` of each range (``weights.copy_ranges``). Returns what
    :func:`_restore` needs to point the tensors back (``save`` does, after serializing).
    """
    placed: dict[tuple[str, int, int], int] = {}
    ranges, saved, end = [], [], 0
    for t in _tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else raw_length(t)
        key = (info["location"], offset, length)
        if key not in placed:
            placed[key] = wfiles.align(end, length)
            end = placed[key] + length
            ranges.append((Path(weights_from) / key[0], offset, length, placed[key]))
        saved.append((t, [(e.key, e.value) for e in t.external_data]))
        _set_entries(t, [("location", data_path.name), ("offset", str(placed[key])), ("length", str(length))])
    try:
        wfiles.copy_ranges(data_path, ranges)
    except BaseException:
        _restore(saved)
        raise
    return saved


def _restore(saved: list) -> None:
    """Give tensors back the external-data entries that :func:`write_data_file` replaced."""
    for t, entries in saved:
        _set_entries(t, entries)


def _set_entries(tensor: onnx.TensorProto, entries: list[tuple[str, str]]) -> None:
    del tensor.external_data[:]
    for key, value in entries:
        tensor.external_data.add(key=key, value=value)


def save_standalone(model: onnx.ModelProto, path: str | os.PathLike, weights_from: Path | None) -> Path:
    """Write a self-contained copy: embedded weights if under 2 GB, else its own data file beside it
    (``path`` + ``DATA_SUFFIX``, copied range by range as in :func:`save`, never read into memory).

    Used for results (``reduced.onnx``) that users attach to bug reports.
    """
    p = Path(path)
    if weights_from is not None and external_locations(model) and \
            external_bytes(model) + model.ByteSize() >= PROTOBUF_LIMIT_BYTES:
        return save(model, p, weights_from=weights_from, weights="file")
    full = onnx.ModelProto()
    full.CopyFrom(model)
    if weights_from is not None and external_locations(full):
        load_weights(full, Path(weights_from))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if full.ByteSize() < PROTOBUF_LIMIT_BYTES:
            onnx.save(full, str(p))
        else:
            onnx.save(full, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=p.name + DATA_SUFFIX)
    except OSError as exc:
        raise UserError(f"cannot write {p}: {exc.strerror or exc}") from None
    return p


def raw_length(tensor: onnx.TensorProto) -> int:
    """Bytes of ``tensor``'s raw data by onnx's rule (``onnx.helper.make_tensor``): ceil(elements x
    bits per element / 8), where 4-, 2- and 6-bit types are packed and every other type takes its
    numpy item size. ValueError for a type without a fixed size (STRING, UNDEFINED).

    >>> t = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT16, [3, 5], [0.0] * 15)
    >>> raw_length(t), raw_length(onnx.helper.make_tensor("q", onnx.TensorProto.INT4, [3], [1, 2, 3]))
    (30, 2)
    """
    count = 1
    for d in tensor.dims:
        count *= int(d)
    bits = _PACKED_BITS.get(tensor.data_type)
    if bits is None:
        if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            raise ValueError(f"tensor {tensor.name!r} of type "
                             f"{onnx.TensorProto.DataType.Name(tensor.data_type)} has no fixed size")
        bits = 8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return -(-count * bits // 8)


def read_external(tensor: onnx.TensorProto, base_dir: Path) -> bytes:
    """The bytes of one external tensor: ``length`` bytes from ``offset`` in ``location``; without a
    ``length`` entry, as many as its dims and data type take (``raw_length``), never the rest of the
    file, which may hold other tensors. A missing, unreadable or short file is a UserError. Our own
    reader: onnx's refuses hard-linked weight files, which is how ``--compare`` candidates share the
    session's weights."""
    info = {e.key: e.value for e in tensor.external_data}
    path = Path(base_dir) / info["location"]
    offset = int(info.get("offset", 0) or 0)
    try:
        length = int(info["length"]) if info.get("length") else raw_length(tensor)
    except ValueError as exc:
        raise UserError(f"cannot read weights of {tensor.name!r} from {path}: no length given, and {exc}") from None
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as exc:
        raise UserError(f"cannot read weights of {tensor.name!r} from {path}: {exc.strerror or exc}") from None
    if len(data) < length:
        raise UserError(f"weight file {path} is truncated at {tensor.name!r}: {len(data)} of {length} bytes "
                        f"from offset {offset}")
    return data


def load_weights(model: onnx.ModelProto, base_dir: Path, names: set[str] | None = None) -> None:
    """Embed the external tensors of ``model`` (only ``names``, if given), in place."""
    for t in _tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL and (names is None or t.name in names):
            t.raw_data = read_external(t, base_dir)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT


@functools.lru_cache(maxsize=1)
def max_runtime_ir_version() -> int:
    """The newest ONNX IR version the installed onnxruntime accepts (probed once, cached)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return onnx.IR_VERSION
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    for ir in range(onnx.IR_VERSION, MIN_IR_VERSION - 1, -1):
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = ir
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:
            continue
    return MIN_IR_VERSION


def normalize_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower ``model.ir_version`` to what the installed onnxruntime accepts (in place).

    onnx 1.23 writes IR 14, which onnxruntime 1.31 rejects (1.32 accepts it). IR 3 models (initializers listed among
    graph inputs) are raised to 4 after :func:`drop_initializer_inputs`.
    """
    limit = max_runtime_ir_version()
    if model.ir_version > limit:
        model.ir_version = limit
    return model


def drop_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """IR 3 models list every initializer among the graph inputs: those are weights, not inputs.

    Removes them from ``graph.input`` and raises the IR version to at least 4 (in place).
    """
    inits = {t.name for t in model.graph.initializer}
    if inits & {i.name for i in model.graph.input}:
        keep = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(keep)
    if model.ir_version < 4:
        model.ir_version = 4
    return model
