"""TensorRT text formats, parsed without the tensorrt module (so they are tested here).

Two formats, each with where its shape comes from:

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

Polygraphy's tactic replay JSON is read in ``trt_replay``, trtexec's ``--layerPrecisions`` /
``--layerOutputTypes`` values are written in ``trtexec_args``; neither needs tensorrt either.

Example::

    layers = parse_layer_information(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    records = parse_autotune_log(Path("build.log").read_text().splitlines())
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
