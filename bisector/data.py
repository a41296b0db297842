"""Input and output data: Polygraphy's JSON format (base64 ``.npy`` arrays) and ``.npz``.

Polygraphy's format, as written by ``polygraphy run --save-inputs``::

    [ {"x": {"array": "<base64 of np.save(arr)>", "polygraphy_class": "ndarray"}}, ... ]

one dict per input sample. See ../shared/notes/POLYGRAPHY.md.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bisector.errors import UserError

Samples = list[dict[str, np.ndarray]]


def encode_array(arr: np.ndarray) -> dict[str, str]:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode("ascii"), "polygraphy_class": "ndarray"}


def decode_array(obj: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(obj["array"])
    return np.load(io.BytesIO(raw), allow_pickle=False)


def save_inputs(samples: Samples, path: str | os.PathLike) -> Path:
    """Write input samples as a Polygraphy inputs JSON (or ``.npz`` if the name ends so)."""
    p = Path(path)
    if p.suffix == ".npz":
        flat = {f"{i}/{name}": arr for i, s in enumerate(samples) for name, arr in s.items()}
        np.savez(p, **flat)
        return p
    doc = [{name: encode_array(arr) for name, arr in s.items()} for s in samples]
    p.write_text(json.dumps(doc))
    return p


def load_inputs(path: str | os.PathLike) -> Samples:
    """Read input samples written by :func:`save_inputs` or ``polygraphy run --save-inputs``."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such inputs file")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                samples: dict[int, dict[str, np.ndarray]] = {}
                for key in z.files:
                    idx, _, name = key.partition("/")
                    samples.setdefault(int(idx), {})[name] = z[key]
            return [samples[i] for i in sorted(samples)]
        doc = json.loads(p.read_text())
        if isinstance(doc, dict):
            doc = [doc]
        return [{name: decode_array(v) for name, v in s.items()} for s in doc]
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{p}: not a Polygraphy inputs JSON or .npz ({type(exc).__name__}: {exc})") from None
