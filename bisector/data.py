"""Input and output data: Polygraphy's JSON format (base64 ``.npy`` arrays), ``.npz``, and seeded
synthetic inputs that match Polygraphy's default data loader bit for bit.

Polygraphy's formats (verified against ``polygraphy run --save-inputs/--save-outputs``, 0.53.6)::

    inputs:  [ {"x": {"array": "<base64 of np.save(arr)>", "polygraphy_class": "ndarray"}}, ... ]
    outputs: {"lst": [[runner_name, [{"outputs": {name: {"values": <ndarray>,
                                                         "polygraphy_class": "LazyArray"}},
                                      "runtime": float, "runner_name": runner_name,
                                      "polygraphy_class": "IterationResult"}, ...]]],
              "polygraphy_class": "RunResults"}

one dict per sample (iteration). Polygraphy also writes a *directory* of per-iteration files
(``0000000000.json``, ...) when the path has no extension; both loaders read those. Older files
mark classes with ``"__polygraphy_encoded_<Class>": "polygraphy_serialized_json_type"`` or a
``"polygraphy_serialized_json_type": "<Class>"`` key; both are accepted.

``.npz`` layouts (ours): inputs ``"<sample>/<name>"``; outputs ``"<runner>/<sample>/<name>"`` plus a
``__runners__`` string array naming the runners. A plain ``np.savez(f, x=...)`` file reads as one
sample. See ../shared/notes/POLYGRAPHY.md.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bisector.errors import UserError

Samples = list[dict[str, np.ndarray]]
Outputs = dict[str, Samples]

TYPE_KEY = "polygraphy_class"
LEGACY_TYPE_KEY = "polygraphy_serialized_json_type"
LEGACY_PREFIX = "__polygraphy_encoded_"
DEFAULT_RUNNER_NAME = "bisector"
RUNNERS_KEY = "__runners__"
DEFAULT_SEED = 1  # Polygraphy's constants.DEFAULT_SEED; sample i uses seed + i
DEFAULT_VAL_RANGE = (0.0, 1.0)  # Polygraphy's default; ints get [0, 1], bools [False, True]
DYNAMIC_DIM_VALUE = 1  # Polygraphy's DEFAULT_SHAPE_VALUE for dims that are None, named or < 0
_INDEXED_KEY = re.compile(r"^(\d+)/(.+)$", re.S)


class _BadFile(Exception):
    """Raised inside the decoders; turned into a UserError naming the file."""


class _IterationResult(dict):
    """A decoded ``IterationResult``: ``{name: array}`` plus its runner name."""

    runner_name: str | None = None


class _RunResults(list):
    """A decoded ``RunResults``: ``[(runner_name, [iteration, ...]), ...]``."""


# ---------------------------------------------------------------- arrays and JSON objects
def encode_array(arr: np.ndarray) -> dict[str, str]:
    """Encode one array as Polygraphy does: base64 of ``np.save(arr, allow_pickle=False)``."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode("ascii"), TYPE_KEY: "ndarray"}


def decode_array(obj: dict[str, Any]) -> np.ndarray:
    """Decode :func:`encode_array`'s output (also the legacy latin-1 and ``.npz`` payloads)."""
    text = obj["array"]
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = text.encode("latin-1")  # very old Polygraphy files
    loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):  # older Polygraphy stored a one-array npz
        with loaded:
            if not loaded.files:
                raise _BadFile("an array payload holds an empty .npz archive")
            return loaded[loaded.files[0]]
    return loaded


def polygraphy_class(dct: Mapping[str, Any]) -> str | None:
    """The class Polygraphy's JSON encoder marked ``dct`` with, or None: ``"polygraphy_class": C``,
    or the legacy markers ``"polygraphy_serialized_json_type": C`` and
    ``"__polygraphy_encoded_C": "polygraphy_serialized_json_type"``. Used by ``data`` and
    ``backends.trt_replay`` (tactic replay files)."""
    if TYPE_KEY in dct:
        return dct[TYPE_KEY]
    if isinstance(dct.get(LEGACY_TYPE_KEY), str):
        return dct[LEGACY_TYPE_KEY]
    for key, value in dct.items():
        if key.startswith(LEGACY_PREFIX) and value == LEGACY_TYPE_KEY:
            return key[len(LEGACY_PREFIX):]
    return None


def _decode_object(dct: dict[str, Any]) -> Any:
    """``json.loads`` object hook: turn Polygraphy-tagged objects into arrays and results."""
    cls = polygraphy_class(dct)
    if cls is None:
        return dct
    if cls == "ndarray":
        return decode_array(dct)
    if cls in ("LazyArray", "LazyNumpyArray"):
        return _expect_array(dct["values"], "LazyArray values")
    if cls == "IterationResult":
        outputs = dct["outputs"]
        if not isinstance(outputs, dict):
            raise _BadFile("IterationResult 'outputs' is not an object")
        result = _IterationResult((k, _expect_array(v, f"output {k!r}")) for k, v in outputs.items())
        result.runner_name = dct.get("runner_name")
        return result
    if cls == "RunResults":
        lst = dct["lst"]
        if not isinstance(lst, list) or not all(isinstance(p, list) and len(p) == 2 for p in lst):
            raise _BadFile("RunResults 'lst' is not a list of [runner_name, iterations] pairs")
        return _RunResults((str(name), iters) for name, iters in lst)
    raise _BadFile(f"unsupported object type {cls!r}")


def _expect_array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise _BadFile(f"{what} is a {type(value).__name__}, not an encoded array")
    return value


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(), object_hook=_decode_object)


def _json_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.json"))
    if not files:
        raise UserError(f"{path}: directory holds no .json files")
    return files


def _load(path: str | os.PathLike, what: str, hint: str, parse) -> Any:
    """Run ``parse(path)``, turning any decoding problem into one UserError naming the file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such {what} file")
    try:
        return parse(p)
    except UserError:
        raise
    except Exception as exc:
        detail = str(exc) if isinstance(exc, _BadFile) else f"{type(exc).__name__}: {exc}"
        raise UserError(f"{p}: not a {hint} ({detail})") from None


# ---------------------------------------------------------------- inputs
def save_inputs(samples: Samples, path: str | os.PathLike) -> Path:
    """Write input samples as a Polygraphy inputs JSON (or ``.npz`` if the name ends so)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".npz":
        flat = {f"{i}/{name}": np.asarray(arr) for i, s in enumerate(samples) for name, arr in s.items()}
        np.savez(p, **flat)
        return p
    doc = [{name: encode_array(arr) for name, arr in s.items()} for s in samples]
    p.write_text(json.dumps(doc))
    return p


def load_inputs(path: str | os.PathLike) -> Samples:
    """Read input samples written by :func:`save_inputs` or ``polygraphy run --save-inputs``.

    Accepts a JSON list of ``{name: array}`` (or one such dict), a directory of per-sample JSON
    files, or an ``.npz``. Raises UserError for a missing or malformed file.
    """
    return _load(path, "inputs", "Polygraphy inputs JSON or .npz", _parse_inputs)


def _parse_inputs(p: Path) -> Samples:
    if p.suffix == ".npz":
        return _npz_samples(p)
    docs = [_read_json(f) for f in _json_files(p)] if p.is_dir() else [_read_json(p)]
    samples: Samples = []
    for doc in docs:
        if isinstance(doc, _RunResults):
            raise _BadFile("it holds outputs (RunResults), not inputs")
        samples.extend(doc if isinstance(doc, list) else [doc])
    if not samples:
        raise _BadFile("it holds no samples")
    for s in samples:
        if not isinstance(s, dict):
            raise _BadFile(f"expected a list of {{name: array}}, found a {type(s).__name__}")
        for name, value in s.items():
            _expect_array(value, f"input {name!r}")
    return [dict(s) for s in samples]


def _npz_samples(p: Path) -> Samples:
    with np.load(p, allow_pickle=False) as z:
        if RUNNERS_KEY in z.files:
            raise _BadFile("it holds outputs (written by save_outputs), not inputs")
        matches = {key: _INDEXED_KEY.match(key) for key in z.files}
        if not all(matches.values()):  # a plain np.savez(f, x=..., y=...): one sample
            return [{key: z[key] for key in z.files}]
        samples: dict[int, dict[str, np.ndarray]] = {}
        for key, m in matches.items():
            samples.setdefault(int(m.group(1)), {})[m.group(2)] = z[key]
    return [samples[i] for i in sorted(samples)]


# ---------------------------------------------------------------- outputs
def _as_runs(results: Any, runner_name: str) -> Outputs:
    if isinstance(results, Mapping):
        if all(isinstance(v, np.ndarray) for v in results.values()):
            return {runner_name: [dict(results)]}
        return {str(k): [dict(s) for s in v] for k, v in results.items()}
    return {runner_name: [dict(s) for s in results]}


def save_outputs(results: Any, path: str | os.PathLike, runner_name: str = DEFAULT_RUNNER_NAME) -> Path:
    """Write outputs as a Polygraphy ``RunResults`` JSON (or ``.npz`` if the name ends so).

    ``results`` is one sample ``{name: array}``, a list of samples (one runner, named
    ``runner_name``, default ``"bisector"``), or ``{runner_name: [sample, ...]}``. Runtimes are
    written as 0.0. ``polygraphy run --load-outputs`` reads the JSON.
    """
    runs = _as_runs(results, runner_name)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".npz":
        flat = {f"{r}/{i}/{name}": np.asarray(arr)
                for r, samples in enumerate(runs.values())
                for i, s in enumerate(samples) for name, arr in s.items()}
        np.savez(p, **{RUNNERS_KEY: np.array(list(runs), dtype=str)}, **flat)
        return p

    def iteration(name: str, sample: dict[str, np.ndarray]) -> dict[str, Any]:
        outs = {k: {"values": encode_array(v), TYPE_KEY: "LazyArray"} for k, v in sample.items()}
        return {"outputs": outs, "runtime": 0.0, "runner_name": name, TYPE_KEY: "IterationResult"}

    lst = [[name, [iteration(name, s) for s in samples]] for name, samples in runs.items()]
    p.write_text(json.dumps({"lst": lst, TYPE_KEY: "RunResults"}))
    return p


def load_outputs(path: str | os.PathLike) -> Outputs:
    """Read outputs written by :func:`save_outputs` or ``polygraphy run --save-outputs``.

    Returns ``{runner_name: [sample, ...]}`` with each sample ``{name: array}``, in file order.
    Accepts a RunResults JSON, a directory of per-iteration RunResults files, or an ``.npz``.
    Raises UserError for a missing or malformed file.
    """
    return _load(path, "outputs", "Polygraphy outputs (RunResults) JSON or .npz", _parse_outputs)


def _parse_outputs(p: Path) -> Outputs:
    if p.suffix == ".npz":
        return _npz_outputs(p)
    runs: Outputs = {}
    for f in _json_files(p) if p.is_dir() else [p]:
        doc = _read_json(f)
        if not isinstance(doc, _RunResults):
            kind = "a list (an inputs file?)" if isinstance(doc, list) else type(doc).__name__
            raise _BadFile(f"expected a RunResults object, found {kind}")
        for name, iterations in doc:
            if not isinstance(iterations, list):
                raise _BadFile(f"runner {name!r}: iterations are not a list")
            for it in iterations:
                if not isinstance(it, dict):  # legacy files: a plain {name: array}
                    raise _BadFile(f"runner {name!r}: an iteration is a {type(it).__name__}")
                for out, value in it.items():
                    _expect_array(value, f"output {out!r}")
                runs.setdefault(name, []).append(dict(it))
    return runs


def _npz_outputs(p: Path) -> Outputs:
    with np.load(p, allow_pickle=False) as z:
        if RUNNERS_KEY not in z.files:
            return {DEFAULT_RUNNER_NAME: _npz_samples(p)}
        names = [str(n) for n in z[RUNNERS_KEY]]
        runs: dict[int, dict[int, dict[str, np.ndarray]]] = {r: {} for r in range(len(names))}
        for key in z.files:
            if key == RUNNERS_KEY:
                continue
            r, _, rest = key.partition("/")
            m = _INDEXED_KEY.match(rest)
            if not r.isdigit() or int(r) not in runs or not m:
                raise _BadFile(f"unexpected key {key!r}")
            runs[int(r)].setdefault(int(m.group(1)), {})[m.group(2)] = z[key]
    return {names[r]: [its[i] for i in sorted(its)] for r, its in runs.items()}


# ---------------------------------------------------------------- synthetic inputs
def generate_inputs(
    input_specs: Mapping[str, tuple[Any, tuple]],
    samples: int = 1,
    seed: int = DEFAULT_SEED,
    val_range: Mapping[str | None, tuple[float, float]] | tuple[float, float] | None = None,
) -> Samples:
    """Seeded random inputs, identical to Polygraphy's default ``DataLoader`` (numpy backend).

    ``input_specs`` maps ``name -> (dtype, shape)``; dims that are None, strings or negative become
    1. Sample ``i`` draws from ``np.random.RandomState(seed + i)`` (default seed 1), inputs in
    ``input_specs`` order. ``val_range`` maps ``name -> (lo, hi)`` (inclusive); the key ``""`` or
    None sets the range for all other inputs; a bare ``(lo, hi)`` applies to all. Default
    ``(0.0, 1.0)``: floats uniform in [0, 1), ints in {0, 1}, bools in {False, True}.

    >>> generate_inputs({"x": (np.float32, (1, 3))}, val_range={"x": (-1, 1)})[0]["x"].shape
    (1, 3)
    """
    ranges = dict(val_range) if isinstance(val_range, Mapping) else {"": val_range or DEFAULT_VAL_RANGE}
    default = ranges.get("", ranges.get(None, DEFAULT_VAL_RANGE))
    out: Samples = []
    for index in range(samples):
        rng = np.random.RandomState(seed + index)
        sample = {}
        for name, (dtype, shape) in input_specs.items():
            dims = tuple(int(d) if isinstance(d, numbers.Integral) and d >= 0 else DYNAMIC_DIM_VALUE
                         for d in shape)
            sample[name] = _sample_array(rng, name, np.dtype(dtype), dims, ranges.get(name, default))
        out.append(sample)
    return out


def _sample_array(rng: np.random.RandomState, name: str, dtype: np.dtype, shape: tuple,
                  bounds: tuple[float, float]) -> np.ndarray:
    lo, hi = bounds
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        cast = bool if dtype == np.bool_ else int
        lo, hi = cast(lo), cast(hi)
        if hi < lo or (np.issubdtype(dtype, np.integer) and not
                       (np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max)):
            raise UserError(f"input {name}: value range [{lo}, {hi}] is empty or outside {dtype}",
                            hint="fix `val_range`")
        return np.array(rng.randint(low=lo, high=hi + 1, size=shape, dtype=dtype))
    if not np.issubdtype(dtype, np.floating):
        raise UserError(f"input {name}: cannot generate data of type {dtype}",
                        hint="supply inputs with `load_inputs`")
    lo, hi = float(lo), float(hi)
    scale, shift = hi - lo, lo  # Polygraphy's handling, so that infinite bounds yield infinities
    if np.isinf(lo):
        scale, shift = lo, 0.0
    if np.isinf(hi):
        scale = hi
    return np.array((rng.random_sample(size=shape) * scale + shift).astype(dtype))


# ---------------------------------------------------------------- command-line syntax
def _number(text: str) -> float | int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_val_range(args: list[str] | None) -> dict[str, tuple[float, float]]:
    """Parse Polygraphy's ``--val-range`` syntax into ``{name: (lo, hi)}``; ``""`` is the default.

    >>> parse_val_range(["x:[0,2]", "[-1,1]"])
    {'x': (0, 2), '': (-1, 1)}
    """
    ranges: dict[str, tuple[float, float]] = {}
    for arg in args or []:
        name, _, value = arg.rpartition(":")
        value = value.strip()
        try:
            if not (value.startswith("[") and value.endswith("]")):
                raise ValueError
            lo, hi = (_number(v) for v in value[1:-1].split(","))
        except ValueError:
            raise UserError(f"`val_range` {arg!r}: expected [min,max] or NAME:[min,max], "
                            "e.g. x:[0,1]") from None
        if hi < lo:
            raise UserError(f"`val_range` {arg!r}: min {lo} is greater than max {hi}")
        ranges[name] = (lo, hi)
    return ranges
