"""Time the precision rewrite on a 1,000-node model, against onnxconverter-common.

    .venv/bin/pip install -e '.[bench]'   # onnxconverter-common (without it, only bisector's rows)
    .venv/bin/python bench/precision_rewrite.py [--nodes 1000] [--repeat 5]

A chain of (MatMul 64x64, Add, Relu, Mul) blocks with embedded weights; every 7th MatMul kept in
fp32. Prints the best-of-N wall time of each realization as a markdown table. The target is under
200 ms per rewrite, because a precision search rewrites once per check.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bisector.model.precision import PRECISIONS, REALIZE_MODES, lowerable_nodes, rewrite

TARGET_MS = 200  # the budget for one rewrite (one per check)
INSTALL_HINT = ".venv/bin/pip install -e '.[bench]'"  # onnxconverter-common, for the comparison row


def chain_model(nodes: int = 1000, width: int = 64, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body, inits, prev = [], [numpy_helper.from_array(np.array(0.5, np.float32), "half")], "x"
    for i in range(nodes // 4):
        inits += [numpy_helper.from_array((rng.standard_normal((width, width)) / 8).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        body += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"], name=f"mm{i}"),
                 helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                 helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"),
                 helper.make_node("Mul", [f"r{i}", "half"], [f"o{i}"], name=f"mul{i}")]
        prev = f"o{i}"
    graph = helper.make_graph(body, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    model = chain_model(args.nodes)
    keep = frozenset(f"mm{i}" for i in range(0, args.nodes // 4, 7))
    print(f"{len(model.graph.node)} nodes, {len(lowerable_nodes(model))} lowerable, {len(keep)} kept; "
          f"best of {args.repeat}; target < {TARGET_MS} ms\n")
    print("| rewrite | ms |")
    print("|---|---|")
    for realize in REALIZE_MODES:
        for precision in PRECISIONS:
            ms = best(lambda: rewrite(model, precision, keep, realize), args.repeat)
            print(f"| bisector {precision}/{realize} | {ms:.1f} |")
    try:
        from onnxconverter_common import float16
    except ImportError:
        print(f"| onnxconverter-common | not installed: {INSTALL_HINT} |")
        return
    warnings.simplefilter("ignore")
    ms = best(lambda: float16.convert_float_to_float16(
        model, keep_io_types=True, node_block_list=sorted(keep), min_positive_val=0.0,
        max_finite_val=float("inf")), args.repeat)
    print(f"| onnxconverter-common convert_float_to_float16 (fp16, true) | {ms:.1f} |")

if __name__ == "__main__":
    main()
