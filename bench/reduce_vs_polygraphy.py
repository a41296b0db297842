"""bisector reduce against polygraphy debug reduce (bisect and linear), same check, same fault.

    .venv/bin/python bench/reduce_vs_polygraphy.py [--markdown docs/bench_reduce.md] [--json out.json]
        [--only CASE ...] [--tools pg-bisect pg-linear bisector] [--with-slow] [--timeout 900]

Every run gets the same check argv::

    python bench/check_with_optional_inputs.py --counter COUNTER polygraphy_debug.onnx --fault KIND:NODE[:PARAM]

(``fixtures/faulty_check.py`` run in-process by a wrapper that counts each call in COUNTER and adds
``--load-inputs inputs.json`` when that file exists in the check's working directory: bisector
writes it, Polygraphy never does). Each tool runs in its own fresh directory, one after another
(``-j 1``). Reported per tool: checks (lines in COUNTER), wall seconds of the whole command,
nodes in the model written by ``-o`` (``onnx``, top-level nodes), whether that model contains the
culprit node, and whether the check still fails on it on its own (bisector: with the inputs file it
writes beside ``-o``; Polygraphy: with the default inputs, as during its search).

Targets (issue 4) checked per case: bisector needs at most 2*ceil(log2 N)+4 checks and returns
exactly the culprit (1 node); no more checks than Polygraphy bisect; no more nodes than Polygraphy
linear. ``--with-slow`` also runs Polygraphy linear where it is skipped by default
(``light_resnet50``: ~300 checks of ~1-2 s each; ``wide_1000``: 1,000+ checks).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent
WRAPPER = ROOT / "bench" / "check_with_optional_inputs.py"
TOOLS = ("pg-bisect", "pg-linear", "bisector")
TOOL_TITLES = {"pg-bisect": "polygraphy bisect", "pg-linear": "polygraphy linear", "bisector": "bisector auto"}
DEFAULT_TIMEOUT_S = 900
ARTIFACT = "polygraphy_debug.onnx"


@dataclass
class Case:
    id: str
    fixture: str
    fault: str
    culprit: str
    note: str
    slow_tools: tuple[str, ...] = ()  # skipped unless --with-slow
    slow_reason: str = ""


CASES = [
    Case("chain", "chain", "scale:relu4", "relu4", "single culprit in a line"),
    Case("convnet-branch", "convnet", "bias:conv2b", "conv2b", "one branch of a diamond"),
    Case("convnet-skip", "convnet", "scale:add_skip4", "add_skip4", "the join of a skip connection"),
    Case("convnet-threshold", "convnet", "threshold:relu4:2.0", "relu4",
         "data-dependent: shows only with real activations (> 2.0)"),
    Case("diamond", "diamond", "scale:branch_a_relu", "branch_a_relu", "one branch of the 58-node diamond"),
    Case("transformer", "transformer", "scale:softmax", "softmax", "attention softmax"),
    Case("transformer-residual", "transformer", "scale:add_residual1", "add_residual1",
         "residual add read by a LayerNorm (scale-invariant) and by the next residual add"),
    Case("squeezenet", "light_squeezenet", "scale:n33", "n33", "Conv mid-graph (fire module)"),
    Case("resnet50", "light_resnet50", "scale:n84", "n84", "Conv mid-graph (bottleneck block)",
         slow_tools=("pg-linear",), slow_reason="~300 checks at 1-2 s each (100 MB of weights loaded twice per check)"),
    Case("resnet50-threshold", "light_resnet50", "threshold:n89:2.0", "n89",
         "data-dependent, Relu after a residual Sum", slow_tools=("pg-linear",),
         slow_reason="~300 checks at 1-2 s each (100 MB of weights loaded twice per check)"),
    Case("wide_1000", "wide_1000", "scale:w83_tanh", "w83_tanh", "generated, 1,000 nodes, culprit in the middle",
         slow_tools=("pg-linear",), slow_reason="1,000+ checks"),
]


@dataclass
class Run:
    tool: str
    status: str = "ok"  # ok | skipped | timeout | error
    checks: int | None = None
    seconds: float | None = None
    nodes: int | None = None
    has_culprit: bool | None = None
    recheck_fails: bool | None = None
    self_reported_checks: int | None = None
    node_names: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Result:
    case: Case
    nodes: int
    bound: int
    runs: dict[str, Run]


def check_argv(counter: Path | None, fault: str, model: str = ARTIFACT) -> list[str]:
    head = [str(BIN / "python"), str(WRAPPER)]
    if counter is not None:
        head += ["--counter", str(counter)]
    return [*head, model, "--fault", fault]


def tool_argv(tool: str, model: Path, fault: str, counter: Path) -> list[str]:
    check = ["--check", *check_argv(counter, fault)]
    if tool == "bisector":
        return [str(BIN / "bisector"), "reduce", str(model), "-o", "reduced.onnx", "--session", "session", "-q",
                *check]
    mode = tool.split("-", 1)[1]
    return [str(BIN / "polygraphy"), "debug", "reduce", str(model), "-o", "reduced.onnx", "--mode", mode, *check]


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def model_nodes(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]


def run_tool(tool: str, case: Case, model: Path, workdir: Path, timeout: float) -> Run:
    run = Run(tool)
    d = workdir / case.id / tool
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    counter = workdir / case.id / f"{tool}.count"
    counter.unlink(missing_ok=True)
    argv = tool_argv(tool, model, case.fault, counter)
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=d, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        run.status, run.seconds = "timeout", time.monotonic() - start
        run.checks = count_lines(counter)
        run.note = f"killed after {timeout:.0f} s"
        return run
    run.seconds = time.monotonic() - start
    run.checks = count_lines(counter)
    (d / "tool.log").write_text(proc.stdout + proc.stderr)
    out = d / "reduced.onnx"
    if proc.returncode != 0 or not out.exists():
        run.status = "error"
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        run.note = f"exit {proc.returncode}: {tail[0][:160]}"
        return run
    run.node_names = model_nodes(out)
    run.nodes = len(run.node_names)
    run.has_culprit = case.culprit in run.node_names
    recheck = check_argv(None, case.fault, str(out))
    if tool == "bisector":
        recheck += ["--load-inputs", str(d / "reduced_inputs.json")]
        report = d / "session" / "result" / "report.json"
        if report.exists():
            run.self_reported_checks = json.loads(report.read_text()).get("checks")
    rc = subprocess.run(recheck, cwd=d.parent, capture_output=True, text=True).returncode
    run.recheck_fails = rc == 1
    if rc not in (0, 1):
        run.note = f"re-check exit {rc}"
    return run


def bound(n: int) -> int:
    return 2 * math.ceil(math.log2(n)) + 4 if n > 1 else 4


def run_case(case: Case, tools: list[str], workdir: Path, with_slow: bool, timeout: float) -> Result:
    from fixtures import fixture_path

    model = fixture_path(case.fixture)
    n = len(model_nodes(model))
    runs = {}
    for tool in tools:
        if tool in case.slow_tools and not with_slow:
            runs[tool] = Run(tool, status="skipped", note=case.slow_reason)
            continue
        runs[tool] = run_tool(tool, case, model, workdir, timeout)
        r = runs[tool]
        print(f"  {case.id:20s} {tool:10s} {r.status:7s} checks={r.checks} s={_f(r.seconds)} nodes={r.nodes} "
              f"culprit={r.has_culprit} recheck_fails={r.recheck_fails} {r.note}", flush=True)
    return Result(case, n, bound(n), runs)


def misses(res: Result) -> list[str]:
    """The issue-4 targets this case misses (empty: all met)."""
    b, pb, pl = res.runs.get("bisector"), res.runs.get("pg-bisect"), res.runs.get("pg-linear")
    out = []
    if b is None:
        return []  # bisector not among --tools: nothing to judge
    if b.status != "ok":
        return [f"bisector did not finish ({b.status}: {b.note})"]
    if b.checks > res.bound:
        out.append(f"{b.checks} checks > bound {res.bound}")
    if b.nodes != 1 or not b.has_culprit:
        out.append(f"result {b.nodes} nodes ({', '.join(b.node_names[:4])}{', ...' if b.nodes > 4 else ''}), "
                   f"not the culprit alone")
    if not b.recheck_fails:
        out.append("result passes when re-checked")
    if pb is not None and pb.status == "ok" and b.checks > pb.checks:
        out.append(f"more checks than Polygraphy bisect ({b.checks} > {pb.checks})")
    if pl is not None and pl.status == "ok" and b.nodes > pl.nodes:
        out.append(f"more nodes than Polygraphy linear ({b.nodes} > {pl.nodes})")
    if b.self_reported_checks is not None and b.self_reported_checks != b.checks:
        out.append(f"reports {b.self_reported_checks} checks, counted {b.checks}")
    return out


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _yes(x: bool | None) -> str:
    return "-" if x is None else ("yes" if x else "**no**")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnx
    import onnxruntime
    import polygraphy

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, polygraphy {polygraphy.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, bisector at {rev.strip() or '?'}")


def markdown(results: list[Result], tools: list[str], total_s: float, argv: list[str]) -> str:
    lines = [f"Machine: {machine()}. Whole run: {total_s:.0f} s.", "",
             "Command: `" + " ".join([".venv/bin/python bench/reduce_vs_polygraphy.py", *argv]) + "`", "",
             "| case | model | nodes | fault | tool | checks | seconds | reduced nodes | culprit in result "
             "| result fails re-check |",
             "|---|---|---:|---|---|---:|---:|---:|---|---|"]
    for res in results:
        c = res.case
        for i, tool in enumerate(tools):
            r = res.runs[tool]
            head = (f"{c.id} | {c.fixture} | {res.nodes} | `{c.fault}`" if i == 0 else " | | |")
            if r.status == "skipped":
                cells = f"skipped: {r.note} | | | |"
            elif r.status != "ok":
                cells = f"{r.checks}+ | {_f(r.seconds)} | {r.status}: {r.note} | | "
            else:
                cells = f"{r.checks} | {_f(r.seconds)} | {r.nodes} | {_yes(r.has_culprit)} | {_yes(r.recheck_fails)}"
            lines.append(f"| {head} | {TOOL_TITLES[tool]} | {cells} |")
    if "bisector" not in tools:
        return "\n".join(lines) + "\n"
    lines += ["", "Targets per case (bisector: checks <= 2*ceil(log2 N)+4, a 1-node result that is the culprit, "
              "no more checks than Polygraphy bisect, no more nodes than Polygraphy linear):", "",
              "| case | N | bound | bisector checks | Polygraphy bisect checks | bisector nodes "
              "| Polygraphy linear nodes | misses |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for res in results:
        b, pb, pl = (res.runs.get(t) for t in ("bisector", "pg-bisect", "pg-linear"))

        def val(r, attr):
            return "-" if r is None or r.status != "ok" else str(getattr(r, attr))

        m = misses(res)
        lines.append(f"| {res.case.id} | {res.nodes} | {res.bound} | {val(b, 'checks')} | {val(pb, 'checks')} "
                     f"| {val(b, 'nodes')} | {val(pl, 'nodes')} | {'; '.join(m) if m else 'none'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", type=Path, help="write the tables here (default: print them)")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument("--only", nargs="+", metavar="CASE", help=f"cases: {', '.join(c.id for c in CASES)}")
    ap.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    ap.add_argument("--with-slow", action="store_true", help="also run Polygraphy linear where it is skipped")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per tool run")
    ap.add_argument("--workdir", type=Path, help="keep runs here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)
    cases = CASES
    if args.only:
        unknown = set(args.only) - {c.id for c in CASES}
        if unknown:
            ap.error(f"unknown case(s) {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.id in args.only]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-reduce-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results = []
    try:
        for case in cases:
            results.append(run_case(case, args.tools, workdir.resolve(), args.with_slow, args.timeout))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - start
    text = markdown(results, args.tools, total, argv)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        print(f"wrote {args.markdown}")
    print(text)
    if args.json:
        args.json.write_text(json.dumps([{"case": asdict(r.case), "nodes": r.nodes, "bound": r.bound,
                                          "runs": {t: asdict(x) for t, x in r.runs.items()},
                                          "misses": misses(r)} for r in results], indent=1))
    return 1 if any(misses(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
