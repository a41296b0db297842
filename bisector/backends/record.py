"""Record every intermediate activation of a model, for every input sample, in bounded memory.

Reduce feeds cut tensors with these values (faults are often data-dependent, so random data would
hide them), and the in-process compare check uses them as the fp32 reference of any subgraph.

Tensors are recorded in chunks whose estimated size stays under a budget (the model is re-run per
chunk), written to ``.npy`` files and read back memory-mapped, so a large model's activations
never sit in memory all at once.

Example::

    store = record_activations(model, weights_dir, samples, session_dir / "activations")
    store.get("conv1_out", sample=0)     # np.ndarray (memory-mapped)
"""

from __future__ import annotations

import hashlib
import json
import logging
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


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
    return f"{keep}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


class ActivationStore:
    """Recorded tensors on disk: ``get(name, sample)`` returns a read-only memory-mapped array."""

    def __init__(self, root: Path):
        self.root = Path(root)
        index = json.loads((self.root / "index.json").read_text())
        self.files: dict[str, str] = index["files"]
        self.samples: int = index["samples"]
        self.dtypes: dict[str, str] = index["dtypes"]
        self.shapes: dict[str, list[int]] = index["shapes"]

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str, sample: int = 0) -> np.ndarray:
        return np.load(self.root / str(sample) / self.files[name], mmap_mode="r", allow_pickle=False)

    def feeds(self, names: list[str]) -> list[dict[str, np.ndarray]]:
        """One ``{name: array}`` dict per sample for the given tensors."""
        return [{n: self.get(n, s) for n in names} for s in range(self.samples)]

    def spec(self, name: str) -> tuple[np.dtype, list[int]]:
        return np.dtype(self.dtypes[name]), self.shapes[name]


def record_activations(model: onnx.ModelProto, weights_dir: Path | None, samples: list[dict[str, np.ndarray]],
                       root: Path, runtime: OnnxRuntime | None = None,
                       budget_bytes: int = DEFAULT_BUDGET_BYTES) -> ActivationStore:
    """Run ``model`` on every sample and store every tensor (inputs included) under ``root``.

    Re-uses a complete earlier recording in ``root`` (a resumed session records nothing again).
    """
    root = Path(root)
    if (root / "index.json").exists():
        return ActivationStore(root)
    runtime = runtime or OnnxRuntime("cpu")
    names = intermediate_tensors(model)
    shapes = infer_shapes(model)
    sizes = {}
    for n in names:
        if n in shapes and all(d >= 0 for d in shapes[n][1]):
            sizes[n] = int(np.prod(shapes[n][1], dtype=np.int64)) * shapes[n][0].itemsize
    chunks = _chunks(names, sizes, budget_bytes)
    files, dtypes, tshapes = {}, {}, {}
    tmp = root.with_name(root.name + ".partial")
    for s, sample in enumerate(samples):
        (tmp / str(s)).mkdir(parents=True, exist_ok=True)
        for name, arr in sample.items():
            _store(tmp, s, name, np.asarray(arr), files, dtypes, tshapes)
    for ci, chunk in enumerate(chunks):
        m = _with_outputs(model, chunk)
        path = mio.save(m, tmp / f"record_{ci}.onnx", weights_from=weights_dir)
        sess = runtime.session(path)
        out_names = [o.name for o in sess.get_outputs()]
        wanted = set(chunk)
        for s, sample in enumerate(samples):
            try:
                values = sess.run(out_names, dict(sample))
            except Exception as exc:
                raise UserError(f"onnxruntime failed to run the model: {' '.join(str(exc).split())[:300]}") from None
            for name, value in zip(out_names, values):
                if name in wanted and isinstance(value, np.ndarray):
                    _store(tmp, s, name, value, files, dtypes, tshapes)
        del sess
        path.unlink()
    (tmp / "index.json").write_text(json.dumps({"files": files, "samples": len(samples),
                                                "dtypes": dtypes, "shapes": tshapes}))
    for p in tmp.glob("*.data"):
        p.unlink()
    for p in tmp.iterdir():
        if p.is_symlink():
            p.unlink()
    tmp.rename(root)
    return ActivationStore(root)


def _store(root, s, name, value, files, dtypes, shapes) -> None:
    fname = files.setdefault(name, _safe(name) + ".npy")
    np.save(root / str(s) / fname, value, allow_pickle=False)
    dtypes[name] = value.dtype.str
    shapes[name] = list(value.shape)


def run_all_tensors(model: onnx.ModelProto, samples, weights_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Every tensor's value for the first sample, in memory (for shape fallback on small models)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        m = _with_outputs(model, intermediate_tensors(model))
        path = mio.save(m, Path(d) / "all.onnx", weights_from=weights_dir)
        rt = OnnxRuntime("cpu")
        out = rt.run(path, samples[:1])[0]
    return {**samples[0], **out}
