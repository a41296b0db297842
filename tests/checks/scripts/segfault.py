"""Print a line, then die of SIGSEGV (like a crashing TensorRT build)."""

import os
import signal
import sys

print("about to crash", flush=True)
os.kill(os.getpid(), signal.SIGSEGV)
sys.exit(0)  # not reached
