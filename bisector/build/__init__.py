"""What a build hunt stands on, without tensorrt, onnx or the CLI.

- ``tactics``: per-layer tactics files, bisector's own JSON and Polygraphy's TacticReplayData.
- ``ranking``: which (layer, tactic) pairs go with failing builds (a one-sided Fisher exact test
  and the Ochiai score), Polygraphy's set difference, and a plain-words verdict.

Importing this package imports nothing heavy.
"""
