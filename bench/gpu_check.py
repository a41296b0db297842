#!/usr/bin/env python3
"""A command check that runs a candidate ONNX model with real fp16 kernels on a GPU (PyTorch eager).

    bisector precision MODEL --precision fp16 --realize true \\
        --check python $PWD/bench/gpu_check.py {artifact} --inputs {inputs} --reference-model MODEL \\
                --atol 1e-2 --rtol 1e-2

(The check runs in each iteration directory: give the script's absolute path, or make it executable
and give ``bench/gpu_check.py`` as the command, which bisector resolves against where it started.)

What it does, once per call:

- loads the candidate (``{artifact}``: the true mixed-precision model that ``--realize true``
  writes, fp16 tensors and weights with Casts at the keep-set boundary), turns Dropout into Identity
  (inference semantics; onnx2torch has no Dropout-7), converts it with ``onnx2torch`` and runs the
  module in eval mode on ``--device`` (``cuda`` by default). Every tensor keeps the ONNX type: fp16
  nodes run PyTorch's fp16 CUDA kernels (cuBLAS/cuDNN), kept nodes fp32, the Casts are ``.to()``.
  TF32 is switched off, so kept nodes compute in true fp32; PyTorch's default reduced-precision
  fp16 GEMM reductions are left as they are (what a GPU runs by default), and logged;
- takes the inputs from ``--inputs`` (Polygraphy JSON or .npz, what bisector writes beside each
  candidate), else ``$BISECTOR_INPUTS``, else ``inputs.json`` in the working directory, else
  generates ``--samples`` seeded ones (``--seed``; Polygraphy's default data loader, as bisector does);
- computes the fp32 reference from ``--reference-model`` (default: the session's prepared
  ``$BISECTOR_SESSION/reference/reference.onnx``), on onnxruntime CPU (``--reference onnxrt``, what
  ``bisector precision`` compares with) or converted and run in fp32 on the same device
  (``--reference torch``); or reads it from ``--reference-outputs`` (Polygraphy JSON outputs);
- compares every output with bisector's comparator (Polygraphy's elementwise rule: an element fails
  when it is off by more than ``--atol`` *and* ``--rtol``) and fails on any non-finite value in the
  candidate (``validate``);
- logs to stdout the process id, host, start and end times (UTC), the GPU's name and UUID (the one
  ``nvidia-smi -L`` prints), ``CUDA_VISIBLE_DEVICES``, the torch/onnx2torch versions, the number of
  node outputs it computed in each dtype (so a log shows that fp16 kernels did run), and each
  output's error.

Exit code: 0 good, 1 bad (out of tolerance or non-finite), 2 usage error, 3 the model could not be
converted or run (bisector counts any non-zero code as bad; look at ``check.log``).

``bench/gpu_precision.py`` uses :func:`run_candidate` and :func:`judge` in-process for its
per-keep-set verdicts, so those and this command give the same answers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: a bisector named there (a snapshot) comes first

EXIT_GOOD, EXIT_BAD, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
REFERENCE_KINDS = ("onnxrt", "torch")
DEVICES = ("cuda", "cpu")
SESSION_REFERENCE = Path("reference") / "reference.onnx"  # inside $BISECTOR_SESSION
PREFIX = "gpu_check:"


class CheckError(Exception):
    """The check cannot give a verdict (usage, a missing file, an unconvertible model)."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- pure parts (no torch)
def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path, help="the candidate model ({artifact})")
    ap.add_argument("--inputs", type=Path, help="input samples ({inputs}); default $BISECTOR_INPUTS, "
                                                "./inputs.json, else generated")
    ap.add_argument("--reference-model", type=Path,
                    help="the fp32 model; default $BISECTOR_SESSION/reference/reference.onnx")
    ap.add_argument("--reference-outputs", type=Path, help="fp32 outputs (Polygraphy JSON) instead of a model")
    ap.add_argument("--reference", choices=REFERENCE_KINDS, default="onnxrt",
                    help="run the reference model on onnxruntime CPU (default) or in fp32 torch on --device")
    ap.add_argument("--atol", type=float, default=1e-2)
    ap.add_argument("--rtol", type=float, default=1e-2)
    ap.add_argument("--device", choices=DEVICES, default="cuda",
                    help="cpu: a dry run (torch's CPU kernels, not a GPU's)")
    ap.add_argument("--seed", type=int, default=1, help="seed of generated inputs (no input file)")
    ap.add_argument("--samples", type=int, default=1, help="number of generated samples (no input file)")
    args = ap.parse_args(argv)
    if args.atol < 0 or args.rtol < 0:
        ap.error("--atol and --rtol must be >= 0")
    return args


def inputs_path(given: Path | None, env: dict[str, str], cwd: Path) -> Path | None:
    """The input file to read: ``--inputs``, else ``$BISECTOR_INPUTS``, else ``cwd/inputs.json``, else None."""
    if given is not None:
        if not given.exists():
            raise CheckError(f"--inputs {given}: no such file", EXIT_USAGE)
        return given
    if env.get("BISECTOR_INPUTS"):
        return Path(env["BISECTOR_INPUTS"])
    local = cwd / "inputs.json"
    return local if local.exists() else None


def reference_model_path(given: Path | None, env: dict[str, str]) -> Path:
    """``--reference-model``, else the session's prepared fp32 model; CheckError if neither exists."""
    if given is not None:
        if not given.exists():
            raise CheckError(f"--reference-model {given}: no such file", EXIT_USAGE)
        return given
    session = env.get("BISECTOR_SESSION")
    if session and (Path(session) / SESSION_REFERENCE).exists():
        return Path(session) / SESSION_REFERENCE
    raise CheckError("no fp32 reference: give --reference-model MODEL or --reference-outputs FILE "
                     "(or run under bisector, whose session holds reference/reference.onnx)", EXIT_USAGE)


def for_torch(model: onnx.ModelProto) -> int:
    """Make ``model`` convertible by onnx2torch in place; returns how many nodes changed.

    Dropout (inference: the identity on its first output) becomes Identity, keeping its name; a mask
    output, which inference never reads, is dropped.
    """
    changed = 0
    for node in model.graph.node:
        if node.op_type == "Dropout":
            out = node.output[0]
            keep_input = node.input[0]
            del node.input[:]
            node.input.append(keep_input)
            del node.output[:]
            node.output.append(out)
            del node.attribute[:]
            node.op_type = "Identity"
            changed += 1
    return changed


def type_summary(model: onnx.ModelProto) -> str:
    """One line: nodes, Casts by target type, initializers by element type."""
    names = {v: k for k, v in onnx.TensorProto.DataType.items()}
    casts = Counter(names.get(a.i, str(a.i)) for n in model.graph.node if n.op_type == "Cast"
                    for a in n.attribute if a.name == "to")
    inits = Counter(names.get(t.data_type, str(t.data_type)) for t in model.graph.initializer)
    cast_text = ", ".join(f"{k} {v}" for k, v in sorted(casts.items())) or "none"
    init_text = ", ".join(f"{k} {v}" for k, v in sorted(inits.items())) or "none"
    return f"{len(model.graph.node)} nodes; Casts to: {cast_text}; initializers: {init_text}"


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


@dataclass
class Judgement:
    passed: bool
    lines: list[str]
    max_abs: float  # over all outputs and samples; inf/nan when the candidate has non-finite values
    nonfinite: int  # non-finite values in the candidate's outputs


def judge(outputs: list[dict[str, np.ndarray]], references: list[dict[str, np.ndarray]],
          atol: float, rtol: float) -> Judgement:
    """Compare with bisector's comparator (elementwise atol/rtol, as ``--compare`` does) and fail on
    any non-finite value in the candidate."""
    from bisector.compare.comparator import compare_samples
    from bisector.compare.config import CompareConfig

    config = CompareConfig.from_flags(atol=[repr(atol)], rtol=[repr(rtol)], validate=True)
    result = compare_samples(outputs, references, config)
    lines, diffs, nonfinite = [], [0.0], 0
    for i, (out, ref) in enumerate(zip(outputs, references)):
        for name, arr in out.items():
            a = np.asarray(arr, dtype=np.float64)
            bad = int(a.size - np.isfinite(a).sum())
            nonfinite += bad
            r = np.asarray(ref.get(name, np.full_like(a, np.nan)), dtype=np.float64)
            diff = float(np.max(np.abs(a - r))) if a.shape == r.shape and a.size else float("nan")
            if bad:
                diff = float("inf")
            diffs.append(diff)
            ref_max = float(np.max(np.abs(r))) if r.size else float("nan")
            lines.append(f"sample {i} {name}: max abs error {diff:.4g} (reference max |{ref_max:.4g}|),"
                         f" non-finite {bad}/{a.size}")
    if not result.passed:
        for sample in result.samples:
            for out in sample.outputs:
                if not out.passed:
                    lines.append(f"FAIL {out.summary()}")
        if result.reason:
            lines.append(f"FAIL {result.reason}")
    worst = float("nan") if any(np.isnan(d) for d in diffs) else max(diffs)
    return Judgement(bool(result.passed), lines, worst, nonfinite)


def read_samples(path: Path) -> list[dict[str, np.ndarray]]:
    from bisector.data import load_inputs

    return load_inputs(path)


def generated_samples(model: onnx.ModelProto, samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    from bisector.data import generate_inputs
    from bisector.model.prepare import default_specs

    return generate_inputs(default_specs(model), samples=samples, seed=seed)


def load_model(path: Path) -> onnx.ModelProto:
    """The model with every weight in memory (bisector's reader: external data may be hard-linked)."""
    from bisector.model import io as mio

    model = mio.load(path)
    mio.load_weights(model, path.parent)
    return model


def onnxrt_outputs(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The model run by onnxruntime on the CPU (fp32 reference), every graph output by name."""
    import onnxruntime as ort

    from bisector.model import io as mio

    m = onnx.ModelProto()
    m.CopyFrom(model)
    mio.normalize_ir(m)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, {k: v for k, v in s.items()}))) for s in samples]


# ---------------------------------------------------------------- torch parts
def device_lines(device: str) -> list[str]:
    """Who ran this: pid, host, CUDA_VISIBLE_DEVICES, versions, the GPU's name and UUID."""
    import torch

    lines = [f"pid {os.getpid()} host {socket.gethostname()} "
             f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}"]
    try:
        o2t = version("onnx2torch")
    except PackageNotFoundError:
        o2t = "not installed"
    lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
                 f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else '-'}), "
                 f"onnx2torch {o2t}, onnx {onnx.__version__}")
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        uuid = getattr(props, "uuid", None)
        lines.append(f"device cuda:0 {props.name} uuid GPU-{uuid} (capability {props.major}.{props.minor}, "
                     f"{props.total_memory / 2**30:.0f} GiB); TF32 matmul "
                     f"{torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}, "
                     f"fp16 reduced-precision GEMM reduction "
                     f"{torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction}")
    else:
        lines.append("device cpu: a dry run with torch's CPU kernels, not a GPU's")
    return lines


def setup_torch(device: str) -> None:
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            raise CheckError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
        torch.backends.cuda.matmul.allow_tf32 = False  # kept nodes: true fp32, not TF32's 10-bit mantissa
        torch.backends.cudnn.allow_tf32 = False


@dataclass
class Run:
    outputs: list[dict[str, np.ndarray]]
    dtypes: Counter = field(default_factory=Counter)  # node outputs computed, by dtype
    seconds: float = 0.0


def run_candidate(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], device: str) -> Run:
    """Convert ``model`` with onnx2torch (after :func:`for_torch` on a copy) and run it on ``device``
    in eval mode, every tensor in the type the ONNX graph gives it."""
    import torch
    import torch.fx
    from onnx2torch import convert

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for_torch(m)
    try:
        module = convert(m).eval().to(device)  # .to(device) moves; it keeps each tensor's dtype
    except Exception as exc:
        raise CheckError(f"onnx2torch cannot convert the model: {type(exc).__name__}: {exc}") from None
    in_names = graph_input_names(model)
    out_names = [o.name for o in model.graph.output]
    dtypes: Counter = Counter()

    class Tally(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if n.op not in ("placeholder", "output", "get_attr"):
                for t in (result if isinstance(result, (tuple, list)) else (result,)):
                    if isinstance(t, torch.Tensor) and t.is_floating_point():
                        dtypes[str(t.dtype).replace("torch.", "")] += 1
            return result

    outs = []
    start = time.perf_counter()
    with torch.no_grad():
        for sample in samples:
            args = [torch.from_numpy(np.ascontiguousarray(sample[n])).to(device) for n in in_names]
            try:
                result = Tally(module).run(*args)
            except Exception as exc:
                raise CheckError(f"the converted model failed on {device}: {type(exc).__name__}: {exc}") from None
            if isinstance(result, torch.Tensor):
                result = (result,)
            outs.append({name: t.detach().float().cpu().numpy() for name, t in zip(out_names, result)})
        if device == "cuda":
            torch.cuda.synchronize()
    return Run(outs, dtypes, time.perf_counter() - start)


def torch_reference(model: onnx.ModelProto, samples, device: str) -> list[dict[str, np.ndarray]]:
    return run_candidate(model, samples, device).outputs


# ---------------------------------------------------------------- the command
def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    print(f"{PREFIX} start {now()}", flush=True)
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_GOOD
    try:
        code = _check(args)
    except CheckError as exc:
        print(f"{PREFIX} error: {exc}", flush=True)
        code = exc.code
    verdict = {EXIT_GOOD: "good", EXIT_BAD: "bad"}.get(code, "error")
    print(f"{PREFIX} verdict {verdict} (exit {code}); end {now()} ({time.perf_counter() - started:.2f} s)", flush=True)
    return code


def _check(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if not args.artifact.exists():
        raise CheckError(f"{args.artifact}: no such file", EXIT_USAGE)
    setup_torch(args.device)
    for line in device_lines(args.device):
        print(f"{PREFIX} {line}", flush=True)
    model = load_model(args.artifact)
    print(f"{PREFIX} candidate {args.artifact}: {type_summary(model)}", flush=True)

    src = inputs_path(args.inputs, env, Path.cwd())
    if src is not None:
        samples = read_samples(src)
        print(f"{PREFIX} inputs: {len(samples)} sample(s) from {src}", flush=True)
    else:
        samples = generated_samples(model, args.samples, args.seed)
        print(f"{PREFIX} inputs: {len(samples)} generated sample(s), seed {args.seed}", flush=True)

    if args.reference_outputs is not None:
        from bisector.data import load_outputs

        runs = load_outputs(args.reference_outputs)
        references = next(iter(runs.values()))
        print(f"{PREFIX} reference: outputs from {args.reference_outputs}", flush=True)
    else:
        ref_path = reference_model_path(args.reference_model, env)
        ref_model = load_model(ref_path)
        if args.reference == "onnxrt":
            references = onnxrt_outputs(ref_model, samples)
        else:
            references = torch_reference(ref_model, samples, args.device)
        print(f"{PREFIX} reference: {ref_path} in fp32 on "
              f"{'onnxruntime CPU' if args.reference == 'onnxrt' else 'torch ' + args.device}", flush=True)

    run = run_candidate(model, samples, args.device)
    tally = ", ".join(f"{k} {v}" for k, v in sorted(run.dtypes.items())) or "none"
    print(f"{PREFIX} ran on {args.device} in {run.seconds:.3f} s; node outputs by dtype: {tally}", flush=True)
    judgement = judge(run.outputs, references, args.atol, args.rtol)
    for line in judgement.lines:
        print(f"{PREFIX} {line}", flush=True)
    print(f"{PREFIX} atol {args.atol:g} rtol {args.rtol:g}: {'within tolerance' if judgement.passed else 'FAILED'}",
          flush=True)
    return EXIT_GOOD if judgement.passed else EXIT_BAD


if __name__ == "__main__":
    sys.exit(main())
