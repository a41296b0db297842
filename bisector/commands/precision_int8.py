"""``bisector precision --precision int8``: QDQ models of keep-sets.

onnxruntime's QDQ ``quantize_static`` with ``nodes_to_exclude`` = the keep-set, calibrated once per
session (MinMax over the input samples, symmetric, as TensorRT wants; later candidates reuse the
calibration cache). Then the Q/DQ pairs that still fed a kept node's activations are bypassed, so
a kept node reads fp32 (``bypass_input_qdq``). ``quantized_nodes`` lists what int8 runs: the
search space.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import onnx

from bisector.errors import UserError
from bisector.model import io as mio
from bisector.model.prepare import Prepared

# Past this many bytes of weights, quantize_static writes external data.
EXTERNAL_DATA_ABOVE_BYTES = 1 << 30

class _Samples:
    """onnxruntime's CalibrationDataReader protocol over our input samples."""

    def __init__(self, samples):
        self.it = iter(samples)

    def get_next(self):
        return next(self.it, None)


class _QuantizerLogOnce(logging.Filter):
    """onnxruntime.quantization logs through the root logger on every call: say each thing once,
    and not its advice to pre-process (shape inference is done; the model is already prepared)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname or "quantization" not in record.pathname:
            return True
        text = record.getMessage()
        if "pre-processing before quantization" in text or text in self.seen:
            return False
        self.seen.add(text)
        return True


_LOG_FILTER = _QuantizerLogOnce()


class Int8Quantizer:
    """QDQ models of keep-sets; calibration runs once (``root/calibration.json``) and is reused."""

    def __init__(self, prepared: Prepared, samples, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.src = self.root / "fp32.onnx"
        if not self.src.exists():
            tmp = mio.save_standalone(prepared.model, self.root / "fp32.partial.onnx", prepared.weights_dir)
            os.replace(tmp, self.src)
        self.cache = self.root / "calibration.json"
        self.samples = samples
        self.big = mio.external_bytes(prepared.model) > EXTERNAL_DATA_ABOVE_BYTES
        self.lock = threading.Lock()
        if _LOG_FILTER not in logging.getLogger().filters:
            logging.getLogger().addFilter(_LOG_FILTER)

    def quantize(self, keep: frozenset[str], path: Path) -> onnx.ModelProto:
        try:
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        except ImportError:
            raise UserError("`precision` int8 needs onnxruntime's quantization tools",
                            hint="pip install onnxruntime") from None
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with self.lock:  # the first call calibrates and writes the cache
            quantize_static(str(self.src), str(path), None if self.cache.exists() else _Samples(self.samples),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=sorted(keep),
                            use_external_data_format=self.big, calibration_cache_path=str(self.cache),
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        model = onnx.load(str(path))
        bypass_input_qdq(model, keep)
        onnx.save(mio.normalize_ir(model), str(path))
        return model


def bypass_input_qdq(model: onnx.ModelProto, keep) -> int:
    """Kept nodes read the fp32 tensor instead of its ``Q -> DQ`` copy; dead Q/DQ nodes go."""
    g = model.graph
    prod = {t: n for n in g.node for t in n.output}
    bypassed = 0
    for n in g.node:
        if n.name not in keep:
            continue
        for k, x in enumerate(n.input):
            dq = prod.get(x)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]
                bypassed += 1
    while True:
        read = {t for n in g.node for t in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            return bypassed
        for n in dead:
            g.node.remove(n)


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes of a QDQ model that read a DequantizeLinear output (what int8 runs)."""
    prod = {t: n.op_type for n in model.graph.node for t in n.output}
    return [n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(prod.get(t) == "DequantizeLinear" for t in n.input)]
