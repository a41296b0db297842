"""Per-layer tactics files: what each layer of one build got. Read two formats, write one.

- **bisector's own** JSON::

      {"format": "bisector-tactics", "version": 1, "tensorrt": "10.13.0",
       "layers": [{"layer": "conv1", "tactic": "0x665ded9abbf88", "name": "sm80_xmma_...",
                   "key": "0x1814870c44ff0f8574df6e3dda04cbd7", "time_ms": 0.0112}]}

  ``tactic`` is a tactic hash or id (text), ``name`` the kernel or implementation name, ``key`` the
  layer's timing-cache key (empty when unknown), ``time_ms`` its timing (null when unknown). Other
  top-level keys (``builder``, ``seed``, ...) are the build's metadata, kept as they are.
- **Polygraphy's TacticReplayData** (``--save-tactics``; read through ``backends.trt_replay``):
  ``{"replay": {layer: Algorithm}, "polygraphy_class": "TacticReplayData"}``. A layer's tactic is
  ``"<implementation>:<tactic>"`` in 64-bit hex (``"0x80000006:0x3e9"``), and its name lists the I/O
  formats (``"FLOAT(4,1) -> HALF(4,1)"``). Two Algorithms that differ only in their formats are
  one tactic here (Polygraphy's diff counts them apart); they rarely vary between builds.

A file that is not JSON or carries neither format's marker raises :class:`NotATacticsFile`, one
with a marker but a broken body a :class:`~bisector.errors.UserError`; both name the file.

Example::

    tactics = read_tactics("bad/build_3.json")            # {layer: Tactic}
    write_tactics("tactics.json", tactics, {"tensorrt": "10.13.0", "time_ms": {"conv1": 0.011}})
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bisector.backends.trt_replay import ReplayAlgorithm, ReplayTensor, parse_tactic_replay
from bisector.data import polygraphy_class
from bisector.errors import UserError

FORMAT = "bisector-tactics"
VERSION = 1
LAYER_FIELDS = ("layer", "tactic", "name", "key", "time_ms")
RESERVED = ("format", "version", "layers")  # top-level keys that metadata cannot set
UINT64 = 2**64 - 1


class NotATacticsFile(UserError):
    """The file is not a tactics file of either format (not JSON, or no format marker): a directory
    scan skips it, a file named on purpose is an error."""


@dataclass(frozen=True)
class Tactic:
    """What one layer got in one build: ``tactic`` (hash or id, text), ``name`` (kernel or
    implementation), ``key`` (timing-cache key, "0x" + 32 hex; empty when unknown)."""

    layer: str
    tactic: str
    name: str = ""
    key: str = ""


@dataclass(frozen=True)
class TacticsFile:
    """A whole file: the tactics by layer (file order), ``time_ms`` by layer where known, the
    build's metadata (every other top-level key; ``tensorrt`` included) and its ``source`` format
    (``"bisector"`` or ``"polygraphy"``)."""

    tactics: dict[str, Tactic]
    time_ms: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "bisector"


def read_tactics(path: str | os.PathLike) -> dict[str, Tactic]:
    """``{layer: Tactic}`` from a tactics file of either format (see the module docstring)."""
    return load(path).tactics


def load(path: str | os.PathLike) -> TacticsFile:
    """The whole tactics file at ``path``: tactics, timings and metadata."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the tactics file ({exc.strerror or exc})") from None
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise NotATacticsFile(f"{path}: not a tactics file (not JSON)") from None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _ours(obj, path)
    if isinstance(obj, Mapping) and polygraphy_class(obj) == "TacticReplayData":
        try:
            replay = parse_tactic_replay(obj)
        except UserError as exc:
            raise UserError(f"{path}: {exc.message}", exc.hint) from None
        return TacticsFile({layer: _from_replay(layer, algo) for layer, algo in replay.items()},
                           source="polygraphy")
    raise NotATacticsFile(f"{path}: not a tactics file (neither \"format\": \"{FORMAT}\" nor Polygraphy's "
                          f"TacticReplayData)")


def _ours(obj: Mapping, path: Path) -> TacticsFile:
    if obj.get("version") != VERSION:
        raise UserError(f"{path}: tactics file version {obj.get('version')!r}, this bisector reads {VERSION}",
                        hint="write it with the same bisector version")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise UserError(f"{path}: tactics file without a \"layers\" list")
    tactics: dict[str, Tactic] = {}
    times: dict[str, float] = {}
    for i, entry in enumerate(layers):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("layer"), str) \
                or not isinstance(entry.get("tactic"), (str, int)) or isinstance(entry.get("tactic"), bool):
            raise UserError(f"{path}: layers[{i}] needs a \"layer\" name and a \"tactic\" (got {entry!r:.80})")
        name, key, time = entry.get("name") or "", entry.get("key") or "", entry.get("time_ms")
        if not isinstance(name, str) or not isinstance(key, str) \
                or not (time is None or (isinstance(time, (int, float)) and not isinstance(time, bool))):
            raise UserError(f"{path}: layers[{i}] ({entry['layer']!r}): \"name\" and \"key\" are text, "
                            f"\"time_ms\" a number or null")
        layer = entry["layer"]
        if layer in tactics:
            raise UserError(f"{path}: layer {layer!r} is listed twice")
        tactics[layer] = Tactic(layer, str(entry["tactic"]), name, key)
        if time is not None:
            times[layer] = float(time)
    meta = {k: v for k, v in obj.items() if k not in RESERVED}
    return TacticsFile(tactics, times, meta, "bisector")


def _from_replay(layer: str, algo: ReplayAlgorithm) -> Tactic:
    def formats(ts: tuple[ReplayTensor, ...]) -> str:
        return ", ".join(f"{t.dtype}({','.join(str(s) for s in t.strides)})" for t in ts)

    tactic = f"{hex(algo.implementation & UINT64)}:{hex(algo.tactic & UINT64)}"
    name = f"{formats(algo.inputs)} -> {formats(algo.outputs)}" if algo.inputs or algo.outputs else ""
    return Tactic(layer, tactic, name)


def write_tactics(path: str | os.PathLike, tactics: Mapping[str, Tactic], meta: Mapping[str, Any] | None = None) -> Path:
    """Write bisector's tactics file (atomically: a reader never sees half of it) and return its path.

    ``meta``: ``tensorrt`` (the version text, or None), ``time_ms`` (``{layer: ms}``, written into
    each layer's entry), and any other JSON-able keys (``builder``, ``seed``), kept at the top.
    ``format``, ``version`` and ``layers`` are not metadata and are refused."""
    meta = dict(meta or {})
    clash = sorted(set(meta) & set(RESERVED))
    if clash:
        raise ValueError(f"write_tactics: {clash} are not metadata")
    times = meta.pop("time_ms", None) or {}
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "tensorrt": meta.pop("tensorrt", None), **meta}
    doc["layers"] = [{"layer": t.layer, "tactic": t.tactic, "name": t.name, "key": t.key,
                      "time_ms": None if times.get(layer) is None else float(times[layer])}
                     for layer, t in tactics.items()]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def collect(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, TacticsFile]]:
    """Every tactics file under ``paths`` (files, or directories searched recursively in name order,
    as Polygraphy's ``inspect diff-tactics`` does), skipping what is not a tactics file (engines,
    logs) inside directories. A file named directly must be one."""
    out = []
    for root in map(Path, paths):
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                try:
                    out.append((path, load(path)))
                except NotATacticsFile:
                    continue
        elif root.exists():
            out.append((root, load(root)))
        else:
            raise UserError(f"{root}: no such file or directory")
    return out


def pairs(tactics: Mapping[str, Tactic]) -> dict[str, str]:
    """``{layer: tactic}``: what :func:`bisector.build.ranking.rank` takes for one build."""
    return {layer: t.tactic for layer, t in tactics.items()}
