"""Load and save ONNX models without ever holding or copying the weights twice.

A model is loaded *without* its external data: initializers stored outside the ``.onnx`` file keep
their ``external_data`` references and are read by onnxruntime (or TensorRT) straight from the
original file. Models whose weights are embedded are externalized once per session
(:func:`externalize`), so every derived model (a reduce candidate, a mixed-precision model) is a
small protobuf that *references* the weight file instead of copying it.

Example::

    m = load("resnet.onnx")             # ModelProto, weights left on disk
    base = weights_dir(m)               # where its external weights live
    save(m, "iter/polygraphy_debug.onnx", weights_from=base)  # links the weight files in
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import onnx
from onnx import external_data_helper

from bisector.errors import UserError

# Initializers at least this large are moved to the session's weight file.
EXTERNALIZE_THRESHOLD_BYTES = 1024
# Below this many bytes of weights, candidates embed their weights (any tool can read them);
# above it they link the session's weight file (bytes per iteration independent of the weights).
EMBED_WEIGHTS_BELOW_BYTES = 64 << 20
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
            raise UserError(f"{p}: external data file {missing[0]!r} not found in {data_dir} (--external-data-dir)")
        if missing:
            raise UserError(
                f"{p}: external data file {missing[0]!r} not found next to the model",
                hint="keep the weight file beside the .onnx file, as it was exported, or give --external-data-dir",
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
    where they are. Modifies ``model`` in place; afterwards it is small and every derived model can reference the same file.
    """
    # Top-level initializers only: onnxruntime rejects external data inside If/Loop bodies.
    tensors = [t for t in model.graph.initializer
               if not external_data_helper.uses_external_data(t)
               and t.HasField("raw_data") and len(t.raw_data) >= threshold]
    if not tensors:
        return
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / location
    if target.is_symlink():  # never write through a link into the user's own files
        target.unlink()
    with open(target, "wb") as f:
        for t in tensors:
            offset = f.tell()
            f.write(t.raw_data)
            length = len(t.raw_data)
            external_data_helper.set_external_data(t, location=location, offset=offset, length=length)
            t.data_location = onnx.TensorProto.EXTERNAL
            t.ClearField("raw_data")
        f.flush()
        os.fsync(f.fileno())


def link_external(model: onnx.ModelProto, weights_from: Path, dest_dir: Path, *, borrowed: bool = False) -> None:
    """Make every external file of ``model`` reachable from ``dest_dir`` by its relative location.

    Hard links first: onnxruntime (1.31) resolves symlinks and refuses external data that then lies
    outside the model's directory, and TensorRT's parser rejects ``../`` in locations. Across file
    systems a hard link is impossible; then a symlink (TensorRT follows it; onnxruntime refuses it),
    and a copy only if the file system allows neither.

    ``borrowed``: the files are the user's. While any hard link to them exists, ``onnx.load`` refuses
    the user's own model ("potential hardlink attack"), so they are remembered and
    :func:`release_borrowed` removes every link to them when bisector is done with the session.
    """
    weights_from = Path(weights_from).resolve()
    dest_dir = Path(dest_dir)
    if weights_from == dest_dir.resolve():
        return
    for loc in external_locations(model):
        src = weights_from / loc
        dst = dest_dir / loc
        if borrowed and src.exists():
            st = src.stat()
            _BORROWED.setdefault((st.st_dev, st.st_ino), set()).add(os.path.abspath(src))
        if dst.exists() or dst.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src.resolve(), dst)
        except OSError:
            try:
                os.symlink(src, dst)
            except OSError:
                shutil.copyfile(src, dst)


# (device, inode) of the user's weight files linked into a session -> the user's own paths to them
_BORROWED: dict[tuple[int, int], set[str]] = {}


def release_borrowed(root: Path) -> int:
    """Remove every hard link under ``root`` to a user's weight file (see :func:`link_external`), so
    that ``onnx.load`` accepts the user's model again; a resumed session links them anew. Returns
    how many were removed."""
    if not _BORROWED:
        return 0
    removed = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.abspath(os.path.join(dirpath, name))
            try:
                st = os.lstat(path)
                originals = _BORROWED.get((st.st_dev, st.st_ino))
                # never the user's own file, should the session directory hold it (--session .)
                if originals and path not in originals and st.st_nlink > 1:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
    return removed


def save(model: onnx.ModelProto, path: str | os.PathLike, *, weights_from: Path | None = None,
         embed: bool = False) -> Path:
    """Write ``model`` (small: its weights stay external) to ``path``.

    ``weights_from`` is the directory its external locations are relative to; those files are
    linked next to ``path`` (see :func:`link_external`). With ``embed=True`` the weights the model
    uses are copied into the file instead, for tools that call ``onnx.load`` on it (onnx refuses
    linked weight files). Raises ``UserError`` when the directory is not writable or the disk is
    full.
    """
    p = Path(path)
    if embed and weights_from is not None and external_locations(model):
        full = onnx.ModelProto()
        full.CopyFrom(model)
        load_weights(full, Path(weights_from))
        model, weights_from = full, None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        data = model.SerializeToString()
        with open(p, "wb") as f:
            f.write(data)
        if weights_from is not None:
            link_external(model, weights_from, p.parent)
    except OSError as exc:
        raise UserError(f"cannot write {p}: {exc.strerror or exc}") from None
    except ValueError as exc:  # protobuf refuses > 2 GB: weights were not externalized
        raise UserError(f"cannot write {p}: {exc}", hint="weights must be external for models over 2 GB") from None
    return p


def save_standalone(model: onnx.ModelProto, path: str | os.PathLike, weights_from: Path | None) -> Path:
    """Write a self-contained copy: embedded weights if under 2 GB, else one external file beside it.

    Used for results (``reduced.onnx``) that users attach to bug reports.
    """
    p = Path(path)
    full = onnx.ModelProto()
    full.CopyFrom(model)
    if weights_from is not None and external_locations(full):
        load_weights(full, Path(weights_from))
    size = full.ByteSize() if full.ByteSize() < 2**31 - 1 else 2**31
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if size < 2**31 - 1:
            onnx.save(full, str(p))
        else:
            onnx.save(full, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=p.name + ".data")
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
    reader: onnx's refuses hard-linked weight files, which is how every candidate shares the
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
