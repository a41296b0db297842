"""``bisector precision`` on a real GPU (fp16 kernels through PyTorch) against its CPU emulation.

    PYTHONPATH=. python bench/gpu_precision.py --out /tmp/gpu_precision            # on a machine with CUDA
    PYTHONPATH=. python bench/gpu_precision.py --out /tmp/gpu_precision --device cpu   # dry run, no GPU

Needs torch and onnx2torch besides bisector's own packages. For each case (a model with a planted
fp16 overflow, below) it

1. writes the model and one input sample (seed 1, Polygraphy's default loader) under ``--out``;
2. runs ``bisector precision MODEL --precision fp16 --realize emulate --compare`` (onnxruntime CPU,
   fp16 emulated: the search's default on a CPU);
3. runs ``bisector precision MODEL --precision fp16 --realize true --check python bench/gpu_check.py
   {artifact} --inputs {inputs} --reference-model MODEL ...``: every candidate is the true
   mixed-precision model, run with real fp16 kernels on ``--device``;
4. for each answer (the two keep-sets, and the planted one), judges the all-fp16 model, the keep-set,
   and the keep-set minus each node both ways, in this process: emulated on onnxruntime CPU, and true
   on the device (``gpu_check.run_candidate``, the check's own code);
5. prints the tables (markdown) and writes them and everything measured to ``--out``
   (``gpu_precision.md``, ``gpu_precision.json``; each search's session under ``sessions/``).

Both searches and all verdicts use the same inputs, the same fp32 reference (onnxruntime CPU) and
the same rule (bisector's comparator, elementwise atol/rtol per case, non-finite fails).

The cases (``CASES``): ``fp16_overflow_1`` and ``fp16_overflow_3`` (``fixtures.models``: MatMul
weights scaled by 2^16, cancelled by a Mul by 2^-16); ``squeezenet_island`` and
``inception_v2_islands``: light architectures (``fixtures.light``) with one and two overflow islands
``Mul(2^20) -> Identity -> Mul(2^-20)`` on a ReLU output; ``resnet50_conv_bn``: a Conv whose weights
are scaled by 2^16 and the BatchNormalization after it, whose mean and variance absorb it (mean
x 2^16, variance x 2^32). In fp32 each is the clean model up to rounding; in fp16 each overflows.
``accumulated_error`` (``fixtures.models``) has no overflow: 64 Adds whose increments fp16 rounds
away, so the answer depends on rounding alone (a contiguous run of Adds).
The light models' tolerance is wider: with random weights their logits carry fp16 noise of
0.004 (squeezenet), 0.1 (inception_v2) and 0.3 (resnet50) even with nothing planted.

Each device check is a fresh process (7 to 12 s on an H100, nearly all of it importing torch and
onnx2torch and starting CUDA): the five overflow cases took 9 min, ``accumulated_error`` (51
checks) 4 min with ``--jobs 4``, which runs the device search's checks 4 at a time (speculative:
the same answer, a few more checks). Results: ``docs/benchmarks.md``, "precision on a real GPU".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "bench")):
    if _p not in sys.path:
        sys.path.append(_p)  # after PYTHONPATH: a bisector named there comes first

ISLAND_LOG2 = 20  # |x| > 2^-4 overflows fp16 (65504) once multiplied by 2^20
CONV_BN_LOG2 = 16


# ---------------------------------------------------------------- planted faults
def _producer_index(graph: onnx.GraphProto) -> dict[str, int]:
    return {o: i for i, n in enumerate(graph.node) for o in n.output}


def _rewire(graph: onnx.GraphProto, old: str, new: str, skip: set[int]) -> None:
    for i, node in enumerate(graph.node):
        if i in skip:
            continue
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
    for out in graph.output:
        if out.name == old:
            out.name = new


def add_island(model: onnx.ModelProto, tensor: str, tag: str, log2: int = ISLAND_LOG2) -> list[str]:
    """Insert ``<tag>_up = Mul(tensor, 2^log2) -> <tag>_id = Identity -> <tag>_down = Mul(., 2^-log2)``
    after ``tensor``'s producer; every reader of ``tensor`` reads ``<tag>_down``'s output instead.
    Exact in fp32 (powers of two); in fp16 ``<tag>_up`` overflows where |x| > 65504 / 2^log2.
    Returns the three node names (the island's 1-minimal keep-set: up, id, down)."""
    g = model.graph
    pos = _producer_index(g)[tensor] + 1
    g.initializer.extend([numpy_helper.from_array(np.array(2.0 ** log2, np.float32), f"{tag}_up_factor"),
                          numpy_helper.from_array(np.array(2.0 ** -log2, np.float32), f"{tag}_down_factor")])
    nodes = [helper.make_node("Mul", [tensor, f"{tag}_up_factor"], [f"{tag}_up_out"], name=f"{tag}_up"),
             helper.make_node("Identity", [f"{tag}_up_out"], [f"{tag}_id_out"], name=f"{tag}_id"),
             helper.make_node("Mul", [f"{tag}_id_out", f"{tag}_down_factor"], [f"{tag}_down_out"], name=f"{tag}_down")]
    for k, node in enumerate(nodes):
        g.node.insert(pos + k, node)
    _rewire(g, tensor, f"{tag}_down_out", skip=set(range(pos, pos + 3)))
    return [n.name for n in nodes]


def relu_outputs(model: onnx.ModelProto, fractions: list[float]) -> list[str]:
    """The output of the first Relu at or after each fraction of the node list."""
    nodes = model.graph.node
    out = []
    for f in fractions:
        start = int(len(nodes) * f)
        out.append(next(n.output[0] for n in list(nodes)[start:] if n.op_type == "Relu"))
    return out


def with_islands(model: onnx.ModelProto, fractions: list[float]) -> tuple[onnx.ModelProto, list[str]]:
    names = []
    for k, tensor in enumerate(relu_outputs(model, fractions), 1):
        names += add_island(model, tensor, f"island{k}")
    onnx.checker.check_model(model)
    return model, names


def scale_conv_bn(model: onnx.ModelProto, fraction: float = 0.5,
                  log2: int = CONV_BN_LOG2) -> tuple[onnx.ModelProto, list[str]]:
    """Scale the weights (and bias) of the first Conv at or after ``fraction`` of the node list whose
    output only a BatchNormalization reads by 2^log2, and that BatchNormalization's mean by 2^log2
    and variance by 2^(2 log2): the BN output is unchanged in fp32 (up to epsilon's share); in fp16
    the Conv output overflows and the variance is inf. Returns [conv, bn] names."""
    g = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    inits = {t.name: t for t in g.initializer}
    nodes = list(g.node)
    for conv in nodes[int(len(nodes) * fraction):]:
        r = readers.get(conv.output[0], [])
        if conv.op_type == "Conv" and len(r) == 1 and r[0].op_type == "BatchNormalization" \
                and all(i in inits for i in list(conv.input[1:]) + list(r[0].input[1:])):
            bn = r[0]
            break
    else:
        raise ValueError("no Conv -> BatchNormalization pair with constant weights found")

    def scale(name: str, factor: float) -> None:
        t = inits[name]
        t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * np.float32(factor)).astype(np.float32), name))

    for name in conv.input[1:]:
        scale(name, 2.0 ** log2)
    scale(bn.input[3], 2.0 ** log2)  # mean
    scale(bn.input[4], 2.0 ** (2 * log2))  # variance
    onnx.checker.check_model(model)
    return model, [conv.name, bn.name]


@dataclass
class Case:
    name: str
    build: Callable[[], tuple[onnx.ModelProto, list[str] | None]]  # the model and its planted keep-set, if any
    tol: float  # atol = rtol
    what: str


def _overflow(k: int):
    def build():
        from fixtures.models import FP16_OVERFLOW_COMPENSATORS, FP16_OVERFLOW_CULPRITS, make_fp16_overflow

        return make_fp16_overflow(k), FP16_OVERFLOW_CULPRITS[k] + FP16_OVERFLOW_COMPENSATORS[k]
    return build


def _accumulated():
    from fixtures.models import make_accumulated_error

    return make_accumulated_error(), None


def _light(name: str, plant):
    def build():
        from fixtures.light import load_light

        return plant(load_light(name))
    return build


CASES = [
    Case("fp16_overflow_1", _overflow(1), 1e-2, "12 MatMul blocks, 1 scaled by 2^16 (+ Mul 2^-16)"),
    Case("fp16_overflow_3", _overflow(3), 1e-2, "12 MatMul blocks, 3 scaled by 2^16 (+ Mul 2^-16)"),
    Case("squeezenet_island", _light("squeezenet", lambda m: with_islands(m, [0.5])), 5e-2,
         "light squeezenet, 1 island Mul(2^20) -> Identity -> Mul(2^-20)"),
    Case("inception_v2_islands", _light("inception_v2", lambda m: with_islands(m, [0.3, 0.7])), 0.5,
         "light inception_v2, 2 islands"),
    Case("resnet50_conv_bn", _light("resnet50", scale_conv_bn), 1.0,
         "light resnet50, Conv x 2^16 with BatchNormalization absorbing it"),
    Case("accumulated_error", _accumulated, 1e-2, "64 Adds whose small increments fp16 rounds away (no overflow)"),
]


# ---------------------------------------------------------------- running
def _env() -> dict[str, str]:
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts + [str(ROOT)])
    return env


def bisector_argv() -> list[str]:
    # -P (3.11+): the working directory does not shadow a bisector named on PYTHONPATH
    return [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "bisector"]


def search(model: Path, inputs: Path, session: Path, tol: float, realize: str, device: str, jobs: int = 1) -> dict:
    """One ``bisector precision`` run; its answer from ``result/report.json``. ``jobs`` > 1 runs the
    device search's checks ``-j jobs`` (speculative: the same answer, possibly more checks)."""
    argv = [*bisector_argv(), "precision", str(model), "--precision", "fp16", "--realize", realize,
            "--load-inputs", str(inputs), "--session", str(session), "-q"]
    if realize == "emulate":
        argv += ["--compare", "--atol", repr(tol), "--rtol", repr(tol)]
    else:
        argv += ["--check", sys.executable, str(ROOT / "bench" / "gpu_check.py"), "{artifact}", "--inputs", "{inputs}",
                 "--reference-model", str(model.resolve()), "--atol", repr(tol), "--rtol", repr(tol),
                 "--device", device]
        if jobs > 1:
            argv[argv.index("--check"):argv.index("--check")] = ["-j", str(jobs)]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (session.parent / f"{session.name}.log").write_text(" ".join(argv) + "\n\n" + proc.stdout + proc.stderr)
    out = {"argv": argv, "rc": proc.returncode, "seconds": round(seconds, 1)}
    report = session / "result" / "report.json"
    if not report.exists():
        out["error"] = (proc.stdout + proc.stderr)[-2000:]
        return out
    r = json.loads(report.read_text())
    res = r.get("result", {})
    out.update(checks=r.get("checks"), keep=res.get("keep_names"), lowerable=res.get("lowerable"),
               one_minimal=res.get("one_minimal"), conclusive=r.get("conclusive"))
    return out


def candidates(answers: list[list[str]]) -> list[tuple[str, frozenset[str]]]:
    """The keep-sets to judge both ways: all fp16, then each distinct answer and the answer minus each
    of its nodes; no keep-set twice."""
    out: list[tuple[str, frozenset[str]]] = [("all fp16 (keep none)", frozenset())]
    seen = {frozenset()}
    for keep in answers:
        ks = frozenset(keep)
        for label, k in [(f"keep {{{', '.join(keep)}}}", ks)] + [(f"  minus {n}", ks - {n}) for n in keep]:
            if k not in seen:
                seen.add(k)
                out.append((label, k))
    return out


def verdicts(model: onnx.ModelProto, samples, keep_sets, tol: float, device: str) -> list[dict]:
    """Each keep-set judged emulated (onnxruntime CPU) and true (torch on ``device``)."""
    from gpu_check import judge, onnxrt_outputs, run_candidate

    from bisector.model.precision import rewrite

    reference = onnxrt_outputs(model, samples)
    rows = []
    for label, keep in keep_sets:
        emu = judge(onnxrt_outputs(rewrite(model, "fp16", keep=keep, realize="emulate"), samples), reference, tol, tol)
        run = run_candidate(rewrite(model, "fp16", keep=keep, realize="true"), samples, device)
        dev = judge(run.outputs, reference, tol, tol)
        rows.append({"label": label, "keep": sorted(keep), "emulate": emu.passed, "emulate_max_abs": emu.max_abs,
                     "device": dev.passed, "device_max_abs": dev.max_abs, "dtypes": dict(run.dtypes)})
    return rows


def run_case(case: Case, out: Path, device: str, jobs: int = 1) -> dict:
    from bisector.data import generate_inputs, save_inputs
    from bisector.model.prepare import default_specs

    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    model, planted = case.build()
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()[:16]
    path = models / f"{case.name}.onnx"
    onnx.save(model, str(path))
    samples = generate_inputs(default_specs(model), samples=1, seed=1)
    inputs = save_inputs(samples, models / f"{case.name}.inputs.json")
    sessions = out / "sessions"
    sessions.mkdir(exist_ok=True)
    result = {"case": case.name, "what": case.what, "tol": case.tol, "planted": planted, "sha256": digest,
              "jobs": jobs}
    for realize in ("emulate", "true"):
        session = sessions / f"{case.name}-{realize}"
        if session.exists():
            import shutil

            shutil.rmtree(session)
        result[realize] = search(path, inputs, session, case.tol, realize, device, jobs)
        print(f"  {realize:8s} {result[realize].get('checks')} checks, keep {result[realize].get('keep')} "
              f"(rc {result[realize]['rc']}, {result[realize]['seconds']} s)", flush=True)
    answers = [a for a in (result["true"].get("keep"), result["emulate"].get("keep"), planted) if a is not None]
    result["verdicts"] = verdicts(model, samples, candidates(answers), case.tol, device)
    return result


# ---------------------------------------------------------------- tables
def fmt_err(x: float) -> str:
    return "inf/NaN" if not np.isfinite(x) else f"{x:.2g}"


def keep_text(keep: list[str] | None) -> str:
    return "-" if keep is None else ("{" + ", ".join(keep) + "}" if keep else "{}")


def same_keep(r: dict) -> bool:
    emu, dev = r["emulate"].get("keep"), r["true"].get("keep")
    return emu is not None and dev is not None and set(emu) == set(dev)


def tables(results: list[dict], device_text: str) -> str:
    lines = [f"Device: {device_text}", "",
             "| case | lowerable | atol = rtol | planted keep-set | emulate: checks, keep-set | GPU (true fp16): "
             "checks, keep-set | same keep-set | verdicts agree |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        emu, dev = r["emulate"], r["true"]
        agree = sum(v["emulate"] == v["device"] for v in r["verdicts"])
        same = "yes" if same_keep(r) else "**no**"
        lines.append(f"| {r['case']} | {emu.get('lowerable')} | {r['tol']:g} | {keep_text(r['planted'])} | "
                     f"{emu.get('checks')}, {keep_text(emu.get('keep'))} | "
                     f"{dev.get('checks')}, {keep_text(dev.get('keep'))} | "
                     f"{same} | {agree} of {len(r['verdicts'])} |")
    lines += ["", "Per keep-set verdicts (max abs error of the logits in brackets; the GPU column runs the true "
              "mixed model, its fp16 node outputs counted):", "",
              "| case | keep-set | emulate | GPU | GPU node outputs fp16 / fp32 |", "|---|---|---|---|---|"]
    for r in results:
        for v in r["verdicts"]:
            d = v["dtypes"]
            lines.append(f"| {r['case']} | {v['label'].strip()} | {'good' if v['emulate'] else 'bad'} "
                         f"({fmt_err(v['emulate_max_abs'])}) | {'good' if v['device'] else 'bad'} "
                         f"({fmt_err(v['device_max_abs'])}) | {d.get('float16', 0)} / {d.get('float32', 0)} |")
    total = sum(len(r["verdicts"]) for r in results)
    agree = sum(v["emulate"] == v["device"] for r in results for v in r["verdicts"])
    same = sum(same_keep(r) for r in results)
    lines += ["", f"Keep-sets equal on {same} of {len(results)} cases; verdicts agree on {agree} of {total}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for models, sessions and results")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--jobs", type=int, default=1, help="-j of the device searches (their checks in parallel)")
    ap.add_argument("--cases", nargs="*", help=f"subset of: {', '.join(c.name for c in CASES)}")
    args = ap.parse_args(argv)
    chosen = [c for c in CASES if not args.cases or c.name in args.cases]
    unknown = set(args.cases or []) - {c.name for c in CASES}
    if unknown:
        ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)

    from gpu_check import device_lines, setup_torch

    setup_torch(args.device)
    info = device_lines(args.device)
    for line in info:
        print(line, flush=True)
    results = []
    start = time.perf_counter()
    for case in chosen:
        print(f"{case.name}: {case.what}", flush=True)
        try:
            results.append(run_case(case, args.out, args.device, args.jobs))
        except FileNotFoundError as exc:  # a light model this onnx package does not ship
            print(f"  skipped: {exc}", flush=True)
            continue
        print(f"  model sha256 {results[-1]['sha256']}", flush=True)
        write(args.out, info, results)  # after each case: a run cut short keeps what it measured
    text = write(args.out, info, results)
    print("\n" + text)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


def write(out: Path, info: list[str], results: list[dict]) -> str:
    """Write ``gpu_precision.md`` and ``gpu_precision.json`` under ``out``; returns the tables."""
    text = tables(results, "; ".join(info[1:]))
    (out / "gpu_precision.md").write_text(text + "\n")
    (out / "gpu_precision.json").write_text(json.dumps({"device": info, "results": results}, indent=1,
                                                       default=str) + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
