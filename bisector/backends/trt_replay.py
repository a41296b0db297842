"""Polygraphy's tactic replay files (``--save-tactics`` / ``--load-tactics``), read and written
without tensorrt.

The file is ``TacticReplayData`` JSON: ``{"replay": {layer: Algorithm}}``, each Algorithm with its
implementation, tactic and I/O ``TensorInfo`` formats, every object tagged with Polygraphy's class
marker (``polygraphy_class``, or the legacy ``__polygraphy_encoded_<Class>`` key). The shape is
that of Polygraphy 0.53.6's encoders (``polygraphy/backend/trt/algorithm_selector.py``).

Example::

    replay = parse_tactic_replay(Path("replay.json").read_text())  # {layer: ReplayAlgorithm}
    json.dump(tactic_replay_to_json(replay), f)                   # what Polygraphy writes
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bisector.data import TYPE_KEY, polygraphy_class
from bisector.errors import UserError


@dataclass(frozen=True)
class ReplayTensor:
    """Polygraphy's TensorInfo. ``dtype`` is the DataType member name (FLOAT, HALF, ...)."""

    dtype: str
    strides: tuple[int, ...] = ()
    vectorized_dim: int | None = None
    components_per_element: int | None = None


@dataclass(frozen=True)
class ReplayAlgorithm:
    """Polygraphy's Algorithm: one layer's implementation, tactic and I/O formats."""

    implementation: int
    tactic: int
    inputs: tuple[ReplayTensor, ...] = ()
    outputs: tuple[ReplayTensor, ...] = ()


def _expect(obj: Any, cls: str, what: str) -> Mapping:
    if not isinstance(obj, Mapping):
        raise UserError(f"tactic replay: {what} is not an object")
    found = polygraphy_class(obj)
    if found is not None and found != cls:
        raise UserError(f"tactic replay: {what} is a {found}, expected {cls}")
    return obj


def parse_tactic_replay(obj: str | bytes | Mapping) -> dict[str, ReplayAlgorithm]:
    """Decode a Polygraphy tactic replay file (``{"replay": {layer: Algorithm}}``) into
    ``{layer: ReplayAlgorithm}``, keeping file order. No tensorrt needed: ``"DataType.FLOAT"`` is
    kept as the name ``FLOAT``. Raises UserError on a malformed file."""
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except ValueError as exc:
            raise UserError(f"tactic replay: not JSON ({exc})") from None
    top = _expect(obj, "TacticReplayData", "the file")
    replay = top.get("replay")
    if not isinstance(replay, Mapping):
        raise UserError("tactic replay: no 'replay' object", hint="is this a Polygraphy --save-tactics file?")
    out = {}
    for layer, algo in replay.items():
        a = _expect(algo, "Algorithm", f"layer {layer!r}")
        try:
            out[str(layer)] = ReplayAlgorithm(
                int(a["implementation"]), int(a["tactic"]),
                tuple(_replay_tensor(t, f"layer {layer!r} input") for t in a.get("inputs") or ()),
                tuple(_replay_tensor(t, f"layer {layer!r} output") for t in a.get("outputs") or ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"tactic replay: layer {layer!r} is malformed ({exc!r})") from None
    return out


def _replay_tensor(obj: Any, what: str) -> ReplayTensor:
    t = _expect(obj, "TensorInfo", what)
    dtype = str(t["dtype"]).rpartition(".")[2]
    vd, cpe = t.get("vectorized_dim"), t.get("components_per_element")
    return ReplayTensor(dtype, tuple(int(s) for s in t.get("strides") or ()),
                        None if vd is None else int(vd), None if cpe is None else int(cpe))


def tactic_replay_to_json(replay: Mapping[str, ReplayAlgorithm]) -> dict[str, Any]:
    """The JSON object Polygraphy writes for ``replay`` (pass it to ``json.dump``); class markers on
    every nested object, as Polygraphy's encoder adds them."""
    def tensor(t: ReplayTensor) -> dict[str, Any]:
        return {"dtype": f"DataType.{t.dtype}", "strides": list(t.strides), "vectorized_dim": t.vectorized_dim,
                "components_per_element": t.components_per_element, TYPE_KEY: "TensorInfo"}

    return {"replay": {name: {"implementation": a.implementation, "tactic": a.tactic,
                              "inputs": [tensor(t) for t in a.inputs],
                              "outputs": [tensor(t) for t in a.outputs], TYPE_KEY: "Algorithm"}
                       for name, a in replay.items()},
            TYPE_KEY: "TacticReplayData"}
