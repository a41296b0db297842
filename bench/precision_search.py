"""Checks needed by ``bisector precision`` per search mode and order, and the rewrite time per check.

    .venv/bin/python bench/precision_search.py [--repeat 5] [--no-accumulated]

Runs the real engine with the in-process compare check (onnxruntime CPU, fp16 emulated, atol =
rtol = 1e-2) on the fp16 overflow fixtures (k = 1, 2, 3 known culprits, each with its compensator:
the 1-minimal keep-set has 2k nodes) and on the accumulated-error fixture, in every mode:
``auto`` with ``--order sensitivity`` and ``--order topo``, and Polygraphy's ``bisect``/``linear``
in both directions. Checks include the 2 endpoint checks. The budget is the issue's
``2k * ceil(log2 N) + 1`` (+ 2 endpoints), k = the fixture's culprits.

A second table lists what each ``auto`` keep-set holds and whether it is exactly the overflow
fixture's culprits plus compensators.

Then the time of one candidate's rewrite on ``fixtures.models.make_wide(1000)`` (1,000 nodes, a
random tenth kept in fp32), best of ``--repeat``: the target is under 200 ms.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import onnx

from bisector.artifacts.session import Session
from bisector.backends.target import Target
from bisector.checks.compare import CompareCheck
from bisector.commands.precision import PrecisionOptions, setup
from bisector.compare.config import CompareConfig
from bisector.engine import Engine
from bisector.model.precision import lowerable_nodes, rewrite
from bisector.strategies.base import ceil_log2
from fixtures import fixture_path
from fixtures.models import FP16_OVERFLOW_COMPENSATORS, FP16_OVERFLOW_CULPRITS, make_wide

RUNS = [  # (label, mode, direction, order)
    ("auto, sensitivity", "auto", "forward", "sensitivity"),
    ("auto, topo", "auto", "forward", "topo"),
    ("bisect forward", "bisect", "forward", "topo"),
    ("bisect reverse", "bisect", "reverse", "topo"),
    ("linear forward", "linear", "forward", "topo"),
    ("linear reverse", "linear", "reverse", "topo"),
]
TOLERANCE = ["1e-2"]


def search(model: Path, mode: str, direction: str, order: str) -> tuple[int, list[str], bool | None, int, float]:
    """(checks, keep-set node names, 1-minimal, lowerable N, seconds) of one session."""
    opts = PrecisionOptions(model=model, precision="fp16", mode=mode, direction=direction, order=order,
                            realize="emulate", write_inputs=False)
    check = CompareCheck(Target("cpu"), CompareConfig.from_flags(atol=TOLERANCE, rtol=TOLERANCE))
    with tempfile.TemporaryDirectory(prefix="bisector-bench-") as tmp:
        session = Session.open(Path(tmp) / "s", command=["bench"], strategy="precision", params=opts.params(),
                               model=None)
        start = time.perf_counter()
        st = setup(opts, session.root)
        out = Engine(st.strategy, st.materializer, check, session).run()
        seconds = time.perf_counter() - start
    r = out.result
    keep = [st.materializer.names[i] for i in sorted(int(i) for i in r["keep"])]  # topological
    return out.stats.checks, keep, r["one_minimal"], r["lowerable"], seconds


def search_table(cases: list[tuple[str, int | None]]) -> dict[tuple[str, str], list[str]]:
    """Prints the checks table; returns the keep-set of every auto run by (fixture, label)."""
    print("| fixture | N | k | budget 2k⌈log2 N⌉+1 (+2 endpoints) | "
          + " | ".join(label for label, *_ in RUNS) + " |")
    print("|---|---|---|---|" + "---|" * len(RUNS))
    keeps = {}
    for name, k in cases:
        cells, n = [], 0
        for label, mode, direction, order in RUNS:
            checks, keep, minimal, n, _ = search(fixture_path(name), mode, direction, order)
            mark = "" if minimal is None else (" (1-min)" if minimal else " (not 1-min)")
            cells.append(f"{checks} checks, keep {len(keep)}{mark}")
            if mode == "auto":
                keeps[name, label] = keep
        budget = f"{2 * k * ceil_log2(n) + 1} (+2 = {2 * k * ceil_log2(n) + 3})" if k else "-"
        print(f"| {name} | {n} | {k or '-'} | {budget} | " + " | ".join(cells) + " |")
    return keeps


def keep_table(keeps: dict[tuple[str, str], list[str]]) -> None:
    """What the auto keep-sets hold, against the overflow fixtures' culprits and compensators."""
    print("\n| fixture | order | keep-set | = culprits + compensators |")
    print("|---|---|---|---|")
    for (name, label), keep in keeps.items():
        k = int(name.rpartition("_")[2]) if name.startswith("fp16_overflow_") else None
        known = "-" if k is None else \
            ("yes" if set(keep) == set(FP16_OVERFLOW_CULPRITS[k] + FP16_OVERFLOW_COMPENSATORS[k]) else "no")
        shown = ", ".join(keep) if len(keep) <= 8 else f"{', '.join(keep[:6])}, ... ({len(keep)} nodes)"
        print(f"| {name} | {label.partition(', ')[2]} | {shown} | {known} |")


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


def rewrite_table(repeat: int) -> None:
    model = make_wide(1000)
    names = lowerable_nodes(model)
    keep = frozenset(random.Random(0).sample(names, len(names) // 10))
    print(f"\nmake_wide(1000): {len(model.graph.node)} nodes, {len(names)} lowerable, {len(keep)} kept; "
          f"best of {repeat}\n")
    print("| step | ms |")
    print("|---|---|")
    for realize in ("emulate", "true"):
        ms = best_ms(lambda realize=realize: rewrite(model, "fp16", keep, realize), repeat)
        print(f"| rewrite fp16 {realize} | {ms:.1f} |")
    with tempfile.TemporaryDirectory() as tmp:
        def write():
            onnx.save(rewrite(model, "fp16", keep, "emulate"), str(Path(tmp) / "polygraphy_debug.onnx"))

        print(f"| rewrite + save (one candidate, emulate) | {best_ms(write, repeat):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-accumulated", action="store_true", help="skip the accumulated-error fixture")
    args = ap.parse_args()
    cases = [("fp16_overflow_1", 1), ("fp16_overflow_2", 2), ("fp16_overflow_3", 3)]
    if not args.no_accumulated:
        cases.append(("accumulated_error", None))
    keep_table(search_table(cases))
    rewrite_table(args.repeat)


if __name__ == "__main__":
    main()
