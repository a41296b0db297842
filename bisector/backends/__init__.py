"""Backends run a model: onnxruntime (CPU, CUDA, TensorRT EP), the ONNX reference evaluator, and
TensorRT (optional). Heavy modules are imported on first use, never at package import."""
