"""What ``bisector precision`` reports: the keep-set table, ``report.md``'s answer (with the
per-node error table) and the command that checks the answer again, as a :class:`Report`."""

from __future__ import annotations

import math

from bisector.commands.base import Report, Table

REFERENCE_RUNNER = "onnxrt-cpu fp32"


def precision_report(session, outcome, written: dict, st, opts, check, doubt: str | None) -> Report:
    from bisector.commands.precision_sensitivity import error_table
    from bisector.commands.reduce_report import checks_line, count, reproduce_command
    from bisector.commands.results import PrecisionResult
    from bisector.data import save_outputs

    res = outcome.result
    runner = REFERENCE_RUNNER if opts.reference == "onnxrt" else f"{opts.reference} reference"
    written["reference_outputs"] = str(save_outputs({runner: st.materializer.reference},
                                                    session.result_dir / "reference_outputs.json"))
    repro = reproduce_command(check, opts.iter_artifact, written["checked"], written["inputs"],
                              reference=written["reference_outputs"], engine=opts.constraints is not None)
    keep = written["kept_nodes"]
    table = Table(f"keep in fp32: {len(keep)} of {count(res['lowerable'], 'node')}",
                  ("node", "op type", "own error", "tensor"),
                  tuple((k["name"], k["op_type"], _err(k.get("error")), k.get("tensor", "")) for k in keep), code=(0, 3))
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
    lines = (f"{minimal}; {checks_line(outcome.stats)}", f"mixed model: {written.get('output') or written['mixed']}")
    why = "" if doubt is None else (
        f"the answer does not hold under bisector's {opts.precision} emulation: {doubt}. The check ran true "
        f"{opts.precision} models; if it runs them on onnxruntime's CPU provider, that computes {opts.precision} "
        f"in fp32 between ops and hides overflow that a GPU shows. Search again with --realize emulate")
    held = (str(opts.output),) if doubt is not None and opts.output is not None and not written.get("output") else ()
    return Report(result=PrecisionResult.of(res, written, doubt is None), files=_files(written),
                  markdown="\n".join(md), table=table, lines=lines, reproduce=tuple(repro) if repro else None,
                  conclusive=doubt is None, doubt=why, show_failing_log=False, not_written=held)


def _files(written: dict) -> dict:
    return {k: v for k, v in written.items() if k != "kept_nodes"}


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
