"""Write to stdout/stderr in the given order, then exit: emit.py out:TEXT err:TEXT ... exit:N."""

import sys

code = 0
for op in sys.argv[1:]:
    kind, _, text = op.partition(":")
    if kind == "out":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    elif kind == "err":
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    elif kind == "bytes":  # raw bytes given as hex, e.g. bytes:ff00
        sys.stdout.buffer.write(bytes.fromhex(text))
        sys.stdout.flush()
    elif kind == "exit":
        code = int(text)
sys.exit(code)
