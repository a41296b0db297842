"""The ONNX model toolkit: load/save with external data, shapes, folding, cuts, fingerprints,
and the precision rewrite. Protobuf in, protobuf out; no strategy logic here."""
