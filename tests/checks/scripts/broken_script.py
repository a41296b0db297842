"""A check script that fails at import time."""

raise ImportError("no module named 'tensorrt_llm'")
