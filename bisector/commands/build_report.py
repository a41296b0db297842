"""The build hunt's answer: rank the (layer, tactic) pairs of its good and bad builds, write
``result/suspects.json`` (best first) and describe the hunt for ``report.md``: the pass rate, the
pass rate over time, and the suspects table (worth attaching to a TensorRT bug)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bisector.checks.base import Verdict
from bisector.commands.base import Report, Table

TOP_SUSPECTS = 10  # rows of the suspects table (suspects.json holds them all)
RATE_BLOCKS = 10  # the pass rate over time: at most this many blocks of builds


def read_builds(session, numbers: list[int]) -> tuple[list[tuple[dict[str, str], bool]], list[int]]:
    """``(tactics, failed)`` of each good or bad build the journal holds, and the build numbers whose
    tactics file could not be read (left out of the ranking)."""
    from bisector.build.tactics import pairs, read_tactics
    from bisector.commands.build import KEPT_TACTICS, hunt_builds

    known = hunt_builds(session)
    builds, unread = [], []
    for i in numbers:
        entry, workdir = known.get(i, (None, None))
        if entry is None or entry.verdict not in (Verdict.GOOD, Verdict.BAD):
            continue
        try:
            builds.append((pairs(read_tactics(workdir / KEPT_TACTICS)), entry.verdict == Verdict.BAD))
        except (OSError, ValueError):
            unread.append(i)
    return builds, unread


def rate_rows(res: dict[str, Any]) -> list[tuple[str, ...]]:
    """The pass rate by blocks of builds: ``(builds a-b, good, bad, pass rate so far)``."""
    good, bad = set(res.get("good_builds", ())), set(res.get("bad_builds", ()))
    n = res["builds"]
    if not n:
        return []
    step = max(1, -(-n // RATE_BLOCKS))
    rows, g_total, b_total = [], 0, 0
    for lo in range(0, n, step):
        block = range(lo, min(n, lo + step))
        g, b = sum(i in good for i in block), sum(i in bad for i in block)
        g_total, b_total = g_total + g, b_total + b
        so_far = g_total / (g_total + b_total) if g_total + b_total else 0.0
        rows.append((f"{block[0]}-{block[-1]}", str(g), str(b), f"{so_far:.0%}"))
    return rows


def suspects_table(suspects: list[dict]) -> Table:
    rows = tuple((s["layer"], s["tactic"], f"{s['p_value']:.3g}", _num(s["odds_ratio"]), f"{s['ochiai']:.2f}",
                  str(s["bad_with"]), str(s["good_with"]), str(s["bad_without"]), str(s["good_without"]))
                 for s in suspects[:TOP_SUSPECTS])
    return Table("suspects (best first)", ("layer", "tactic", "p-value", "odds ratio", "ochiai", "bad with",
                                           "good with", "bad without", "good without"), rows, code=(0, 1))


def _num(value) -> str:
    return value if isinstance(value, str) else f"{value:.3g}"


def build_report(command, res: dict[str, Any], session, check, force_output: bool) -> Report:
    from bisector.build.ranking import rank, sure, verdict
    from bisector.commands.build import SUSPECTS_NAME, parse_until
    from bisector.commands.results import BuildResult
    from bisector.strategies.build import BUILDER_FAILING

    builds, unread = read_builds(session, sorted(res["good_builds"] + res["bad_builds"]))
    suspects = [s.to_json() for s in rank(builds)] if builds else []
    ranked = rank(builds) if builds else []
    words = verdict(ranked, builds, command.options.confidence)
    result = BuildResult.of(res, suspects, words)
    target = parse_until(command.options.until).verdict
    conclusive, doubt = _conclusive(res, target)
    if res["reason"].startswith(BUILDER_FAILING):
        conclusive, doubt = False, f"{res['reason']}; the last: {_last_skip_note(session)}"
    if conclusive and res["bad"] and res["good"] and not sure(ranked, builds, command.options.confidence):
        conclusive, doubt = False, f"the top suspect is not sure: {words}"
    files = {"suspects_json": str(_write(session.result_dir / SUSPECTS_NAME, suspects))}
    if command.options.output is not None and (conclusive or force_output):
        files["output"] = str(_write(Path(command.options.output), suspects))
    head = (f"stopped after {res['builds']} build(s): {res['reason']}; good {res['good']}, bad {res['bad']}, "
            f"skip {res['skip']}; pass rate {res['pass_rate']:.0%}")
    lines = [head, words] + ([f"tactics of build(s) {unread} could not be read: left out"] if unread else [])
    table = suspects_table(suspects) if suspects else None
    md = ["## Answer", "", head, "", words, ""]
    rates = rate_rows(res)
    if rates:
        md += ["### Pass rate over time", "", *Table("", ("builds", "good", "bad", "pass rate so far"),
                                                     tuple(rates), code=()).markdown(), ""]
    if table is not None:
        md += [f"### Suspects ({len(suspects)} pairs; all in `{SUSPECTS_NAME}`)", "", *table.markdown(), ""]
    return Report(result=result, files=files, markdown="\n".join(md), table=table, lines=tuple(lines),
                  reproduce=tuple(check.argv) if check.kind == "command" else None, conclusive=conclusive,
                  doubt=doubt, show_failing_log=False,
                  not_written=() if conclusive or force_output or command.options.output is None else ("output",))


def _last_skip_note(session) -> str:
    """The note (the builder's last log line) of the last skipped build the journal holds."""
    from bisector.commands.build import hunt_builds

    skips = [(i, e) for i, (e, _) in hunt_builds(session).items() if e.verdict == Verdict.SKIP]
    return (max(skips, key=lambda ie: ie[0])[1].evidence or {}).get("note", "") if skips else ""


def _conclusive(res: dict[str, Any], target: Verdict | None) -> tuple[bool, str]:
    if target is not None:
        reached = res[target.value] > 0
        return reached, "" if reached else f"no build was {target.value} ({res['reason']})"
    if res["bad"] and res["good"]:
        return True, ""
    return False, ("no build failed: there is nothing to rank" if not res["bad"]
                   else "every build failed: the failure follows no tactic that varied")


def _write(path: Path, suspects: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(suspects, indent=1) + "\n")
    return path
