"""TensorRT text formats, parsed without the tensorrt module (so they are tested here).

Four formats, each with where its shape comes from:

- Engine inspector output (``IEngineInspector.get_engine_information`` / ``get_layer_information``
  with ``LayerInformationFormat.JSON``; also ``trtexec --exportLayerInfo``): the developer guide's
  "Engine Inspector" example, NVIDIA's trt-engine-explorer, and Polygraphy 0.53.6's 10.x/11.x
  handling. 10.x lists I/O names under ``Bindings`` and gives each tensor ``Format/Datatype``;
  11.x has ``I/O Tensors`` (objects with ``Name``) and separate ``Datatype`` / ``Format``.
  Layers built with ``ProfilingVerbosity.LAYER_NAMES_ONLY`` are bare strings; a
  ``LayerInformationFormat.ONELINE`` layer (``Name: x, LayerType: gemm, ..., TacticName: k``) is
  parsed too.
- The VERBOSE build log's autotuning lines, which map a network op to its timing-cache key and
  chosen tactic (the only place that mapping exists), as read by NVIDIA's
  sampleEditableTimingCache. Not a stable interface: every assumption is a named regex below.
- Polygraphy's ``TacticReplayData`` JSON (``--save-tactics``), decoded without tensorrt.
- trtexec's ``--layerPrecisions`` / ``--layerOutputTypes`` values.

Example::

    layers = parse_layer_information(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    records = parse_autotune_log(Path("build.log").read_text().splitlines())
    layer_precisions_arg({"*": "fp16", "/head/MatMul": "fp32"})  # '--layerPrecisions=*:fp16,/head/MatMul:fp32'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bisector.data import TYPE_KEY, polygraphy_class
from bisector.errors import UserError

# ---------------------------------------------------------------- build-log regexes
# Any run of bracketed tokens a logger puts first: "[12/01/2025-10:00:00] [V] [TRT] ".
RE_LOG_PREFIX = re.compile(r"^\s*(?:\[[^\]]*\]\s*)*")
# "Autotuning op matMul1(key: 0x1814870c44ff0f8574df6e3dda04cbd7):"
RE_AUTOTUNE_OP = re.compile(r"Autotuning op (?P<op>.*?)\(key: (?P<key>0x[0-9a-fA-F]{32})\)")
# "tactic_id, cost(in ms), cost/fastest_cost, prediction_correlation, kernel_name, tactic_hash, tunable_parameter"
RE_TACTIC_HEADER = re.compile(r"tactic_id\s*,\s*cost\(in ms\)")
# "   3, 0.0112640, 1.00000, 0.50673, sm80_xmma_gemm_..._tensor16x8x8, 0x665ded9abbf88,"
RE_TACTIC_ROW = re.compile(r"^\s*\d+\s*,\s*[-+0-9.eE]+\s*,")
# "The selected tactic is (tactic hash, cost(in ms)):0x665ded9abbf88,  0.011264"
RE_SELECTED = re.compile(r"\(tactic hash, cost\(in ms\)\):\s*(?P<hash>0x[0-9a-fA-F]+)"
                         r"(?:\s*,\s*(?P<cost>[-+0-9.eE]+|nan|inf))?", re.I)
# "Writing the best tactic (0x665ded9abbf88) to cache" (a fallback when the line above is missing)
RE_WRITING_BEST = re.compile(r"Writing the best tactic \((?P<hash>0x[0-9a-fA-F]+)\) to cache")
# Column names in the header; rows are read by these positions (the sample's order by default).
DEFAULT_COLUMNS = ("tactic_id", "cost(in ms)", "cost/fastest_cost", "prediction_correlation",
                   "kernel_name", "tactic_hash", "tunable_parameter")
RE_TIMING_KEY = re.compile(r"^0x[0-9a-fA-F]{32}$")  # ITimingCache key text: "0x" + 32 hex

# ---------------------------------------------------------------- inspector regexes
# ONELINE layer: "Name: matMul1_myl0_0, LayerType: gemm, Inputs: [ { Name: input, ... } ], ...,
# TacticName: sm80_xmma_gemm_..., StreamId: 0, Metadata:"
RE_ONELINE_NAME = re.compile(r"^\s*Name: (?P<v>.*?)(?:, LayerType: |,|$)")
RE_ONELINE_FIELD = {key: re.compile(rf"(?:^|, ){key}: (?P<v>[^,\[{{]*)")
                    for key in ("LayerType", "TacticName", "TacticValue")}
RE_ONELINE_METADATA = re.compile(r"(?:^|, )Metadata: (?P<v>.*)$")  # the rest of the line
RE_ONELINE_OUTPUTS_END = re.compile(r"\}\s*\]")  # "... Format/Datatype: Float }], TacticName: ..."
RE_ONELINE_TENSOR = re.compile(r"\{(?P<body>[^{}]*)\}")
RE_ONELINE_TENSOR_FIELD = re.compile(r"(?P<k>Name|Dimensions|Format/Datatype|Datatype|Format): "
                                     r"(?P<v>\[[^\]]*\]|[^,]*)")
# "Metadata": "[ONNX Layer: /conv1/Conv]\x1e[ONNX Layer: /relu1/Relu]"
RE_ONNX_LAYER = re.compile(r"\[ONNX Layer: (?P<name>[^\]]+)\]")

# Datatype spellings seen in inspector JSON and Polygraphy's DataType names -> bisector names.
# Longest first, matched as whole words, so "BFloat16" never reads as "Float".
DTYPE_WORDS = (
    ("bfloat16", "bf16"), ("bf16", "bf16"), ("float8e4m3", "fp8"), ("fp8", "fp8"), ("fp4", "fp4"),
    ("float4", "fp4"), ("half", "fp16"), ("fp16", "fp16"), ("float16", "fp16"), ("float", "fp32"),
    ("fp32", "fp32"), ("float32", "fp32"), ("double", "fp64"), ("int64", "int64"), ("int32", "int32"),
    ("int8", "int8"), ("uint8", "uint8"), ("int4", "int4"), ("bool", "bool"),
)

TRTEXEC_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "int32", "int64", "bool", "uint8", "int4")
PRECISION_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16",
                     "bfloat16": "bf16"}


@dataclass(frozen=True)
class TensorDesc:
    """One layer input or output. ``datatype`` is normalized (fp32, fp16, bf16, int8, ...)."""

    name: str
    dims: tuple[int, ...] | None = None
    datatype: str | None = None
    format: str | None = None


@dataclass(frozen=True)
class LayerInfo:
    """One engine layer. ``tactic`` is ``tactic_value`` (hex text), or ``tactic_name`` when the layer
    has no (or a zero) TacticValue, as Myelin layers do; None under LAYER_NAMES_ONLY. ``precision``
    is a ``Precision`` key if given, else the first output's datatype. ``onnx_nodes`` come from
    ``Metadata`` ("[ONNX Layer: name]")."""

    name: str
    tactic: str | None = None
    tactic_name: str | None = None
    tactic_value: str | None = None
    layer_type: str | None = None
    precision: str | None = None
    inputs: tuple[TensorDesc, ...] = ()
    outputs: tuple[TensorDesc, ...] = ()
    onnx_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineInfo:
    layers: list[LayerInfo]
    io_tensors: list[str]


@dataclass(frozen=True)
class TacticCandidate:
    tactic_hash: str
    kernel: str | None = None
    cost_ms: float | None = None


@dataclass(frozen=True)
class AutotuneRecord:
    """One ``Autotuning op`` block. ``selected``/``cost_ms`` are None when the log ends (or moves on)
    before the selection line. An op can be tuned several times (formats): one record each."""

    op: str
    key: str
    selected: str | None = None
    cost_ms: float | None = None
    tactics: tuple[TacticCandidate, ...] = ()


# ---------------------------------------------------------------- inspector output
def normalize_dtype(text: str | None) -> str | None:
    """``"Row major linear FP32"``, ``"Half"``, ``"DataType.BF16"`` -> fp32, fp16, bf16; else None."""
    if not text:
        return None
    low = text.lower()
    for word, name in DTYPE_WORDS:
        if re.search(rf"(?<![a-z0-9]){word}(?![a-z0-9])", low):
            return name
    return None


def parse_engine_information(obj: str | bytes | Mapping | Sequence) -> EngineInfo:
    """Parse inspector output: engine JSON (text or object), one layer's JSON, a list of layers,
    or ONELINE text (one layer a line). Unknown keys are ignored."""
    if isinstance(obj, bytes):
        obj = obj.decode("utf-8", errors="replace")
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except ValueError:
            lines = [line for line in obj.splitlines() if line.strip()]
            return EngineInfo([_layer_from_text(line) for line in lines], [])
    io: list[str] = []
    if isinstance(obj, Mapping) and ("Layers" in obj or "Bindings" in obj or "I/O Tensors" in obj):
        raw_layers = obj.get("Layers") or []
        for entry in obj.get("Bindings") or obj.get("I/O Tensors") or []:
            name = entry.get("Name") if isinstance(entry, Mapping) else entry
            if isinstance(name, str):
                io.append(name)
    elif isinstance(obj, Mapping) or isinstance(obj, str):
        raw_layers = [obj]
    elif isinstance(obj, Sequence):
        raw_layers = list(obj)
    else:
        raise UserError(f"not TensorRT layer information: a {type(obj).__name__}")
    layers = []
    for raw in raw_layers:
        if isinstance(raw, Mapping):
            layers.append(_layer_from_dict(raw))
        elif isinstance(raw, str):
            layers.append(_layer_from_text(raw))
    return EngineInfo(layers, io)


def parse_layer_information(obj: str | bytes | Mapping | Sequence) -> list[LayerInfo]:
    """The layers of :func:`parse_engine_information`."""
    return parse_engine_information(obj).layers


def _hex_tactic(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return hex(value & (2**64 - 1))
    text = str(value).strip().lower()
    return text or None


def _layer(name: str, tactic_name: str | None, tactic_value: str | None, layer_type: str | None,
           precision: str | None, inputs: list[TensorDesc], outputs: list[TensorDesc],
           metadata: str | None) -> LayerInfo:
    zero = tactic_value is None or re.fullmatch(r"0x0*|-?0", tactic_value) is not None
    tactic = tactic_name if (zero and tactic_name) else tactic_value
    if precision is None and outputs:
        precision = outputs[0].datatype
    onnx = tuple(m["name"].strip() for m in RE_ONNX_LAYER.finditer(metadata or ""))
    return LayerInfo(name, tactic, tactic_name, tactic_value, layer_type, precision,
                     tuple(inputs), tuple(outputs), onnx)


def _layer_from_dict(raw: Mapping) -> LayerInfo:
    def text(key: str) -> str | None:
        v = raw.get(key)
        return str(v) if v is not None and not isinstance(v, (dict, list)) else None

    return _layer(text("Name") or "", text("TacticName"), _hex_tactic(raw.get("TacticValue")),
                  text("LayerType"), normalize_dtype(text("Precision")),
                  _tensors(raw.get("Inputs")), _tensors(raw.get("Outputs")), text("Metadata"))


def _tensors(raw: Any) -> list[TensorDesc]:
    if not isinstance(raw, list):
        return []
    out = []
    for t in raw:
        if isinstance(t, str):
            out.append(TensorDesc(t))
        elif isinstance(t, Mapping):
            dt = t.get("Format/Datatype") or t.get("Datatype") or t.get("DataType")
            fmt = t.get("Format") if "Format/Datatype" not in t else t.get("Format/Datatype")
            out.append(TensorDesc(str(t.get("Name", "")), _dims(t.get("Dimensions")),
                                  normalize_dtype(str(dt)) if dt else None,
                                  str(fmt) if fmt else None))
    return out


def _dims(raw: Any) -> tuple[int, ...] | None:
    if isinstance(raw, str):
        raw = [p for p in raw.strip("[] ").split(",") if p.strip()]
    if not isinstance(raw, list):
        return None
    try:
        return tuple(int(d) for d in raw)
    except (TypeError, ValueError):
        return None


def _layer_from_text(text: str) -> LayerInfo:
    """A LAYER_NAMES_ONLY name, or an ONELINE description."""
    if not text.lstrip().startswith("Name: "):
        return LayerInfo(text)

    def field(key: str) -> str | None:
        m = RE_ONELINE_FIELD[key].search(text)
        return m["v"].strip() or None if m else None

    head, _, tail = text.partition("Outputs: [")
    inputs = _oneline_tensors(head.partition("Inputs: [")[2])
    outputs = _oneline_tensors(RE_ONELINE_OUTPUTS_END.split(tail, 1)[0] + "}")
    m, meta = RE_ONELINE_NAME.search(text), RE_ONELINE_METADATA.search(text)
    return _layer(m["v"].strip() if m else text, field("TacticName"), _hex_tactic(field("TacticValue")),
                  field("LayerType"), None, inputs, outputs, meta["v"] if meta else None)


def _oneline_tensors(section: str) -> list[TensorDesc]:
    out = []
    for m in RE_ONELINE_TENSOR.finditer(section):
        kv = {f["k"]: f["v"].strip() for f in RE_ONELINE_TENSOR_FIELD.finditer(m["body"])}
        dt = kv.get("Format/Datatype") or kv.get("Datatype")
        out.append(TensorDesc(kv.get("Name", ""), _dims(kv.get("Dimensions")), normalize_dtype(dt),
                              kv.get("Format/Datatype") or kv.get("Format")))
    return out


def op_layers(records: Iterable[AutotuneRecord], layers: Iterable[LayerInfo]) -> dict[str, list[str]]:
    """Engine layers named after each tuned op, by prefix (``matMul1`` -> ``matMul1_myl0_0``), the
    rule sampleEditableTimingCache uses. A heuristic: fused layers may carry another op's name."""
    names = [layer.name for layer in layers]
    return {r.op: [n for n in names if n.startswith(r.op)] for r in records}


# ---------------------------------------------------------------- VERBOSE build log
def parse_autotune_log(lines: Iterable[str] | str) -> list[AutotuneRecord]:
    """Autotuning records in log order. Lines may carry logger prefixes and may be interleaved with
    other output; a table row is only read between a header and the selection line."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    records: list[AutotuneRecord] = []
    cur: dict[str, Any] | None = None
    columns: tuple[str, ...] | None = None

    def flush(selected: str | None = None, cost: float | None = None) -> None:
        nonlocal cur, columns
        if cur is not None:
            records.append(AutotuneRecord(cur["op"], cur["key"], selected, cost, tuple(cur["tactics"])))
        cur, columns = None, None

    for raw in lines:
        for line in str(raw).splitlines():
            body = RE_LOG_PREFIX.sub("", line, count=1)
            if m := RE_AUTOTUNE_OP.search(body):
                flush()
                cur = {"op": m["op"].strip(), "key": m["key"].lower(), "tactics": []}
            elif cur is None:
                continue
            elif RE_TACTIC_HEADER.search(body):
                columns = tuple(c.strip() for c in body.split(","))
            elif columns is not None and RE_TACTIC_ROW.match(body):
                cand = _tactic_row(body, columns)
                if cand:
                    cur["tactics"].append(cand)
            elif m := RE_SELECTED.search(body):
                flush(m["hash"].lower(), _float(m["cost"]))
            elif m := RE_WRITING_BEST.search(body):
                flush(m["hash"].lower(), None)
    flush()
    return records


def _tactic_row(body: str, columns: tuple[str, ...]) -> TacticCandidate | None:
    cells = [c.strip() for c in body.split(",")]
    col = {name: i for i, name in enumerate(columns)}
    dflt = {name: i for i, name in enumerate(DEFAULT_COLUMNS)}

    def cell(name: str) -> str | None:
        i = col.get(name, dflt[name])
        return cells[i] if i < len(cells) and cells[i] else None

    h = cell("tactic_hash")
    if not h or not re.fullmatch(r"0x[0-9a-fA-F]+", h):
        return None
    return TacticCandidate(h.lower(), cell("kernel_name"), _float(cell("cost(in ms)")))


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def is_timing_key(text: str) -> bool:
    return bool(RE_TIMING_KEY.match(text))


# ---------------------------------------------------------------- Polygraphy TacticReplayData
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


# ---------------------------------------------------------------- trtexec precision flags
def layer_precisions_arg(mapping: Mapping[str, str | Sequence[str]], flag: str = "--layerPrecisions") -> str:
    """One argv element for trtexec: ``--layerPrecisions=*:fp16,name:fp32``.

    Grammar (trtexec --help, TensorRT samples/common/sampleOptions.cpp): ``spec ::= layerName":"
    precision[","spec]``, read left to right with later entries winning, ``*`` the default for
    unlisted layers. trtexec splits the value at every ``,`` first (no escape exists). Then, in
    10.x, a pair holding single quotes must hold exactly two, and the name is what they enclose
    (``'a:b':fp32``); without quotes, and in 8.x, the name is everything before the *last* ``:``,
    with single quotes removed. So a name holding ``:`` is written in single quotes, which both
    readings take as the same name; a name holding ``,`` or ``'`` (or an empty name) cannot be
    expressed: ValueError naming it. Precisions: fp32 fp16 bf16 int8 fp8 int32 int64 bool uint8
    int4. For ``flag="--layerOutputTypes"`` a value may be a list, one type per output, joined by
    ``+``. Both need ``--precisionConstraints=obey|prefer`` and a weakly typed build (TensorRT <=
    10.x). ``*`` is written first so explicit names override it. The result is one argv element:
    quote it for a shell (``shlex.quote``), since names may hold spaces or ``"``.

    >>> layer_precisions_arg({"/enc/MatMul:0": "fp32", "*": "fp16"})
    "--layerPrecisions=*:fp16,'/enc/MatMul:0':fp32"
    """
    if flag not in ("--layerPrecisions", "--layerOutputTypes"):
        raise ValueError(f"unknown trtexec flag {flag!r}")
    items = sorted(mapping.items(), key=lambda kv: kv[0] != "*")
    parts = []
    for name, value in items:
        if not name or "," in name or "'" in name:
            why = "an empty name" if not name else "trtexec splits at every ',' and reads ' as a quote"
            raise ValueError(f"trtexec {flag} cannot name layer {name!r} ({why}); set its precision through "
                             "the TensorRT Python API instead")
        values = [value] if isinstance(value, str) else list(value)
        if flag == "--layerPrecisions" and len(values) != 1:
            raise ValueError(f"--layerPrecisions takes one precision per layer, got {value!r} for {name!r}")
        try:
            types = "+".join(_trtexec_precision(v) for v in values)
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from None
        parts.append(f"'{name}':{types}" if ":" in name else f"{name}:{types}")
    return f"{flag}={','.join(parts)}"


def parse_layer_precisions_arg(text: str) -> dict[str, str]:
    """The inverse of :func:`layer_precisions_arg`, read as trtexec 10.x reads it (value or whole
    arg): split at ``,``; a pair with two single quotes names what they enclose, else the name is
    everything before the last ``:``."""
    if text.startswith("--"):
        text = text.partition("=")[2]
    out: dict[str, str] = {}
    for part in text.split(","):
        quoted = part.split("'")
        if len(quoted) == 3 and quoted[2].startswith(":"):
            out[quoted[0] + quoted[1]] = quoted[2][1:]
            continue
        if len(quoted) != 1:
            raise ValueError(f"layer precision {part!r}: trtexec expects two single quotes or none")
        name, sep, value = part.rpartition(":")
        if not sep:
            raise ValueError(f"no ':' in layer precision {part!r}")
        out[name] = value
    return out


def _trtexec_precision(value: str) -> str:
    v = PRECISION_ALIASES.get(value.strip().lower(), value.strip().lower())
    if v not in TRTEXEC_PRECISIONS:
        raise ValueError(f"trtexec knows no precision {value!r} (one of {', '.join(TRTEXEC_PRECISIONS)})")
    return v
