"""Print, as JSON, what a check command sees: argv, cwd, BISECTOR_* and a few other variables."""

import json
import os
import sys

keys = [k for k in os.environ if k.startswith("BISECTOR_")] + ["CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED"]
print(json.dumps({
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "env": {k: os.environ.get(k) for k in keys},
    "stdin": sys.stdin.read(),
}))
