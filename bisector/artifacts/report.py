"""``result/report.json`` and ``result/report.md``: the answer, every iteration, and a command that
reproduces the failure. Written so it can be attached to a bug report as it is."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from bisector.artifacts.session import Session, write_json
from bisector.errors import UserError


def iteration_rows(session: Session) -> list[dict[str, Any]]:
    rows = []
    for e in session.journal:
        ev = e.evidence or {}
        rows.append({"iteration": e.iteration, "phase": e.phase, "candidate": e.label, "verdict": e.verdict.value,
                     "duration_s": ev.get("duration_s"), "source": e.source, "speculative": e.speculative,
                     "note": ev.get("note", ""), "exit_code": ev.get("exit_code"), "fingerprint": e.fingerprint})
    return rows


def first_failure(session: Session) -> str:
    """Where to look when a search cannot be trusted: the first failing check's log and its last
    line (for a check without a log, its note), e.g. ``iterations/0001/check.log: ModuleNotFoundError:
    No module named 'onnx2'``."""
    for e in session.journal:
        if e.source != "check" or e.verdict.value != "bad":
            continue
        ev = e.evidence or {}
        log = session.root / "iterations" / f"{e.iteration:04d}" / "check.log" if e.iteration is not None else None
        if log is not None and log.is_file():
            lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
            last = lines[-1][:300] if lines else "(empty log)"
            note = ev.get("note")
            return f"{log}: {last}" + (f" [{note}]" if note and note not in last else "")
        return f"iteration {e.iteration}: {ev.get('note') or 'failed'} (exit code {ev.get('exit_code')})"
    return "no check failed in this session"


def write_reports(session: Session, *, strategy: str, stats, result: dict[str, Any], answer_md: str,
                  reproduce: list[str] | None, extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    rows = iteration_rows(session)
    doc = {
        "strategy": strategy,
        "conclusive": bool(result.get("conclusive", True)),
        "checks": stats.checks,  # the whole session's, every run (see engine.Stats)
        "checks_this_run": stats.run_checks,
        "cached": stats.cached,
        "verdicts": dict(stats.verdicts),
        "elapsed_s": round(stats.elapsed, 3),
        "result": result,
        "iterations": rows,
        "reproduce": reproduce,
        "session": str(session.root),
        "command": session.meta.get("command"),
        "versions": session.meta.get("versions"),
        **(extra or {}),
    }
    rd = session.result_dir
    json_path = write_json(rd / "report.json", doc)
    md = [f"# bisector {strategy} report", "", answer_md.rstrip(), ""]
    if reproduce:
        md += ["## Reproduce", "", "```", " ".join(shlex.quote(a) for a in reproduce), "```", ""]
    md += ["## Run", "",
           f"- command: `{' '.join(shlex.quote(a) for a in session.meta.get('command') or [])}`",
           f"- checks run: {stats.checks} in the session, {stats.run_checks} in its last run "
           f"(cached verdicts reused: {stats.cached}); "
           f"good {stats.verdicts['good']}, bad {stats.verdicts['bad']}, skip {stats.verdicts['skip']}",
           f"- elapsed: {stats.elapsed:.1f} s",
           f"- versions: {', '.join(f'{k} {v}' for k, v in (session.meta.get('versions') or {}).items())}",
           "", "## Iterations", "", "| # | phase | candidate | verdict | time (s) | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        it = "-" if r["iteration"] is None else r["iteration"]
        dur = "" if r["duration_s"] is None else f"{r['duration_s']:.2f}"
        note = r["note"] + (" (speculative)" if r["speculative"] else "") + ("" if r["source"] == "check" else f" ({r['source']})")
        md.append(f"| {it} | {r['phase']} | {r['candidate']} | {r['verdict']} | {dur} | {note.strip()} |")
    md_path = rd / "report.md"
    try:
        md_path.write_text("\n".join(md) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {md_path}: {exc.strerror or exc}",
                        hint=f"make room, then: bisector resume {session.root}") from None
    return md_path, json_path
