"""``bisector compare``: one model, target against reference, with Polygraphy's comparison rules.

No session: it runs the model once on each side and returns its exit code (0 match, 1 mismatch),
so that it works as a check command of its own.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from bisector.cli.options import CompareOptions, DataOptions, uses
from bisector.errors import EXIT_BAD


@uses(DataOptions, CompareOptions)
def compare(
    model: Annotated[Path, typer.Argument(help="The ONNX model")],
    data: DataOptions,
    cmp: CompareOptions,
    save_outputs: Annotated[Optional[Path], typer.Option("--save-outputs", help="Write target outputs (Polygraphy RunResults JSON or .npz)")] = None,
    load_outputs: Annotated[Optional[Path], typer.Option("--load-outputs", help="Use these reference outputs instead of running the reference")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (the comparison of every output); the table goes to stderr")] = False,
    ui=None,
):
    """Run MODEL on a target and a reference and compare outputs: exit 0 match, 1 mismatch, 2 bad usage."""
    from bisector.cli import build
    from bisector.cli.run import Ui
    from bisector.commands.candidates import check_writable
    from bisector.commands.compare import run_compare
    from bisector.data import load_outputs as read_outputs, save_inputs, save_outputs as write_outputs
    from bisector.compare.render import render_comparison

    ui = ui or Ui(json_out)
    spec = build.compare_spec(cmp)
    target = spec.target()
    if cmp.precision and cmp.realize == "true" and cmp.provider == "cpu":
        ui.note(f"a true {cmp.precision} model on onnxruntime's CPU provider is computed in fp32 between ops, so "
                f"overflow stays hidden here; --realize emulate shows what a GPU would")
    args = build.data_args(data)
    for path in (data.save_inputs, save_outputs):
        check_writable(path, model)
    reference_outputs = None
    if load_outputs:
        runs = read_outputs(load_outputs)
        reference_outputs = next(iter(runs.values()))
    run = run_compare(model, target, spec.config(), reference=cmp.reference,
                      reference_outputs=reference_outputs, **args)
    if data.save_inputs:
        save_inputs(run.samples, data.save_inputs)
    if save_outputs:
        write_outputs({target.describe(): run.target_outputs}, save_outputs)
    ref_name = ("loaded outputs" if load_outputs else
                "onnx reference evaluator fp64" if cmp.reference == "fp64" else "onnxruntime cpu fp32")
    out = ui.out
    out.print(f"[bold]compare[/] {model}: target [cyan]{target.describe()}[/] vs reference [cyan]{ref_name}[/], "
              f"{len(run.samples)} sample(s)", highlight=False)
    for sample in run.comparison.samples:
        out.print(render_comparison(sample))
    out.print(run.comparison.summary(), style="bold green" if run.comparison.passed else "bold red",
              highlight=False, soft_wrap=True)
    code = 0 if run.comparison.passed else EXIT_BAD
    if json_out:
        import json
        import sys

        doc = {"command": "compare", "model": str(Path(model).absolute()), "passed": run.comparison.passed,
               "target": target.describe(), "reference": ref_name, "samples": len(run.samples),
               "comparison": run.comparison.to_json(), "exit_code": code}
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
        ui.summary_written = True
    return code
