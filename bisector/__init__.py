"""bisector: find where an ONNX or TensorRT model goes wrong."""

__version__ = "0.1.0"
