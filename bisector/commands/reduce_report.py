"""What ``bisector reduce`` prints at the end and writes to ``result/report.md`` / ``report.json``."""

from __future__ import annotations

import os

from bisector.artifacts.report import first_failure
from bisector.commands.base import Report, Table

PHASE_ORDER = ("endpoints", "suffix", "prefix", "removal", "outputs", "inputs", "proof", "control")


def phase_table(session, original: int) -> list[dict]:
    """Checks per phase and the smallest failing candidate known after it."""
    rows, best = [], original
    by_phase: dict[str, list] = {}
    for e in session.journal:
        by_phase.setdefault(e.phase or "?", []).append(e)
    for phase in sorted(by_phase, key=lambda p: PHASE_ORDER.index(p) if p in PHASE_ORDER else 99):
        entries = by_phase[phase]
        bad = [n for e in entries if e.verdict.value == "bad" and (n := _size(e)) is not None]
        if bad and phase != "proof":
            best = min(best, min(bad))
        rows.append({"phase": phase, "checks": sum(1 for e in entries if e.source == "check"),
                     "verdicts": len(entries), "size_after": best})
    return rows


def _size(entry) -> int | None:
    """A journaled candidate's node count (logs written before sizes were journaled: its items)."""
    if entry.size is not None:
        return entry.size
    return len(entry.items) if entry.items is not None else None


def reproduce_command(check, iter_artifact: str, artifact, inputs, *, reference=None, reference_kind: str = "onnxrt",
                      engine: bool = False) -> list[str] | None:
    """The command that checks ``artifact`` (an answer file) again, as the search checked candidates.

    - A command check (``check.argv``): its argv with the iteration's artifact (``iter_artifact``,
      or ``{artifact}``) and ``inputs.json`` (or ``{inputs}``) replaced by ``artifact`` and ``inputs``.
    - Otherwise ``bisector compare ARTIFACT --load-inputs INPUTS`` with the comparison's flags: against
      the ``reference`` outputs file when given (``artifact`` is then already what the check ran, so
      no ``--precision``), else against the target ``check.compare`` describes; or, for an
      ``engine``, ``polygraphy run ... --trt`` against ``reference``.
    - None when there is neither a command nor a comparison to repeat (a person answered).

    Used by ``reduce`` (the reduced model) and ``precision`` (the answer as checked).
    """
    artifact, inputs = str(artifact), str(inputs)
    argv = list(check.argv) if check.kind == "command" else None
    if argv:
        return [artifact if a == iter_artifact else inputs if a == "inputs.json"
                else _absolute(a.replace("{artifact}", artifact).replace("{inputs}", inputs), i, argv,
                               check.launch_dir or os.getcwd())
                for i, a in enumerate(argv)]
    if engine and reference is not None:
        return ["polygraphy", "run", artifact, "--model-type", "engine", "--trt", "--load-inputs", inputs,
                "--load-outputs", str(reference)]
    cmp = check.compare
    if reference is None and cmp is None:
        return None
    cmd = ["bisector", "compare", artifact, "--load-inputs", inputs]
    if reference is not None:
        cmd += ["--load-outputs", str(reference)]
    else:
        cmd += ["--precision", cmp.precision] if cmp.precision else []
        cmd += ["--reference", reference_kind] if reference_kind != "onnxrt" else []
    if cmp is None:
        return cmd
    if cmp.provider != "cpu":
        cmd += ["--provider", cmp.provider]
    for flag, vals in (("--atol", cmp.atol), ("--rtol", cmp.rtol), ("--check-error-stat", cmp.check_error_stat)):
        if vals:
            cmd += [flag, *vals]
    if cmp.error_quantile is not None:
        cmd += ["--error-quantile", str(cmp.error_quantile)]
    if cmp.validate:
        cmd.append("--validate")
    return cmd


def _absolute(arg: str, i: int, argv: list[str], base: str) -> str:
    """A relative path in the check command that names a file where the check was started
    (``base``, its launch directory: ``--load-outputs ref.json``) is made absolute, so the printed
    command works from any directory; the command's own name and ``python -m NAME`` are left alone."""
    prefix, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
    if i == 0 or not value or os.path.isabs(value) or value.startswith("-") or argv[i - 1] == "-m":
        return arg
    path = os.path.join(base, value)
    return f"{prefix}{eq}{path}" if os.path.isfile(path) else arg


def count(n: int, noun: str) -> str:
    """``1 check``, ``2 checks``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def checks_line(stats) -> str:
    """What the search cost: checks over the whole session (and this run's share, on resume), and
    the asks the journal answered without a check."""
    this_run = f" ({stats.run_checks} in this run)" if stats.run_checks != stats.checks else ""
    cached = f", {count(stats.cached, 'answer')} from earlier verdicts" if stats.cached else ""
    return f"checks: {stats.checks} in the session{this_run}{cached}; {stats.elapsed:.1f} s"


NO_PASS = ("no candidate passed the check, not even the model without the answer: a check that fails whatever "
           "it is given (it cannot load the candidate, names the wrong file, lacks an input, times out) drives the "
           "search to its first node, so this answer may mean nothing")
NO_CONTROL = ("no candidate passed the check, and the answer is the whole model, so nothing could be checked without "
              "it: the check may fail whatever it is given")
CAUSES = {"timeout": "timed out", "crash": "was killed by a signal"}


def reduce_doubt(session, res: dict) -> str:
    """Why reduce's answer cannot be trusted, or "": no candidate passed (not even the control), or
    the answer's own failing verdict is a check that did not finish (a timeout, a crash, which
    ``--on-timeout``/``--on-crash bad`` count as failures): the fault was then never seen there."""
    if not res["conclusive"]:
        return NO_CONTROL if len(res["nodes"]) == res["original_nodes"] else NO_PASS
    answer = frozenset(res["nodes"])
    own = [e for e in session.journal if e.source == "check" and e.items is not None
           and frozenset(e.items) == answer and e.verdict.value == "bad"]
    causes = [(e.evidence or {}).get("cause") for e in own]
    if own and all(causes):
        return (f"the answer's only failing check {CAUSES.get(causes[0], causes[0])} (iteration {own[0].iteration}: "
                f"{(own[0].evidence or {}).get('note', '')}), so the check never showed the failure there; run again "
                f"with a longer check timeout, or count timeouts and crashes as skips")
    return ""


def reduce_report(session, outcome, written: dict, opts, check, doubt: str = "") -> Report:
    """reduce's answer as a :class:`Report`: the culprit table, report.md's answer and phases, the
    lines for people and the reproduce command."""
    from bisector.commands.results import ReduceResult

    res = outcome.result
    phases = phase_table(session, res["original_nodes"])
    repro = reproduce_command(check, opts.iter_artifact, written["reduced"], written["reduced_inputs"])
    culprits = written["culprits"]
    table = Table(f"culprit: {len(culprits)} of {count(res['original_nodes'], 'node')}",
                  ("node", "op type", "inputs", "outputs"),
                  tuple((c["name"], c["op_type"], ", ".join(c["inputs"]), ", ".join(c["outputs"])) for c in culprits))
    md = ["## Answer", "",
          f"{count(res['original_nodes'], 'node')} reduced to **{len(culprits)}** in "
          f"{count(outcome.stats.checks, 'check')} ({outcome.stats.cached} cached verdicts reused).", "",
          *table.markdown()]
    conclusive = not doubt
    if doubt:
        md += ["", f"**Inconclusive:** {doubt}. The first failing check: `{first_failure(session)}`."]
    md += ["", f"- reduced model: `{written['reduced']}` (inputs: `{written['reduced_inputs']}`)"]
    if written.get("min_good"):
        md.append(f"- min-good model: `{written['min_good']}` (inputs: `{written['min_good_inputs']}`)")
    if res.get("one_minimal") is not None:
        md.append(f"- 1-minimal proof: {'every single removal passes' if res['one_minimal'] else 'NOT 1-minimal'}")
    md += ["", "## Phases", "", "| phase | checks | size after |", "|---|---|---|"]
    md += [f"| {p['phase']} | {p['checks']} | {p['size_after']} |" for p in phases]
    lines = ["phases: " + ", ".join(f"{p['phase']} {count(p['checks'], 'check')} -> "
                                     f"{count(p['size_after'], 'node')}" for p in phases),
             checks_line(outcome.stats)]
    if written.get("output"):
        lines.append(f"reduced model: {written['output']}")
    held = tuple(str(p) for p in (opts.output, opts.min_good) if p is not None and not conclusive
                 and not written.get("output"))
    result = ReduceResult.of({**res, "conclusive": conclusive}, written, phases)
    files = {k: v for k, v in written.items() if k not in ("culprits", "graph_inputs", "graph_outputs")}
    return Report(result=result, files=files, markdown="\n".join(md), table=table, lines=tuple(lines),
                  reproduce=tuple(repro) if repro else None, conclusive=conclusive, doubt=doubt,
                  not_written=held)
