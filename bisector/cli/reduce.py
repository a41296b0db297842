"""``bisector reduce``: the command's flags, turned into a :class:`~bisector.commands.reduce.ReduceCommand`."""


from pathlib import Path
from typing import Annotated, Optional

import typer

from bisector.cli.options import WEIGHTS_HELP, CheckOptions, CompareOptions, DataOptions, SessionOptions, uses
from bisector.errors import UserError, one_of


@uses(DataOptions, CompareOptions, CheckOptions, SessionOptions)
def reduce(
    model: Annotated[Path, typer.Argument(help="The failing ONNX model")],
    data: DataOptions,
    cmp: CompareOptions,
    chk: CheckOptions,
    s: SessionOptions,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Where to write the reduced model")] = None,
    min_good: Annotated[Optional[Path], typer.Option("--min-good", "--minimal-good", help="Where to write a passing model close in size")] = None,
    mode: Annotated[str, typer.Option("--mode", help="auto (1-minimal in ~log2 N checks), bisect or linear (Polygraphy's)")] = "auto",
    no_reduce_inputs: Annotated[bool, typer.Option("--no-reduce-inputs", help="Keep the graph inputs; only find the earliest failing outputs")] = False,
    no_reduce_outputs: Annotated[bool, typer.Option("--no-reduce-outputs", help="Keep the graph outputs; only move the inputs")] = False,
    verify_minimal: Annotated[bool, typer.Option("--verify-minimal", help="Prove 1-minimality: one check per remaining node")] = False,
    cut_feed: Annotated[str, typer.Option("--cut-feed", help="Values for cut tensors: recorded, random, constant")] = "recorded",
    weights: Annotated[str, typer.Option("--weights", help=WEIGHTS_HELP)] = "auto",
):
    """Find the smallest subgraph of MODEL that still fails the check."""
    from bisector.cli import build
    from bisector.commands import reduce as red
    from bisector.commands.candidates import DEFAULT_ARTIFACT
    from bisector.strategies.reduce import MODES

    if output is None and min_good is None:
        raise UserError("reduce needs -o/--output (or --min-good) to know where to write the answer")
    if no_reduce_inputs and no_reduce_outputs:
        raise UserError("--no-reduce-inputs and --no-reduce-outputs exclude each other")
    if cmp.reference != "onnxrt":
        raise UserError(f"--reference {cmp.reference}: reduce compares candidates with the full model's own "
                        f"activations, recorded with onnxruntime on the CPU", hint="drop --reference")
    one_of("--cut-feed", cut_feed, red.CUT_FEEDS)
    one_of("--mode", mode, MODES)
    opts = red.ReduceOptions(model=model.absolute(), output=output and output.absolute(),
                             min_good=min_good and min_good.absolute(), mode=mode,
                             reduce_inputs=not no_reduce_inputs, reduce_outputs=not no_reduce_outputs,
                             verify_minimal=verify_minimal, cut_feed=cut_feed, weights=weights,
                             **build.candidate_fields(data, s, cmp, DEFAULT_ARTIFACT))
    command = red.ReduceCommand(opts)
    return build.Invocation(command, build.check_spec(chk, cmp), build.run_options(s), build.display(s),
                            warnings=build.blind_check_warnings(chk.check_argv, opts.iter_artifact, model))
