"""Pure searches. A strategy proposes candidates and is told verdicts: no files, no clock, no
unseeded randomness, and no onnx/onnxruntime/tensorrt/rich/typer imports (a test scans for them)."""
