"""``bisector precision``: the command's flags (Polygraphy's ``--fp16 -p float32`` too), turned into
a :class:`~bisector.commands.precision.PrecisionCommand`; its report is ``commands/precision_report.py``."""

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from bisector.cli.options import WEIGHTS_HELP, CheckOptions, CompareOptions, DataOptions, SessionOptions, uses
from bisector.errors import UserError, one_of
from bisector.strategies.base import MODES

DIRECTIONS = ("forward", "reverse")


@uses(DataOptions, CompareOptions, CheckOptions, SessionOptions)
def precision(
    model: Annotated[Path, typer.Argument(help="The ONNX model (fp32)")],
    data: DataOptions,
    cmp: CompareOptions,
    chk: CheckOptions,
    s: SessionOptions,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Where to write the mixed-precision model")] = None,
    mode: Annotated[str, typer.Option("--mode", help="auto (any node set, 1-minimal), bisect or linear (Polygraphy's prefix/suffix)")] = "auto",
    direction: Annotated[str, typer.Option("--dir", "--direction", help="bisect/linear: keep the first (forward) or last (reverse) k nodes")] = "forward",
    order: Annotated[Optional[str], typer.Option("--order", help="Search order: sensitivity (measured per-node error; default for auto) or topo")] = None,
    verify_minimal: Annotated[bool, typer.Option("--verify-minimal", help="Check every removal from the answer instead of inferring it")] = False,
    weights: Annotated[str, typer.Option("--weights", help=WEIGHTS_HELP)] = "auto",
    fp16: Annotated[bool, typer.Option("--fp16", help="Polygraphy's spelling of --precision fp16")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="Polygraphy's spelling of --precision bf16")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Polygraphy's spelling of --precision int8")] = False,
    constraints: Annotated[Optional[str], typer.Option("--precision-constraints", help="TensorRT <= 10.11 only: build each candidate as a weakly typed engine (polygraphy_debug.engine) with the kept layers constrained to fp32, obey or prefer, instead of rewriting the ONNX graph")] = None,
):
    """Find the fewest nodes of MODEL to keep in fp32 so that fp16, bf16 or int8 passes the check."""
    from bisector.cli import build
    from bisector.commands import precision as prec
    from bisector.commands import precision_trt
    from bisector.commands.candidates import DEFAULT_ARTIFACT
    from bisector.commands.compare import read_keep

    cmp = dataclasses.replace(cmp, precision=low_precision(cmp.precision, fp16, bf16, int8))
    constraints, notes = _checked_flags(cmp, mode, direction, order, verify_minimal, constraints)
    # The check runs the realized model as it is: its comparison gets no precision of its own.
    check = build.check_spec(chk, dataclasses.replace(cmp, precision=None, keep_fp32=None, realize=None))
    realize, why = (cmp.realize, "as asked") if cmp.realize else default_realize(cmp, chk.check_argv)
    if cmp.precision != "int8" and not constraints and why != "as asked":
        notes.append(f"realize: {why}; --realize {'true' if realize == 'emulate' else 'emulate'} to change")
    artifact = precision_trt.ENGINE_ARTIFACT if constraints else DEFAULT_ARTIFACT
    opts = prec.PrecisionOptions(model=model.absolute(), precision=cmp.precision, output=output and output.absolute(),
                                 mode=mode, direction=direction, order=order, realize=realize,
                                 keep_always=read_keep(cmp.keep_fp32), verify_minimal=verify_minimal,
                                 reference=cmp.reference, weights=weights, constraints=constraints,
                                 **build.candidate_fields(data, s, cmp, artifact))
    command = prec.PrecisionCommand(opts)
    return build.Invocation(command, check, build.run_options(s), build.display(s), notes=notes,
                            warnings=build.blind_check_warnings(chk.check_argv, opts.iter_artifact, model))


def _checked_flags(cmp, mode: str, direction: str, order: Optional[str], verify_minimal: bool,
                   constraints: Optional[str]) -> tuple[Optional[str], list[str]]:
    """Refuse what cannot be done (before a session exists); the constraints as meant, and a note
    for each flag given where it changes nothing."""
    from bisector.commands import precision as prec
    from bisector.commands import precision_trt

    if constraints == "none":  # Polygraphy's value for "no constraints": the ONNX rewrite, as without the flag
        constraints = None
    one_of("--mode", mode, MODES)
    one_of("--dir", direction, DIRECTIONS)
    if order is not None:
        one_of("--order", order, prec.ORDERS)
    if cmp.realize is not None:
        from bisector.model.precision import REALIZE_MODES

        one_of("--realize", cmp.realize, REALIZE_MODES)
    if constraints is not None:
        if cmp.compare:
            raise UserError("--precision-constraints builds TensorRT engines, which the in-process --compare cannot run",
                            hint="check them with a command, e.g. --check polygraphy run polygraphy_debug.engine "
                                 "--model-type engine --trt --load-inputs inputs.json --load-outputs REF.json")
        if cmp.realize is not None:
            raise UserError("--realize and --precision-constraints both say how candidates are built: choose one")
        precision_trt.check_weak_typing(cmp.precision, constraints)  # before a session exists
    notes = [f"{flag} applies to {where}; ignored here" for flag, unused, where in (
        ("--dir", mode == "auto" and direction != "forward", "--mode bisect|linear"),
        ("--verify-minimal", verify_minimal and mode != "auto", "--mode auto"),
        ("--realize", cmp.precision == "int8" and cmp.realize is not None, "fp16 and bf16")) if unused]
    return constraints, notes


def default_realize(cmp, check_argv) -> tuple[str, str]:
    """How fp16/bf16 candidates are realized when --realize is not given, and why: emulated where
    the check runs onnxruntime on the CPU (which computes fp16 in fp32 between ops and would hide
    the overflow), the true mixed model where it may run TensorRT or a GPU."""
    if cmp.compare:
        if cmp.provider == "cpu":
            return "emulate", "--compare runs onnxruntime on the CPU, which computes low precision in fp32 between ops"
        return "true", f"--compare runs the {cmp.provider} provider"
    argv = check_argv or []
    text = " ".join(argv).lower()
    gpu = "--trt" in argv or "trtexec" in text or "tensorrt" in text or "cuda" in text
    cpu_onnxrt = "--onnxrt" in argv or ("bisector" in text and "compare" in argv)
    if cpu_onnxrt and not gpu:
        return "emulate", "the check runs onnxruntime, whose CPU provider computes low precision in fp32 between ops"
    if gpu:
        return "true", "the check runs TensorRT or a GPU"
    return "true", "the check gets the true mixed model, as TensorRT and GPU providers run it"


def low_precision(precision: Optional[str], fp16: bool, bf16: bool, int8: bool) -> str:
    """The precision the search lowers nodes to, from bisector's ``--precision fp16|bf16|int8`` or
    from Polygraphy's ``--fp16``/``--bf16``/``--int8``. With the latter, ``-p/--precision`` is
    Polygraphy's: the precision of the kept layers, which is always fp32 here."""
    from bisector.backends.trtexec_args import PRECISION_ALIASES

    given = PRECISION_ALIASES.get(precision.lower(), precision.lower()) if precision else None
    flags = [p for p, on in (("fp16", fp16), ("bf16", bf16), ("int8", int8)) if on]
    if len(flags) > 1:
        raise UserError(f"--{flags[0]} and --{flags[1]}: give one precision to lower to")
    if flags:
        if given not in (None, "fp32"):
            raise UserError(f"with --{flags[0]}, --precision {precision} is Polygraphy's precision of the kept layers, "
                            f"and bisector keeps them in fp32 only", hint="drop -p/--precision, or give float32")
        return flags[0]
    if given is None:
        raise UserError("precision needs --precision fp16, bf16 or int8")
    if given == "fp32":
        raise UserError(f"--precision {precision} is what the kept nodes run in; give the precision to lower to",
                        hint="--precision fp16 (or Polygraphy's --fp16 -p float32)")
    from bisector.commands.precision import PRECISIONS

    one_of("--precision", given, PRECISIONS)
    return given
