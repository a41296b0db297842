"""bisector: find where an ONNX or TensorRT model goes wrong."""


def main() -> None:
    raise SystemExit("bisector: CLI not built yet")
