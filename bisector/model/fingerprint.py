"""Content fingerprints of models that hash the weights once, not at every call.

``model_fingerprint`` hashes the graph structure (nodes, attributes, I/O, initializer names,
types and shapes) plus a digest of each weight's bytes. Weight digests are memoised per tensor
(embedded) or per external file (path, size, mtime), so fingerprinting the many models derived
from one subject costs only the structure.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}
_CHUNK = 1 << 22


def file_digest(path: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def model_fingerprint(model: onnx.ModelProto, weights_dir: Path | None = None) -> str:
    """A stable hex digest of what the model computes (structure and weights)."""
    h = hashlib.sha256()
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    stripped.ClearField("producer_name")
    stripped.ClearField("producer_version")
    stripped.ClearField("doc_string")
    for t in stripped.graph.initializer:
        if t.HasField("raw_data"):
            t.raw_data = hashlib.sha256(t.raw_data).digest()
    h.update(stripped.SerializeToString(deterministic=True))
    files = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    for loc in files:
        path = Path(weights_dir or ".") / loc
        h.update(loc.encode())
        h.update(file_digest(path).encode() if path.exists() else b"missing")
    return h.hexdigest()


def items_fingerprint(kind: str, items, extra: str = "") -> str:
    """Fingerprint of a candidate: its kind, its sorted items, and anything that changes its artifact."""
    h = hashlib.sha256(kind.encode())
    h.update(b"\0")
    h.update(",".join(map(str, sorted(items))).encode())
    h.update(b"\0")
    h.update(extra.encode())
    return h.hexdigest()[:32]
