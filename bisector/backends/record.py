"""Record every intermediate activation of a model, for every input sample, in bounded memory.

Reduce feeds cut tensors with these values (faults are often data-dependent, so random data would
hide them), and the in-process compare check uses them as the fp32 reference of any subgraph.

Tensors are recorded in chunks whose estimated size stays under a budget (the model is re-run per
chunk). Each chunk's tensors of one sample go into one packed file (raw bytes, 64-byte aligned;
``index.json`` gives every tensor's file, offset, dtype and shape) read back memory-mapped, so a
large model's activations never sit in memory all at once, and recording a 1,000-node model
writes a few files rather than one per tensor.

Example::

    store = record_activations(model, weights_dir, samples, session_dir / "activations")
    store.get("conv1_out", sample=0)     # np.ndarray (memory-mapped)
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx

from bisector.backends.onnxrt import OnnxRuntime
from bisector.errors import UserError
from bisector.model import io as mio
from bisector.model.shapes import infer_shapes

log = logging.getLogger(__name__)

# Estimated bytes of activations onnxruntime may return at once, per sample.
DEFAULT_BUDGET_BYTES = 512 << 20
# Size assumed for a tensor whose shape inference could not tell.
UNKNOWN_TENSOR_BYTES = 4 << 20


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    return mio.normalize_ir(m)


def intermediate_tensors(model: onnx.ModelProto) -> list[str]:
    """Every tensor a top-level node writes, in graph order."""
    seen: dict[str, None] = {}
    for n in model.graph.node:
        for o in n.output:
            if o:
                seen.setdefault(o, None)
    return list(seen)


def _chunks(names: list[str], sizes: dict[str, int], budget: int) -> list[list[str]]:
    chunks, cur, total = [], [], 0
    for n in names:
        s = sizes.get(n, UNKNOWN_TENSOR_BYTES)
        if cur and total + s > budget:
            chunks.append(cur)
            cur, total = [], 0
        cur.append(n)
        total += s
    if cur:
        chunks.append(cur)
    return chunks


class ActivationStore:
    """Recorded tensors on disk: ``get(name, sample)`` returns a read-only memory-mapped array."""

    def __init__(self, root: Path):
        self.root = Path(root)
        index = json.loads((self.root / "index.json").read_text())
        self.samples: int = index["samples"]
        # per sample: {name: [file, offset]}
        self.locations: list[dict[str, list]] = index["locations"]
        self.dtypes: dict[str, str] = index["dtypes"]
        self.shapes: dict[str, list[int]] = index["shapes"]
        self.files = self.dtypes  # every recorded tensor, in recording order
        self.given: list[str] = index.get("given", [])  # stored as loaded, not recorded (every sample)
        self.recorded: list[str] | None = index.get("recorded")  # computed here (None: an older index)
        self._maps: dict[str, np.memmap] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.dtypes

    def get(self, name: str, sample: int = 0) -> np.ndarray:
        fname, offset, shape = self.locations[sample][name]
        dtype = np.dtype(self.dtypes[name])
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dtype)
        buf = self._maps.get(fname)
        if buf is None:
            buf = self._maps[fname] = np.memmap(self.root / fname, dtype=np.uint8, mode="r")
        return buf[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)

    def feeds(self, names: list[str]) -> list[dict[str, np.ndarray]]:
        """One ``{name: array}`` dict per sample for the given tensors."""
        return [{n: self.get(n, s) for n in names} for s in range(self.samples)]

    def spec(self, name: str) -> tuple[np.dtype, list[int]]:
        return np.dtype(self.dtypes[name]), self.shapes[name]


class _Packer:
    """Writes tensors into packed files and keeps the index of where each one went."""

    ALIGN = 64

    def __init__(self, root: Path, samples: int):
        self.root = root
        self.locations: list[dict[str, list]] = [{} for _ in range(samples)]
        self.dtypes: dict[str, str] = {}
        self.shapes: dict[str, list[int]] = {}

    def write(self, fname: str, sample: int, values) -> None:
        with open(self.root / fname, "wb") as f:
            for name, value in values:
                if not isinstance(value, np.ndarray) or value.dtype.hasobject:
                    continue  # sequences, maps and strings cannot be fed back to a cut anyway
                value = np.ascontiguousarray(value)
                f.write(b"\0" * (-f.tell() % self.ALIGN))
                self.locations[sample][name] = [fname, f.tell(), list(value.shape)]
                f.write(value.data)
                self.dtypes[name] = value.dtype.str
                self.shapes[name] = list(value.shape)

    def index(self, **extra) -> dict:
        return {"samples": len(self.locations), "locations": self.locations,
                "dtypes": self.dtypes, "shapes": self.shapes, **extra}


def _record_chunk(model, weights_dir, samples, given, chunk: list[str], path: Path, runtime, packer, name: str) -> None:
    """Run ``model`` with ``chunk``'s tensors as outputs on every sample; pack what no given value replaces."""
    m = _with_outputs(model, chunk)
    path = mio.save(m, path, weights_from=weights_dir)
    sess = runtime.session(path)
    out_names = [o.name for o in sess.get_outputs()]
    for s, sample in enumerate(samples):
        wanted = set(chunk) - set(given[s])
        try:
            values = sess.run(out_names, dict(sample))
        except Exception as exc:
            raise UserError(f"onnxruntime failed to run the model: {' '.join(str(exc).split())[:300]}") from None
        packer.write(f"{name}_{s}.bin", s, ((n, v) for n, v in zip(out_names, values) if n in wanted))
    del sess
    path.unlink()


def record_activations(model: onnx.ModelProto, weights_dir: Path | None, samples: list[dict[str, np.ndarray]],
                       root: Path, runtime: OnnxRuntime | None = None,
                       budget_bytes: int = DEFAULT_BUDGET_BYTES,
                       given: list[dict[str, np.ndarray]] | None = None) -> ActivationStore:
    """Run ``model`` on every sample and store every tensor (inputs included) under ``root``.

    ``given`` (one dict per sample) holds values of tensors the model computes that were loaded
    rather than computed (Polygraphy's layerwise inputs). They are stored as they are, in place of
    what the model computes: a cut tensor is fed the value the user gave, as Polygraphy feeds it.
    Only the tensors missing from some sample's ``given`` are recorded, and those samples keep their
    given values; when none is missing, onnxruntime is not run at all. Names that the model does
    not compute are ignored.

    Re-uses a complete earlier recording in ``root`` (a resumed session records nothing again).
    """
    root = Path(root)
    if (root / "index.json").exists():
        if "locations" in json.loads((root / "index.json").read_text()):
            return ActivationStore(root)
        shutil.rmtree(root)  # one file per tensor, from bisector 0.1: record again, packed
    names = intermediate_tensors(model)
    given = given or [{} for _ in samples]
    missing = [n for n in names if not all(n in g for g in given)]
    shapes = infer_shapes(model) if missing else {}
    sizes = {}
    for n in missing:
        if n in shapes and all(d >= 0 for d in shapes[n][1]):
            sizes[n] = int(np.prod(shapes[n][1], dtype=np.int64)) * shapes[n][0].itemsize
    chunks = _chunks(missing, sizes, budget_bytes)
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    packer = _Packer(tmp, len(samples))
    for s, sample in enumerate(samples):
        packer.write(f"inputs_{s}.bin", s, ((n, np.asarray(a)) for n, a in sample.items()))
        if any(n in given[s] for n in names):
            packer.write(f"given_{s}.bin", s, ((n, np.asarray(given[s][n])) for n in names if n in given[s]))
    runtime = runtime or (OnnxRuntime("cpu") if chunks else None)
    for ci, chunk in enumerate(chunks):
        _record_chunk(model, weights_dir, samples, given, chunk, tmp / f"record_{ci}.onnx", runtime, packer,
                      f"chunk{ci}")
    (tmp / "index.json").write_text(json.dumps(packer.index(given=[n for n in names if n not in missing],
                                                            recorded=missing)))
    for p in tmp.glob("*.data"):
        p.unlink()
    for p in tmp.iterdir():
        if p.is_symlink():
            p.unlink()
    tmp.rename(root)
    return ActivationStore(root)
