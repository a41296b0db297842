"""``bisector compare``: one model, target against reference, with Polygraphy's comparison rules.

No session: it runs the model once on each side and returns its exit code (0 match, 1 mismatch),
so that it works as a check command of its own. ``--outputs mark all`` (Polygraphy's
``--onnx-outputs``/``--trt-outputs``) compares every tensor, layer by layer
(``commands.compare_layers``). A ``polygraphy run`` command line with ``polygraphy run`` replaced by
``bisector compare`` runs: ``--onnxrt``, ``--trt``, ``--fp16``/``--bf16`` and ``--fail-fast`` are here,
and ``cli.polygraphy`` notes the flags that change nothing.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from bisector.cli.options import CompareOptions, DataOptions, uses
from bisector.errors import EXIT_BAD, UserError

PANEL = "Layer by layer (polygraphy run)"


@dataclass
class RunFlags:
    """``polygraphy run``'s runner flags and its tensor marking."""

    outputs: Annotated[Optional[list[str]], typer.Option(
        "--outputs", help="Compare these tensors too, layer by layer: `mark all` or names (Polygraphy's "
        "--onnx-outputs/--trt-outputs)", rich_help_panel=PANEL)] = None
    fail_fast: Annotated[bool, typer.Option(
        "--fail-fast", help="Stop at the first tensor out of tolerance, in topological order",
        rich_help_panel=PANEL)] = False
    onnxrt: Annotated[bool, typer.Option(
        "--onnxrt", help="Polygraphy's runner flag: the target is onnxruntime (on --provider); with --trt, the "
        "reference", rich_help_panel=PANEL)] = False
    trt: Annotated[bool, typer.Option(
        "--trt", help="The target is TensorRT (onnxruntime's TensorRT provider)", rich_help_panel=PANEL)] = False
    fp16: Annotated[bool, typer.Option("--fp16", help="Polygraphy's spelling of --precision fp16",
                                       rich_help_panel=PANEL)] = False
    bf16: Annotated[bool, typer.Option("--bf16", help="Polygraphy's spelling of --precision bf16",
                                       rich_help_panel=PANEL)] = False


@uses(DataOptions, CompareOptions, RunFlags)
def compare(
    model: Annotated[Path, typer.Argument(help="The ONNX model")],
    data: DataOptions,
    cmp: CompareOptions,
    flags: RunFlags,
    save_outputs: Annotated[Optional[Path], typer.Option("--save-outputs", help="Write target outputs (Polygraphy RunResults JSON or .npz); layer by layer, every marked tensor of both runs")] = None,
    load_outputs: Annotated[Optional[Path], typer.Option("--load-outputs", help="Use these reference outputs instead of running the reference")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (the comparison of every output); the table goes to stderr")] = False,
    ui=None,
):
    """Run MODEL on a target and a reference and compare outputs: exit 0 match, 1 mismatch, 2 bad usage."""
    from bisector.cli import build
    from bisector.cli.run import Ui
    from bisector.commands.candidates import check_writable
    from bisector.commands.compare import run_compare
    from bisector.data import save_inputs, save_outputs as write_outputs
    from bisector.compare.render import render_comparison

    ui = ui or Ui(json_out)
    cmp = runner_options(cmp, flags)
    spec = build.compare_spec(cmp)
    target = spec.target()
    if cmp.precision and cmp.realize == "true" and cmp.provider == "cpu":
        ui.note(f"a true {cmp.precision} model on onnxruntime's CPU provider is computed in fp32 between ops, so "
                f"overflow stays hidden here; --realize emulate shows what a GPU would")
    args = build.data_args(data)
    for path in (data.save_inputs, save_outputs):
        check_writable(path, model)
    reference_outputs, ref_name = _reference(cmp, load_outputs)
    if flags.outputs or flags.onnxrt:
        _same_run_note(ui, target, cmp, load_outputs)
    if flags.outputs:
        return compare_layers(model, spec, cmp, flags, args, (reference_outputs, ref_name),
                              (data.save_inputs, save_outputs), json_out, ui)
    run = run_compare(model, target, spec.config(), reference=cmp.reference,
                      reference_outputs=reference_outputs, **args)
    if data.save_inputs:
        save_inputs(run.samples, data.save_inputs)
    if save_outputs:
        write_outputs({target.describe(): run.target_outputs}, save_outputs)
    _header(ui, model, target, ref_name, len(run.samples))
    for sample in run.comparison.samples:
        ui.out.print(render_comparison(sample))
    ui.out.print(run.comparison.summary(), style="bold green" if run.comparison.passed else "bold red",
                 highlight=False, soft_wrap=True)
    code = 0 if run.comparison.passed else EXIT_BAD
    if json_out:
        _emit_json(ui, model, target, ref_name, len(run.samples), code, comparison=run.comparison.to_json())
    return code


def compare_layers(model: Path, spec, cmp: CompareOptions, flags: RunFlags, args: dict, reference: tuple,
                   saves: tuple, json_out: bool, ui) -> int:
    """``--outputs``: every marked tensor compared in topological order, the diagnosis printed."""
    import tempfile

    from bisector.commands.compare_layers import run_layers
    from bisector.compare.render import render_layers
    from bisector.data import save_inputs, save_outputs as write_outputs

    (reference_outputs, ref_name), (inputs_path, outputs_path) = reference, saves
    target = spec.target()
    with tempfile.TemporaryDirectory(prefix="bisector-layers-") as tmp:
        run = run_layers(model, target, spec.config(), outputs=list(flags.outputs), fail_fast=flags.fail_fast,
                         workdir=Path(tmp), reference=cmp.reference, reference_outputs=reference_outputs, **args)
        if inputs_path:
            save_inputs(run.samples, inputs_path)
        if outputs_path:  # both runners, as `polygraphy run --save-outputs` writes them
            runs = {target.describe(): run.target_outputs}
            if run.reference_outputs is not None:
                runs[ref_name] = run.reference_outputs
            write_outputs(runs, outputs_path)
    report = run.report
    _header(ui, model, target, ref_name, len(run.samples), f", {len(report.rows)}/{report.marked} tensor(s)")
    ui.out.print(render_layers(report))
    if report.reduce_next:
        ui.out.print(f"go on from the plain model with: {reduce_line(model, cmp)}", highlight=False, soft_wrap=True)
    code = 0 if report.passed else EXIT_BAD
    if json_out:
        _emit_json(ui, model, target, ref_name, len(run.samples), code, layers=report.to_json())
    return code


def runner_options(cmp: CompareOptions, flags: RunFlags) -> CompareOptions:
    """``cmp`` with Polygraphy's runner flags applied: ``--trt`` (the TensorRT provider, when this
    onnxruntime has it), ``--fp16``/``--bf16`` (the target's precision)."""
    from bisector.backends.onnxrt import PROVIDERS, import_ort

    if flags.fp16 and flags.bf16:
        raise UserError("--fp16 and --bf16 exclude each other: give one")
    low = "fp16" if flags.fp16 else "bf16" if flags.bf16 else None
    if low and cmp.precision not in (None, low):
        raise UserError(f"--{low} and --precision {cmp.precision} disagree: give one")
    provider = cmp.provider
    if flags.trt:
        if PROVIDERS["tensorrt"] not in import_ort().get_available_providers():
            raise UserError(f"--trt: TensorRT is not available here (this onnxruntime has no {PROVIDERS['tensorrt']})",
                            hint=f"choose the target with --provider {' or '.join(PROVIDERS)}, or --onnxrt")
        provider = "tensorrt"
    return dataclasses.replace(cmp, provider=provider, precision=low or cmp.precision)


def reduce_line(model: Path, cmp: CompareOptions) -> str:
    """The ``bisector reduce`` command line that searches the plain model with this comparison."""
    import shlex

    argv = ["bisector", "reduce", str(model), "-o", "reduced.onnx", "--compare", "--provider", cmp.provider]
    for flag, value in (("--precision", cmp.precision), ("--realize", cmp.realize)):
        argv += [flag, value] if value else []
    for flag, values in (("--keep-fp32", cmp.keep_fp32), ("--atol", cmp.atol), ("--rtol", cmp.rtol),
                         ("--check-error-stat", cmp.check_error_stat)):
        argv += [flag, *values] if values else []
    return shlex.join(argv)


def _reference(cmp: CompareOptions, load_outputs: Optional[Path]):
    """The loaded reference outputs (the first runner's; None when the reference runs) and its name."""
    from bisector.data import load_outputs as read_outputs

    if load_outputs:
        return next(iter(read_outputs(load_outputs).values())), "loaded outputs"
    return None, "onnx reference evaluator fp64" if cmp.reference == "fp64" else "onnxruntime cpu fp32"


def _same_run_note(ui, target, cmp: CompareOptions, load_outputs: Optional[Path]) -> None:
    from bisector.backends.target import Target

    if target == Target() and cmp.reference == "onnxrt" and not load_outputs:
        ui.note("the target and the reference are the same onnxruntime cpu fp32 run; give --load-outputs, "
                "--fp16/--precision, --provider or --reference fp64 to compare something")


def _header(ui, model: Path, target, ref_name: str, samples: int, extra: str = "") -> None:
    ui.out.print(f"[bold]compare[/] {model}: target [cyan]{target.describe()}[/] vs reference [cyan]{ref_name}[/], "
                 f"{samples} sample(s){extra}", highlight=False)


def _emit_json(ui, model: Path, target, ref_name: str, samples: int, code: int, **result) -> None:
    """The one object of ``--json`` on stdout."""
    import json
    import sys

    doc = {"command": "compare", "model": str(Path(model).absolute()), "passed": code == 0,
           "target": target.describe(), "reference": ref_name, "samples": samples, **result, "exit_code": code}
    sys.stdout.write(json.dumps(doc, default=str) + "\n")
    ui.summary_written = True
