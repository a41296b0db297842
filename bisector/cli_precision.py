"""``bisector precision``: the command's declaration and what it prints and reports.

Registered by ``bisector/cli.py`` at its end. This module imports ``bisector.cli`` only when the
command runs, so it can be imported in any order.
"""

import dataclasses
import math
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from bisector.cli_options import (WEIGHTS_HELP, CheckOptions, CompareOptions, DataOptions, SessionOptions, guarded,
                                  uses)
from bisector.errors import UserError, one_of

MODES = ("auto", "bisect", "linear")
DIRECTIONS = ("forward", "reverse")
REFERENCE_RUNNER = "onnxrt-cpu fp32"


@guarded
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
    from bisector import cli
    from bisector.commands import precision as prec
    from bisector.commands import precision_trt
    from bisector.commands.candidates import DEFAULT_ARTIFACT
    from bisector.commands.compare import read_keep
    from bisector.engine import EndpointError, TrivialFails

    cmp = dataclasses.replace(cmp, precision=low_precision(cmp.precision, fp16, bf16, int8))
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
    for flag, unused, where in (("--dir", mode == "auto" and direction != "forward", "--mode bisect|linear"),
                                ("--verify-minimal", verify_minimal and mode != "auto", "--mode auto"),
                                ("--realize", cmp.precision == "int8" and cmp.realize is not None, "fp16 and bf16")):
        if unused:
            cli.console.print(f"note: {flag} applies to {where}; ignored here", style="dim", highlight=False)
    for path in (output, data.save_inputs):
        cli.check_writable(path, model)
    # The check runs the realized model as it is: its Target gets no precision of its own.
    check = cli.build_check(chk, dataclasses.replace(cmp, precision=None, keep_fp32=None, realize=None))
    realize, why = (cmp.realize, "as asked") if cmp.realize else default_realize(cmp, cli._check_argv)
    artifact = precision_trt.ENGINE_ARTIFACT if constraints else DEFAULT_ARTIFACT
    opts = prec.PrecisionOptions(model=model, precision=cmp.precision, output=output, mode=mode, direction=direction,
                                 order=order, realize=realize, keep_always=read_keep(cmp.keep_fp32),
                                 verify_minimal=verify_minimal, reference=cmp.reference, weights=weights,
                                 constraints=constraints, **cli.candidate_args(data, s, cmp, artifact))
    cli.warn_blind_check(opts.iter_artifact, model)
    state = {}

    def setup(session):
        from bisector.commands.reduce_report import count

        st = prec.setup(opts, session.root)
        state["setup"] = st
        how = "QDQ int8 (onnxruntime quantize_static)" if opts.precision == "int8" else f"{opts.precision} ({realize})"
        if constraints:
            how = f"TensorRT {opts.precision} engines, kept layers fp32 ({constraints} precision constraints)"
        cli.console.print(f"model: {Path(model).absolute()} ({count(len(st.prepared.model.graph.node), 'node')}, "
                          f"{len(st.lowerable)} can run "
                          f"in {opts.precision}); candidates realized as {how}", highlight=False)
        if opts.precision != "int8" and not constraints and why != "as asked":
            cli.console.print(f"realize: {why}; --realize {'true' if realize == 'emulate' else 'emulate'} to change",
                              style="dim", highlight=False, soft_wrap=True)
        flagged = [st.materializer.names[i] for i in st.strategy.items[:st.strategy.likely]]
        if opts.search_order == "sensitivity":
            cli.console.print(f"order: {len(flagged)} node(s) stand out"
                              + (f" and come first: {', '.join(flagged[:6])}{' ...' if len(flagged) > 6 else ''}"
                                 if flagged else "") + "; the rest by error band, topological within a band",
                              highlight=False)
        return st.strategy, st.materializer

    def finish(session, outcome):
        st = state["setup"]
        doubt = prec.emulation_disagrees(outcome.result, st, opts, session.root / "emulation")
        outcome.result["conclusive"] = doubt is None
        written = prec.write_result(outcome.result, st, opts, session.result_dir,
                                    publish=doubt is None or s.force_output)
        if data.save_inputs:
            from bisector.data import save_inputs

            save_inputs(st.materializer.samples, data.save_inputs)
        report_precision(cli.results(s.json), session, outcome, written, st, opts, cli._check_argv, cmp, doubt)
        if doubt is None:
            return 0
        return cli.inconclusive(session, f"the answer does not hold under bisector's {opts.precision} emulation: "
                                f"{doubt}. The check ran true {opts.precision} models; if it runs them on "
                                f"onnxruntime's CPU provider, that computes {opts.precision} in fp32 between ops "
                                f"and hides overflow that a GPU shows. Search again with --realize emulate",
                                s.force_output, (opts.output,), failing_log=False)

    try:
        return cli.run_session(strategy_name="precision", model=model, params=opts.params() | {"check": cli._check_argv},
                        s=s, check=check, setup=setup, finish=finish,
                        model_data_dir=opts.external_data_dir)
    except EndpointError as exc:
        if not isinstance(exc, TrivialFails) and realize == "true" and opts.precision != "int8" and cmp.provider == "cpu":
            raise type(exc)(exc.message, hint="onnxruntime CPU computes most fp16 ops in fp32, so a true fp16 model "
                                              "hides overflow there: try --realize emulate") from None
        raise


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


# ---------------------------------------------------------------------------------------- report
def report_precision(console, session, outcome, written, st, opts, check_argv, cmp, doubt=None) -> None:
    from bisector.artifacts.report import write_reports
    from bisector.commands.precision_sensitivity import error_table
    from bisector.commands.reduce_report import checks_line, count, reproduce_command
    from bisector.data import save_outputs
    from bisector.tables import NodeTable

    res = outcome.result
    runner = REFERENCE_RUNNER if opts.reference == "onnxrt" else f"{opts.reference} reference"
    written["reference_outputs"] = str(save_outputs({runner: st.materializer.reference},
                                                    session.result_dir / "reference_outputs.json"))
    repro = reproduce_command(check_argv, opts.iter_artifact, written["checked"], written["inputs"], cmp,
                              reference=written["reference_outputs"], engine=opts.constraints is not None)
    keep = written["kept_nodes"]
    table = NodeTable(f"keep in fp32: {len(keep)} of {count(res['lowerable'], 'node')}",
                      ("node", "op type", "own error", "tensor"), code=(0, 3))
    for k in keep:
        table.add(k["name"], k["op_type"], _err(k.get("error")), k.get("tensor", ""))
    minimal = minimal_text(res, opts)
    md = ["## Answer", "",
          f"Keep **{len(keep)}** of {res['lowerable']} lowerable nodes in fp32 for {opts.precision} "
          f"({outcome.stats.checks} checks, {outcome.stats.cached} cached verdicts reused; {minimal}).", "",
          *table.markdown()]
    if doubt:
        md += ["", f"**Inconclusive:** the answer does not hold under bisector's {opts.precision} emulation: {doubt}. "
                   f"A check that runs true {opts.precision} models on onnxruntime's CPU provider hides overflow; "
                   f"search again with `--realize emulate`."]
    md += ["", f"- mixed-precision model (deploy; TensorRT 11 strongly typed): `{written['mixed']}`",
           f"- model as checked: `{written['checked']}`", f"- keep-set: `{written['keep_fp32']}`" + (
               "" if opts.precision == "int8" else  # compare realizes fp16/bf16 only; int8 is the QDQ model above
               f" (`bisector compare MODEL --precision {opts.precision} --keep-fp32 @{written['keep_fp32']}`)"),
           f"- TensorRT <= 10: `{written['layer_precisions']}`; {_trtexec_md(written)}", "",
           "## Checks per phase", "", "| phase | checks | verdicts (good/bad/skip) |", "|---|---|---|"]
    md += [f"| {p} | {n} | {v} |" for p, n, v in phase_rows(session)]
    if st.errors:
        md += ["", "## Where precision is lost", "",
               "Each node run alone in the low precision on its exact fp32 inputs (the error it adds, not "
               "what it inherits), most sensitive first:", ""]
        md += error_table(st.errors, {k["name"] for k in keep})
    write_reports(session, strategy="precision", stats=outcome.stats, result={**res, **written},
                  answer_md="\n".join(md), reproduce=repro)

    console.print(table.rich())
    console.print(f"{minimal}; {checks_line(outcome.stats)}", highlight=False)
    console.print(f"[bold]mixed model:[/] {written.get('output') or written['mixed']}", highlight=False)
    console.print(f"reproduce: {' '.join(shlex.quote(a) for a in repro)}", highlight=False, soft_wrap=True)


def minimal_text(res: dict, opts) -> str:
    """What the answer's 1-minimality rests on: every removal checked, or some inferred from a
    failing superset, which holds only where keeping more nodes never hurts (bf16 can break it)."""
    if res.get("one_minimal") is None:
        return f"{opts.mode} mode ({opts.direction}): a contiguous run, not minimized"
    if not res["one_minimal"]:
        return "NOT shown 1-minimal: the check skipped a removal"
    inferred = res.get("removals_inferred", 0)
    if not inferred:
        return "1-minimal: removing any one node fails (each removal checked)"
    return (f"1-minimal if keeping more nodes never hurts: {inferred} of {len(res['keep'])} removals inferred from "
            f"failing supersets (--verify-minimal checks each)")


def phase_rows(session) -> list[tuple[str, int, str]]:
    """Checks run per phase (endpoints included; verdicts reused from a cache not counted)."""
    rows: dict[str, list[int]] = {}
    for e in session.journal:
        r = rows.setdefault(e.phase or "?", [0, 0, 0, 0])
        r[0] += e.source == "check"
        r[1 + ("good", "bad", "skip").index(e.verdict.value)] += 1
    return [(p, r[0], f"{r[1]}/{r[2]}/{r[3]}") for p, r in rows.items()]


def _trtexec_md(written: dict) -> str:
    from bisector.commands.precision_trt import trtexec_command

    if written.get("trtexec_flags") is None:
        return f"trtexec cannot express it ({written.get('trtexec_error')})"
    return f"`{trtexec_command(written['trtexec_flags'], 'MODEL')}`"


def _err(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "inf/NaN" if not math.isfinite(value) else f"{value:.3g}"
