"""Wall-time speedup of ``bisector reduce -j N`` with a slow check, and the same answer as ``-j 1``.

    .venv/bin/python bench/reduce_parallel.py [--jobs 1 2 3 4] [--sleep 2.0] [--repeat 1]
        [--only CASE ...] [--markdown FILE] [--json FILE] [--workdir DIR]

Every run gets the same check argv, a slow version of the one ``bench/reduce_vs_polygraphy.py`` uses::

    python bench/reduce_parallel.py --as-check SLEEP LOG -- polygraphy_debug.onnx --fault KIND:NODE[:PARAM]

which sleeps SLEEP seconds, then runs ``bench/check_with_optional_inputs.py`` (``fixtures/faulty_check.py``
in-process, with ``--load-inputs inputs.json`` when bisector wrote one) and appends one JSON line to LOG:
when the check started and ended, in which iteration directory, with which exit code. The sleep stands
for a check whose cost is waiting (a TensorRT build, a device, a remote run): the machine this runs on
has 2 shared cores, and faulty_check itself costs 0.4-0.7 s of CPU, so more than 2 checks at once
would otherwise measure CPU contention, not bisector.

Each case runs ``bisector reduce MODEL -o reduced.onnx --session session -q --events events.jsonl -j N``
in a fresh directory, for every N of ``--jobs`` in turn (``--repeat`` rounds of that). Reported per
case and N (counts that vary between rounds are shown as a span, times are medians):

- *checks run*: ``report.json`` ``checks`` (the LOG must have as many lines: a difference is flagged);
  "+K killed": speculative checks started but stopped when the search ended (no verdict, no LOG line);
- *verdicts used*: checks whose verdict the search asked for. The search is a pure function of the
  verdicts it is told, so ``-j N`` asks exactly the candidates ``-j 1`` checked (fingerprints are
  stable across sessions): a check is used when ``-j 1`` checked its fingerprint too, the rest is
  speculation the search never asked for;
- *on demand*: checks started because the search was waiting for that very verdict (not
  speculative); every other verdict it asked for was already known or already running (at ``-j 1``:
  all of them);
- *mean check s*: the engine's check durations (command start to exit, sleep included): it grows
  with N when the checks' own CPU work contends for the cores;
- *loop in checks* = loop s / mean check s: how many check times the search waited for in a row (at
  ``-j 1`` about the number of checks). speedup ~ loop in checks (-j 1 / -j N) x mean check s
  (-j 1 / -j N): what speculation saves, times what contention costs;
- *wall s* (the whole command), *speedup* = median wall of ``-j 1`` / median wall of ``-j N``,
  *loop s* (events ``start`` to ``done``: the search, without setup and writing the result);
- *busy* = seconds inside checks / loop seconds (about 1.0 at ``-j 1``; N if every slot were always busy);
- *same answer as -j 1*: ``report.json`` culprit names and the nodes of ``reduced.onnx`` are ``-j 1``'s,
  and the search asked the same candidates (the engine's contract). Exit code 1 if any run differs.

``--json`` keeps every run, with its per-check timeline from LOG (start and end, relative to the
loop's start, speculative or not).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent
CHECK_FLAG = "--as-check"
ARTIFACT = "polygraphy_debug.onnx"
DEFAULT_JOBS = (1, 2, 3, 4)
DEFAULT_SLEEP_S = 2.0
DEFAULT_TIMEOUT_S = 900
CONSOLE_WIDTH = 200  # when printing to a file or pipe
SAME_TIME_S = 0.05  # checks started this close together were submitted by one ask
WHY = {  # what started beside an on-demand check (events), for the second table
    "endpoint": "the full-model check, always waited for (the search's first ask starts beside it)",
    "with speculation": "speculative checks were started with it",
    "none, a slot busy": "nothing was started with it while a check the search no longer waited for still ran",
    "none, slots free": "nothing was started with it although every slot was free: the search offered nothing",
}


@dataclass
class Case:
    id: str
    fixture: str
    fault: str
    note: str


CASES = [
    Case("chain", "chain", "scale:relu4", "20 nodes in a line"),
    Case("long-chain", "wide_1000", "scale:w83_tanh", "1,000 nodes, a line of residual blocks, culprit early"),
    Case("long-chain-late", "wide_1000", "scale:w160_tanh", "same model, culprit near the end"),
    Case("diamond", "diamond", "scale:branch_a_relu", "one branch of the 58-node diamond"),
    Case("transformer-residual", "transformer", "scale:add_residual1",
         "residual add read by a LayerNorm and the next residual add"),
    Case("squeezenet", "light_squeezenet", "scale:n33", "real architecture, Conv in a fire module"),
]


@dataclass
class Run:
    case: str
    jobs: int
    round: int
    status: str = "ok"  # ok | error | timeout
    checks: int | None = None  # report.json
    logged: int | None = None  # lines in the check's LOG
    used: int | None = None  # filled by summarize(): needs the -j 1 run
    asks: int | None = None
    cached: int | None = None
    on_demand: int | None = None  # checks started because the search waited for that verdict
    killed: int | None = None  # speculation stopped when the search ended (no verdict journaled)
    why: dict[str, int] = field(default_factory=dict)  # on-demand checks by what ran beside them (WHY)
    wall_s: float | None = None
    loop_s: float | None = None
    check_s: float | None = None  # sum of the checks' durations (engine: command start to exit)
    culprits: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # fingerprints checked
    asked_seen: list[str] = field(default_factory=list)  # fingerprints the events show were asked for
    reduced_nodes: list[str] = field(default_factory=list)
    timeline: list[dict] = field(default_factory=list)  # per check: iteration, speculative, start, end (LOG)
    same: bool | None = None  # same answer and same search as the baseline run
    note: str = ""

    @property
    def busy(self) -> float | None:
        return self.check_s / self.loop_s if self.check_s is not None and self.loop_s else None

    @property
    def mean_check_s(self) -> float | None:
        return self.check_s / self.checks if self.check_s is not None and self.checks else None

    @property
    def serial(self) -> float | None:
        """The loop's length in mean checks: how many check times the search waited in a row."""
        return self.loop_s / self.mean_check_s if self.loop_s and self.mean_check_s else None


# -- the check --------------------------------------------------------------------------------
def check_argv(sleep_s: float, log: Path, fault: str) -> list[str]:
    return [str(BIN / "python"), str(Path(__file__).resolve()), CHECK_FLAG, f"{sleep_s:g}", str(log), "--",
            ARTIFACT, "--fault", fault]


def as_check(argv: list[str]) -> int:
    """``--as-check SLEEP LOG -- CHECK ARGS``: sleep, run the check in this process, log one line."""
    sleep_s, log, rest = float(argv[0]), argv[1], argv[3:]
    start = time.time()
    time.sleep(sleep_s)
    from bench.check_with_optional_inputs import main as check_main

    rc = check_main(rest)
    line = json.dumps({"start": start, "end": time.time(), "cwd": os.getcwd(), "rc": rc}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines of parallel checks never mix
    finally:
        os.close(fd)
    return rc


# -- one run ----------------------------------------------------------------------------------
def model_nodes(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def analyse(run: Run, events: list[dict], log: list[dict]) -> None:
    """Fill loop/on_demand/busy and the timeline from the event stream and the check's LOG."""
    start = next(e["time"] for e in events if e["event"] == "start")
    done = next(e["time"] for e in events if e["event"] == "done")
    run.loop_s = done - start
    asked = {e["fingerprint"] for e in events if e["event"] == "check-start" and not e["speculative"]}
    asked |= {e["fingerprint"] for e in events if e["event"] == "cached"}
    verdicts = {e["iteration"]: e for e in events if e["event"] == "verdict"}
    run.checked = sorted(v["fingerprint"] for v in verdicts.values())
    run.asked_seen = sorted(asked)
    run.cached = sum(e["event"] == "cached" for e in events)
    run.on_demand = sum(e["event"] == "check-start" and not e["speculative"] for e in events)
    run.why = classify(events)
    run.killed = sum(e["event"] == "check-start" for e in events) - len(verdicts)
    spans = []
    for line in log:
        iteration = int(Path(line["cwd"]).name)
        v = verdicts.get(iteration, {})
        spans.append({"iteration": iteration, "speculative": v.get("speculative"), "verdict": v.get("verdict"),
                      "start": round(line["start"] - start, 3), "end": round(line["end"] - start, 3)})
    spans.sort(key=lambda s: s["start"])
    run.timeline = spans
    run.check_s = sum(v["duration_s"] for v in verdicts.values())


def classify(events: list[dict]) -> dict[str, int]:
    """Count the on-demand checks by what started with them (see WHY)."""
    starts = [e for e in events if e["event"] == "check-start"]
    ended = {e["iteration"]: e["time"] for e in events if e["event"] == "verdict"}
    out = dict.fromkeys(WHY, 0)
    for e in starts:
        if e["speculative"]:
            continue
        t = e["time"]
        if e["phase"] == "endpoints":
            out["endpoint"] += 1
        elif any(s["speculative"] and abs(s["time"] - t) <= SAME_TIME_S for s in starts):
            out["with speculation"] += 1
        elif any(s["time"] < t and ended.get(s["iteration"], t) > t for s in starts):
            out["none, a slot busy"] += 1
        else:
            out["none, slots free"] += 1
    return out


def run_one(case: Case, model: Path, jobs: int, rnd: int, sleep_s: float, workdir: Path, timeout: float) -> Run:
    run = Run(case.id, jobs, rnd)
    d = workdir / case.id / f"j{jobs}-r{rnd}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    log = d / "checks.jsonl"
    argv = [str(BIN / "bisector"), "reduce", str(model), "-o", "reduced.onnx", "--session", "session", "-q",
            "--events", "events.jsonl", "-j", str(jobs), "--check", *check_argv(sleep_s, log, case.fault)]
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=d, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        run.status, run.wall_s, run.note = "timeout", time.monotonic() - start, f"killed after {timeout:.0f} s"
        return run
    run.wall_s = time.monotonic() - start
    (d / "tool.log").write_text(proc.stdout + proc.stderr)
    report = d / "session" / "result" / "report.json"
    if proc.returncode != 0 or not report.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        run.status, run.note = "error", f"exit {proc.returncode}: {tail[0][:160]}"
        return run
    rep = json.loads(report.read_text())
    run.checks = rep["checks"]
    run.asks = 1 + sum(rep["result"]["checks_per_phase"].values())  # + the endpoint (full model)
    run.culprits = rep["result"]["node_names"]
    run.reduced_nodes = model_nodes(d / "reduced.onnx")
    lines = read_jsonl(log)
    run.logged = len(lines)
    if run.logged != run.checks:
        run.note = f"report says {run.checks} checks, the check ran {run.logged} times"
    analyse(run, read_jsonl(d / "events.jsonl"), lines)
    return run


# -- summary ----------------------------------------------------------------------------------
def compare_to_base(run: Run, base: Run) -> None:
    """Verdicts used, and whether ``run`` searched like ``base`` (a ``-j 1`` run of the same case).

    The search is a pure function of the verdicts it is told, so ``-j N`` must ask exactly the
    candidates ``-j 1`` asked, and ``-j 1`` checks exactly what it asks (fingerprints are the same
    across sessions). A check of ``run`` is *used* when ``base`` checked its fingerprint too.
    """
    mine, theirs = set(run.checked), set(base.checked)
    run.used = len(mine & theirs)
    differs = []
    if run.culprits != base.culprits or run.reduced_nodes != base.reduced_nodes:
        differs.append(f"answer {run.culprits} != {base.culprits}")
    if not theirs <= mine or not set(run.asked_seen) <= theirs or run.asks != base.asks:
        differs.append(f"search differs ({run.asks} asks, -j {base.jobs}: {base.asks})")
    run.note = "; ".join([run.note, *differs]).strip("; ")
    run.same = not differs


@dataclass
class Row:
    case: str
    jobs: int
    runs: list[Run]
    base: list[Run]  # the baseline runs (first --jobs, i.e. -j 1) of the same case

    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]

    def median(self, attr: str, runs: list[Run] | None = None) -> float | None:
        vals = [getattr(r, attr) for r in (self.ok() if runs is None else runs) if r.status == "ok"]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    def speedup(self, attr: str) -> float | None:
        mine, base = self.median(attr), self.median(attr, self.base)
        return base / mine if mine and base else None

    def same(self) -> bool | None:
        if not self.ok() or any(r.same is None for r in self.ok()):
            return None
        return all(r.same for r in self.ok())

    def span(self, attr: str) -> str:
        vals = sorted({getattr(r, attr) for r in self.ok()} - {None})
        if not vals:
            return "-"
        return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}"


def summarize(runs: list[Run], cases: list[Case], jobs: list[int]) -> list[Row]:
    rows = []
    for c in cases:
        base = [r for r in runs if r.case == c.id and r.jobs == jobs[0]]
        ref = next((r for r in base if r.status == "ok"), None)
        for r in runs:
            if r.case == c.id and r.status == "ok" and ref is not None:
                compare_to_base(r, ref)
        for j in jobs:
            rows.append(Row(c.id, j, [r for r in runs if r.case == c.id and r.jobs == j], base))
    return rows


COLUMNS = ("case", "-j", "checks run", "verdicts used", "on demand", "mean check s", "loop in checks", "loop s",
           "wall s", "speedup", "busy", "same answer as -j 1", "culprits")


def cells(row: Row) -> list[str]:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    same = row.same()
    bad = [r for r in row.runs if r.status != "ok"]
    culprits = ", ".join(row.ok()[0].culprits) if row.ok() else "; ".join(f"{r.status}: {r.note}" for r in bad)
    killed = row.span("killed")
    checks = row.span("checks") + ("" if killed in ("0", "-") else f" +{killed} killed")
    return [row.case, str(row.jobs), checks, row.span("used"), row.span("on_demand"),
            f(row.median("mean_check_s"), ".2f"), f(row.median("serial"), ".1f"), f(row.median("loop_s"), ".1f"),
            f(row.median("wall_s"), ".1f"), f(row.speedup("wall_s"), ".2f") + "x", f(row.median("busy"), ".2f"),
            "-" if same is None else ("yes" if same else "NO"), culprits]


def print_table(rows: list[Row], sleep_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bisector reduce -j N, check = faulty_check + {sleep_s:g} s sleep")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("case", "culprits", "same answer as -j 1") else "right")
    for i, row in enumerate(rows):
        table.add_row(*cells(row), end_section=i + 1 < len(rows) and rows[i + 1].case != row.case)
    console = Console(width=None if sys.stdout.isatty() else CONSOLE_WIDTH)
    console.print(table)
    why = Table(title="on-demand checks by what started beside them (-j > 1)")
    for col in ("case", "-j", *WHY):
        why.add_column(col, justify="left" if col == "case" else "right")
    for row in rows:
        if row.jobs > 1:
            why.add_row(row.case, str(row.jobs), *why_cells(row))
    console.print(why)
    for key, text in WHY.items():
        console.print(f"  {key}: {text}")


def why_cells(row: Row) -> list[str]:
    return ["-".join(map(str, sorted({r.why.get(k, 0) for r in row.ok()}))) or "-" for k in WHY]


def markdown(rows: list[Row], argv: list[str], total_s: float) -> str:
    from bench.reduce_vs_polygraphy import machine

    lines = [f"Machine: {machine()}. Whole run: {total_s:.0f} s.", "",
             "Command: `" + " ".join([".venv/bin/python bench/reduce_parallel.py", *argv]) + "`", "",
             "| " + " | ".join(COLUMNS) + " |",
             "|---|" + "---:|" * (len(COLUMNS) - 3) + "---|---|"]
    for i, row in enumerate(rows):
        c = cells(row)
        if i and rows[i - 1].case == row.case:
            c[0] = ""
        lines.append("| " + " | ".join(c) + " |")
    lines += ["", "On-demand checks by what started beside them:", "",
              "| case | -j | " + " | ".join(WHY) + " |", "|---|---:|" + "---:|" * len(WHY)]
    for row in rows:
        if row.jobs > 1:
            lines.append(f"| {row.case} | {row.jobs} | " + " | ".join(why_cells(row)) + " |")
    lines += [""] + [f"- *{key}*: {text}." for key, text in WHY.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, nargs="+", default=list(DEFAULT_JOBS), help="the first is the baseline")
    ap.add_argument("--sleep", type=float, default=DEFAULT_SLEEP_S, help="seconds every check sleeps")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over every -j (medians; spans of counts)")
    ap.add_argument("--only", nargs="+", metavar="CASE", help=f"cases: {', '.join(c.id for c in CASES)}")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    ap.add_argument("--json", type=Path, help="write every run here (timelines included)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per bisector run")
    ap.add_argument("--workdir", type=Path, help="keep runs here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)
    if args.jobs[0] != 1:
        ap.error("--jobs must start with 1: -j 1 is the baseline (speedup, verdicts used, same answer)")
    cases = CASES
    if args.only:
        unknown = set(args.only) - {c.id for c in CASES}
        if unknown:
            ap.error(f"unknown case(s) {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.id in args.only]
    from fixtures import fixture_path

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-parallel-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    runs = []
    try:
        for case in cases:
            model = fixture_path(case.fixture)
            for rnd in range(args.repeat):
                for j in args.jobs:
                    r = run_one(case, model, j, rnd, args.sleep, workdir, args.timeout)
                    runs.append(r)
                    print(f"  {case.id:22s} -j {j} round {rnd}: {r.status} checks={r.checks} "
                          f"on_demand={r.on_demand} wall={r.wall_s:.1f}s loop={r.loop_s or 0:.1f}s culprits={r.culprits} "
                          f"{r.note}",
                          flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - start
    rows = summarize(runs, cases, args.jobs)
    print_table(rows, args.sleep)
    text = markdown(rows, argv, total)
    if args.markdown:
        args.markdown.write_text(text)
        print(f"wrote {args.markdown}")
    if args.json:
        args.json.write_text(json.dumps({"sleep_s": args.sleep, "jobs": args.jobs, "total_s": total,
                                         "cases": [asdict(c) for c in cases],
                                         "runs": [{**asdict(r), "busy": r.busy, "mean_check_s": r.mean_check_s,
                                                   "serial": r.serial} for r in runs]}, indent=1))
    return 1 if any(row.same() is not True or any(r.status != "ok" for r in row.runs) for row in rows) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == [CHECK_FLAG]:
        sys.exit(as_check(sys.argv[2:]))
    sys.exit(main())
