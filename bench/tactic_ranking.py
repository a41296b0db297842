"""diff-tactics: does the ranking find a one-way flaky culprit that Polygraphy's set difference loses?

    .venv/bin/python bench/tactic_ranking.py [--seeds 200] [--fail-prob 0.5] [--builders sim fixture]
        [--jobs 2] [--markdown FILE]

A hunt builds until ``MAX_FAILING`` (20) builds have failed. After k failing builds (k in
``CHECKPOINTS``) it asks, per seed: is the culprit first in ``bisector.build.ranking.rank``? Does
Polygraphy's set difference (``set_difference``) still hold it, and how many pairs does it list?
Does the verdict say "sure", and is it then right? The culprit fails ``--fail-prob`` of the times
it is chosen, and nothing else fails (``--noise`` adds failures that follow no tactic).

Two builders:

- ``sim``: builds simulated directly: ``SIM_LAYERS`` layers, each picks one of ``SIM_TACTICS``
  tactics uniformly; the culprit is one tactic of one layer (chosen a third of the time).
- ``fixture``: the real fixture builder (``fixtures/flaky_builder.py``, in process) on the
  transformer fixture, flawed layer ``softmax`` (its ``softmax_naive`` implementation, chosen by
  noisy timing about 40% of the time), each engine checked on onnxruntime by
  ``fixtures/engine_check.check``. The verdicts come from the check, not from the builder.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bisector.build.ranking import is_sure, rank, set_difference  # noqa: E402

CHECKPOINTS = (1, 2, 3, 5, 10, 20)
MAX_FAILING = CHECKPOINTS[-1]
MAX_BUILDS = 5000
SIM_LAYERS, SIM_TACTICS = 30, 3
SIM_CULPRIT = ("layer7", "t2")
FIXTURE_LAYER, FIXTURE_IMPL = "softmax", "softmax_naive"


@dataclass
class Point:
    """What one seed's hunt shows after k failing builds."""

    builds: int
    first: bool
    kept: bool
    listed: int
    sure: bool


def hunt(next_build, culprit: tuple[str, str]) -> dict[int, Point]:
    """Build with ``next_build(i) -> (tactics, failed)`` until MAX_FAILING failures; the points."""
    builds, points, failing = [], {}, 0
    while failing < MAX_FAILING and len(builds) < MAX_BUILDS:
        tactics, failed = next_build(len(builds))
        builds.append((tactics, failed))
        failing += failed
        if failed and failing in CHECKPOINTS:
            suspects, diff = rank(builds), set_difference(builds)
            top = (suspects[0].layer, suspects[0].tactic)
            points[failing] = Point(len(builds), top == culprit, culprit in diff, len(diff), is_sure(suspects))
    return points


def sim_seed(seed: int, fail_prob: float, noise: float) -> dict[int, Point]:
    rng = random.Random(seed)

    def build(_i: int):
        tactics = {f"layer{j}": f"t{rng.randrange(SIM_TACTICS)}" for j in range(SIM_LAYERS)}
        chosen = tactics[SIM_CULPRIT[0]] == SIM_CULPRIT[1]
        return tactics, (chosen and rng.random() < fail_prob) or rng.random() < noise

    return hunt(build, SIM_CULPRIT)


def fixture_seed(seed: int, fail_prob: float, noise: float) -> dict[int, Point]:
    import onnx

    from fixtures import flaky_builder
    from fixtures.engine_check import check
    from fixtures.models import make_transformer

    model, rng = make_transformer(), random.Random(seed)
    flaw = flaky_builder.Flaw(FIXTURE_LAYER, FIXTURE_IMPL, fail_prob)
    culprit = (FIXTURE_LAYER, flaky_builder.tactic_hash("Softmax", FIXTURE_IMPL))
    with tempfile.TemporaryDirectory(prefix="tactic-ranking-") as tmp:
        ref = Path(tmp) / "model.onnx"
        onnx.save(model, ref)

        def build(i: int):
            engine, tactics, _, _ = flaky_builder.build(model, seed * 100_000 + i, flaw=flaw)
            onnx.save(engine, Path(tmp) / "engine.onnx")
            code, line = check(str(Path(tmp) / "engine.onnx"), str(ref))
            if code not in (0, 1):
                raise RuntimeError(line)
            return {layer: t.tactic for layer, t in tactics.items()}, code == 1 or rng.random() < noise

        return hunt(build, culprit)


def summarize(runs: list[dict[int, Point]]) -> list[dict]:
    rows = []
    for k in CHECKPOINTS:
        pts = [r[k] for r in runs if k in r]
        n = len(pts)
        sure = [p for p in pts if p.sure]
        rows.append({"k": k, "seeds": n, "builds": sum(p.builds for p in pts) / n,
                     "first": sum(p.first for p in pts) / n, "kept": sum(p.kept for p in pts) / n,
                     "only": sum(p.kept and p.listed == 1 for p in pts) / n,
                     "listed": sum(p.listed for p in pts) / n, "sure": len(sure) / n,
                     "sure_right": f"{sum(p.first for p in sure) / len(sure):.1%}" if sure else "-"})
    return rows


def table(label: str, rows: list[dict]) -> str:
    out = [f"**{label}**", "",
           "| failing builds | builds (mean) | ranking: culprit first | set difference keeps culprit | "
           "set difference = {culprit} | pairs in set difference (mean) | verdict sure | sure and right |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['k']} | {r['builds']:.1f} | {r['first']:.1%} | {r['kept']:.1%} | {r['only']:.1%} | "
                   f"{r['listed']:.2f} | {r['sure']:.1%} | {r['sure_right']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--fail-prob", type=float, default=0.5)
    p.add_argument("--noise", type=float, default=0.0, help="Chance that a build fails whatever its tactics")
    p.add_argument("--builders", nargs="+", default=["sim", "fixture"], choices=["sim", "fixture"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--markdown", type=Path, help="Also write the tables here")
    args = p.parse_args(argv)
    texts = []
    for builder in args.builders:
        fn = sim_seed if builder == "sim" else fixture_seed
        start = time.perf_counter()
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(fn, range(args.seeds), [args.fail_prob] * args.seeds, [args.noise] * args.seeds))
        label = (f"{builder}: {args.seeds} seeds, culprit fails {args.fail_prob:g} of the times it is chosen, "
                 f"noise {args.noise:g} ({time.perf_counter() - start:.0f} s)")
        texts.append(table(label, summarize(runs)))
        print(texts[-1], "\n", flush=True)
    if args.markdown:
        args.markdown.write_text("\n\n".join(texts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
