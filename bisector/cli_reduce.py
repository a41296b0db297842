"""``bisector reduce``: the command's declaration and what it prints while it sets up.

Registered by ``bisector/cli.py`` at its end, like ``cli_precision.py``; the search, the result
files and the report are in ``bisector/commands/reduce.py`` and ``reduce_report.py``.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from bisector.cli_options import (WEIGHTS_HELP, CheckOptions, CompareOptions, DataOptions, SessionOptions, guarded,
                                  uses)
from bisector.errors import UserError, one_of


@guarded
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
    from bisector import cli
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
    if output is not None and min_good is not None and Path(output).absolute() == Path(min_good).absolute():
        raise UserError("-o and --min-good name the same file: the answer and the passing model would overwrite "
                        "each other")
    for path in (output, min_good, data.save_inputs):
        cli.check_writable(path, model)
    opts = red.ReduceOptions(model=model, output=output, min_good=min_good, mode=mode,
                             reduce_inputs=not no_reduce_inputs, reduce_outputs=not no_reduce_outputs,
                             verify_minimal=verify_minimal, cut_feed=cut_feed, weights=weights,
                             **cli.candidate_args(data, s, cmp, DEFAULT_ARTIFACT))
    check = cli.build_check(chk, cmp)
    cli.warn_blind_check(opts.iter_artifact, model)
    state = {}

    def setup(session):
        from bisector.commands.reduce_report import count

        prepared, strategy, materializer = red.setup(opts, session.root)
        state["materializer"] = materializer
        cli.console.print(f"model: {Path(model).absolute()} ({count(strategy.n, 'node')} after preparation), "
                      f"{materializer.store.samples} input sample(s), cut tensors fed {opts.cut_feed} values",
                      highlight=False)
        store = materializer.store
        if store.given and opts.cut_feed != "random":
            cli.console.print(f"note: {len(store.given)} cut tensors are fed the values the loaded data gives, not "
                              f"recorded ones; {len(store.recorded) or 'nothing'} recorded", style="dim",
                              highlight=False)
        if opts.write_inputs and materializer.weights == "link" and materializer.linked_bytes:
            cli.console.print(f"note: candidates link the session's weight file "
                          f"({materializer.linked_bytes / 2**20:.0f} MiB) instead of copying it; onnx.load refuses "
                          f"linked weights, so a check that calls it needs --weights auto", style="dim",
                          highlight=False)
        return strategy, materializer

    def finish(session, outcome):
        from bisector.commands.reduce_report import report_reduce

        conclusive = outcome.result["conclusive"]
        written = red.write_result(outcome, state["materializer"], opts, session.result_dir,
                                   publish=conclusive or s.force_output)
        if data.save_inputs:
            from bisector.data import save_inputs

            m = state["materializer"]
            save_inputs(m.feeds(list(m.cutter.index.graph_inputs)), data.save_inputs)
        report_reduce(cli.results(s.json), session, outcome, written, opts, cli._check_argv, cmp)
        if not conclusive:
            return cli.inconclusive(session, "no candidate passed the check, not even the model without the "
                                    "answer: the check may fail whatever it is given", s.force_output,
                                    (opts.output, opts.min_good))
        return 0

    return cli.run_session(strategy_name="reduce", model=model, params=opts.params() | {"check": cli._check_argv},
                    s=s, check=check, setup=setup, finish=finish,
                    model_data_dir=opts.external_data_dir)
