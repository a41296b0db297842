"""Ray: what a check costs on a local Ray cluster against the local executor, and how a reduce and a
build hunt scale with the number of workers (issue 13's targets).

    .venv/bin/python bench/ray_scaling.py [--parts overhead e2e reduce build] [--runs 100]
        [--workers 1 4 16 64] [--ray-workers 1 4 16] [--sleep 1.0] [--build-sleep 1.0]
        [--builds-per-worker 4] [--reduce-case squeezenet] [--markdown FILE] [--json FILE] [--workdir DIR]

Four parts (``--parts``), each a table:

1. *overhead*: one check through the executor API (``bisector.engine.executors.make_executor``,
   ``executor.run(artifact, key)``), a command check of ``true`` on a fresh iteration directory each
   time, ``--runs`` times in a row after ``--warmup`` runs (the first Ray tasks start the worker
   processes): on the ``local`` executor (the check in this thread), and on the ``ray`` executor with
   a local Ray cluster this script starts (``ray.init(address="local", num_cpus=2)``, ``RAY_AUTH_MODE=disabled``;
   ``RayExecutor`` reuses it). Beside them, to say where the difference goes: a bare Ray task that
   does nothing (Ray's own round trip), and ``checks.guard.start_guard`` alone (the guard process
   every Ray check starts). Target: a check costs under 50 ms more on Ray.
2. *e2e*: one whole ``bisector reduce`` of the ``chain`` fixture with the tests' check
   (``fixtures/faulty_check.py polygraphy_debug.onnx --fault scale:relu4 --load-inputs inputs.json``,
   0.2-0.3 s each here) at ``-j 1``: local; ``--executor ray`` on this script's running cluster
   (``--ray-address``: new worker processes for the new job, no cluster start); and ``--executor ray``
   alone with ``RAY_ADDRESS=local`` (the session starts its own local cluster; without it Ray would
   join any cluster already running on the machine). Wall seconds, checks, seconds per check.
3. *reduce*: ``bisector reduce`` of a ~60-node fixture (``--reduce-case``) with a check that sleeps
   ``--sleep`` seconds and then fails exactly when the candidate still holds the culprit node (it looks
   for the node's name field in the ONNX bytes: no onnx import, a few ms of CPU), at every ``-j W`` of
   ``--workers`` on the local executor (threads: a sleeping check costs no CPU, so 64 run at once on
   2 cores), and at every W of ``--ray-workers`` on Ray (``ray.init(num_cpus=W)``, one Ray worker
   process per check in flight, W logical CPUs on this machine's 2 real ones). Columns: checks run
   (+ speculation killed when the search moved on), verdicts used (fingerprints the ``-j 1`` run
   checked too), speculative (checked, never asked for), mean check s (the command's own time, as
   the check measures it), s outside the check (median per check: from the engine's ``check-start``
   event to its verdict, less the check's own time: materializing, Ray's queue, a worker process to
   start, the guard), rounds = loop s / mean check s (how many check times the search waited for in
   a row; on Ray the time outside the checks counts in it), loop s (events ``start`` to ``done``),
   first verdict s (loop start to the first verdict), wall s, speedup (wall of the ``-j 1`` run of the
   same executor / wall), whether the answer and the asked candidates are those of local ``-j 1``,
   and for Ray the most worker processes seen at once (``ray::...``, sampled every 0.5 s) with their
   summed PSS in MB.
4. *build*: ``bisector build MODEL --build-cmd "python bench/ray_scaling.py --as-builder ..." --until N``
   with ``N = --builds-per-worker x W``: the fake builder sleeps ``--build-sleep`` seconds, picks one of
   two tactics for each of 8 layers from the build number and writes the engine and bisector's tactics
   file; the check sleeps ``--sleep`` seconds and fails when the engine says the planted flaw struck.
   Build + wait s: as *s outside the check* above, so the build's own time included. Builds per
   hour = builds / loop s x 3600, and its share of W times the ideal one-worker rate
   (3600 / (build sleep + check sleep)): the target says builds per hour grow linearly with workers.
   The builder runs in the engine's thread on this machine with either executor (materializing is the
   engine's); only the check is a Ray task.

Helper modes, invoked by bisector (they import nothing heavy)::

    python bench/ray_scaling.py --as-check SLEEP NODE {artifact}       # reduce check
    python bench/ray_scaling.py --as-builder SLEEP MODEL ENGINE TACTICS BUILD
    python bench/ray_scaling.py --as-engine-check SLEEP        # build check, in the build's directory

``--json`` keeps every measurement (the per-check times of part 1 included).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()
PY = sys.executable
ARTIFACT = "polygraphy_debug.onnx"
ENGINE = "polygraphy_debug.engine"
LAYERS = [f"layer{i}" for i in range(8)]
FLAKY_LAYER, FLAKY_TACTIC, FAIL_PROB = "layer3", "tB", 0.5


# -- helper modes: keep them light (bisector starts one process per check and per build) ----------
def as_check(argv: list[str]) -> int:
    """``--as-check SLEEP NODE MODEL``: sleep, then exit 1 (bad) if MODEL (the candidate) holds a node
    named NODE: its NodeProto ``name`` field (tag 0x1a, the length, the bytes), not a tensor name."""
    time.sleep(float(argv[0]))
    name = argv[1].encode()
    needle = b"\x1a" + _varint(len(name)) + name
    return 1 if needle in Path(argv[2]).read_bytes() else 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def as_builder(argv: list[str]) -> int:
    """``--as-builder SLEEP MODEL ENGINE TACTICS BUILD``: sleep like a build, then write the engine
    (``flaw`` or ``ok``) and bisector's tactics file (format ``bisector-tactics`` 1, written by hand
    to stay import-free). The build number seeds the tactics and whether the flaw strikes."""
    sleep_s, _model, engine, tactics, build = float(argv[0]), argv[1], argv[2], argv[3], int(argv[4])
    rng = random.Random(build)
    chosen = {layer: rng.choice(("tA", "tB")) for layer in LAYERS}
    flaw = chosen[FLAKY_LAYER] == FLAKY_TACTIC and rng.random() < FAIL_PROB
    time.sleep(sleep_s)
    Path(engine).write_text("flaw" if flaw else "ok")
    layers = [{"layer": layer, "tactic": t, "name": f"impl_{t}", "key": "", "time_ms": None}
              for layer, t in chosen.items()]
    Path(tactics).write_text(json.dumps({"format": "bisector-tactics", "version": 1, "tensorrt": None,
                                         "builder": "ray_scaling", "layers": layers}))
    return 0


def as_engine_check(argv: list[str]) -> int:
    """``--as-engine-check SLEEP``: sleep, then fail when the engine says the flaw struck."""
    time.sleep(float(argv[0]))
    return 1 if Path(ENGINE).read_text() == "flaw" else 0


HELPERS = {"--as-check": as_check, "--as-builder": as_builder, "--as-engine-check": as_engine_check}
if __name__ == "__main__" and sys.argv[1:2] and sys.argv[1] in HELPERS:
    sys.exit(HELPERS[sys.argv[1]](sys.argv[2:]))

# -- the benchmark ----------------------------------------------------------------------------------
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

sys.path.insert(0, str(ROOT))

BIN = Path(PY).parent
DEFAULT_WORKERS = (1, 4, 16, 64)
DEFAULT_RAY_WORKERS = (1, 4, 16)
TIMEOUT_S = 600
REDUCE_CASES = {  # id: (fixture, culprit node, note)
    "squeezenet": ("light_squeezenet", "n33", "65 nodes, a Conv in a fire module"),
    "diamond": ("diamond", "branch_a_relu", "58 nodes, one branch of the diamond"),
    "accumulated": ("accumulated_error", "accum37", "69 nodes"),
}
FAULTY = [PY, str(ROOT / "fixtures" / "faulty_check.py"), ARTIFACT, "--fault", "scale:relu4",
          "--load-inputs", "inputs.json"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}


@contextmanager
def ray_cluster(num_cpus: int):
    """A local Ray cluster of ``num_cpus`` logical CPUs, driven by this process; yields its address."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token in ~/.ray that another cluster may rewrite
    # address "local": a new cluster, never one already running on this machine (another user's)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield ray, ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


class WorkerMemory:
    """Samples this cluster's Ray worker processes (command line ``ray::...``, Ray's agents left out) every
    ``period`` s while running: the most at once and their summed PSS (shared pages split, so the
    sum is what they take together), in MB."""

    def __init__(self, period: float = 0.5):
        import threading

        self.period, self.peak_workers, self.peak_pss_mb = period, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.period):
            parent = {}
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    pass

            def mine(pid: int) -> bool:  # this cluster's processes descend from this one (not another user's)
                while pid > 1:
                    pid = parent.get(pid, 0)
                    if pid == me:
                        return True
                return False

            n, pss = 0, 0
            for pid in parent:
                proc = Path(f"/proc/{pid}")
                try:
                    cmd = (proc / "cmdline").read_bytes()
                    if not cmd.startswith(b"ray::") or b"Agent" in cmd or not mine(pid):
                        continue
                    line = next(ln for ln in (proc / "smaps_rollup").read_text().splitlines() if ln.startswith("Pss:"))
                except (OSError, StopIteration):
                    continue
                n, pss = n + 1, pss + int(line.split()[1])
            self.peak_workers = max(self.peak_workers, n)
            self.peak_pss_mb = max(self.peak_pss_mb, pss / 1024)


def stats_ms(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {"n": len(ms), "median": statistics.median(ms), "mean": statistics.fmean(ms),
            "p90": ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))], "min": ms[0], "max": ms[-1]}


# -- 1. per-check overhead ---------------------------------------------------------------------------
def artifact(root: Path, n: int):
    from bisector.checks.base import Artifact

    workdir = root / "iterations" / f"{n:04d}"
    workdir.mkdir(parents=True)
    return Artifact(workdir=workdir, path=workdir / ARTIFACT, iteration=n, session_dir=root)


def time_executor(kind: str, root: Path, runs: int, warmup: int) -> dict:
    from bisector.checks.base import Verdict
    from bisector.checks.spec import CheckSpec
    from bisector.engine.executors import make_executor

    spec = CheckSpec.command(["true"]).to_json()
    check = CheckSpec.from_json(spec).build()
    made = time.perf_counter()
    executor = make_executor(check, spec, executor=kind)
    made = time.perf_counter() - made
    times, first = [], []
    try:
        for n in range(warmup + runs):
            art = artifact(root / kind, n)
            t = time.perf_counter()
            result = executor.run(art, f"k{n}")
            dt = time.perf_counter() - t
            if result.verdict is not Verdict.GOOD:
                raise RuntimeError(f"{kind}: `true` gave {result.verdict} ({result.note})")
            (first if n < warmup else times).append(dt)
    finally:
        executor.shutdown()
    return {"row": f"{kind} executor, check `true`", "made_s": made, "warmup_s": first, **stats_ms(times),
            "times_s": times}


def time_bare_task(ray, runs: int, warmup: int) -> dict:
    task = ray.remote(_noop).options(num_cpus=1)
    times = []
    for n in range(warmup + runs):
        t = time.perf_counter()
        ray.get(task.remote(n))
        if n >= warmup:
            times.append(time.perf_counter() - t)
    return {"row": "bare Ray task (returns at once)", **stats_ms(times), "times_s": times}


def _noop(n):
    return n


def time_guard(root: Path, runs: int) -> dict:
    from bisector.checks.guard import start_guard

    times = []
    for n in range(runs):
        workdir = root / "guard" / str(n)
        workdir.mkdir(parents=True)
        t = time.perf_counter()
        start_guard(workdir)()
        times.append(time.perf_counter() - t)
    return {"row": "`start_guard` + dismiss alone (in this process)", **stats_ms(times), "times_s": times}


def part_overhead(root: Path, runs: int, warmup: int) -> dict:
    rows = [time_executor("local", root, runs, warmup)]
    with ray_cluster(2) as (ray, _):
        rows.append(time_executor("ray", root, runs, warmup))
        rows.append(time_bare_task(ray, runs, warmup))
    rows.append(time_guard(root, runs))
    local, on_ray = rows[0], rows[1]
    diff = {k: on_ray[k] - local[k] for k in ("median", "mean", "p90")}
    print(f"  overhead: local median {local['median']:.1f} ms, ray median {on_ray['median']:.1f} ms, "
          f"difference {diff['median']:.1f} ms", flush=True)
    return {"runs": runs, "warmup": warmup, "rows": rows, "difference_ms": diff}


# -- runs of the CLI ---------------------------------------------------------------------------------
@dataclass
class CliRun:
    part: str
    executor: str  # local | ray (this cluster) | ray (own cluster)
    workers: int
    status: str = "ok"
    exit_code: int | None = None
    checks: int | None = None
    killed: int = 0
    used: int | None = None
    asks: int | None = None
    wall_s: float | None = None
    loop_s: float | None = None
    check_s: float | None = None  # sum of the engine's check durations
    builds: int | None = None
    first_s: float | None = None  # loop start to the first verdict (Ray: the first workers' start)
    outside_s: float | None = None  # median per check: check-start event to verdict, less the check's own time
    ray_workers_peak: int | None = None
    ray_pss_mb: float | None = None
    culprits: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    same: bool | None = None
    note: str = ""

    @property
    def mean_check_s(self) -> float | None:
        return self.check_s / self.checks if self.check_s and self.checks else None

    @property
    def rounds(self) -> float | None:
        return self.loop_s / self.mean_check_s if self.loop_s and self.mean_check_s else None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_cli(run: CliRun, argv: list[str], d: Path, ok_codes=(0,), extra_env: dict | None = None) -> dict | None:
    """Run ``bisector ARGV`` in ``d`` with the events stream; fill times and counts; the report."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    full = [str(BIN / "bisector"), *argv]
    start = time.monotonic()
    try:
        proc = subprocess.run(full, cwd=d, capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**env(), **(extra_env or {})},
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        run.status, run.wall_s, run.note = "timeout", time.monotonic() - start, f"killed after {TIMEOUT_S} s"
        return None
    run.wall_s = time.monotonic() - start
    run.exit_code = proc.returncode
    (d / "tool.log").write_text(proc.stdout + proc.stderr)
    report = d / "session" / "result" / "report.json"
    if proc.returncode not in ok_codes or not report.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        run.status, run.note = "error", f"exit {proc.returncode}: {tail[0][:200]}"
        return None
    rep = json.loads(report.read_text())
    events = read_jsonl(d / "events.jsonl")
    t0 = next(e["time"] for e in events if e["event"] == "start")
    t1 = next(e["time"] for e in events if e["event"] == "done")
    run.loop_s = t1 - t0
    verdicts = [e for e in events if e["event"] == "verdict"]
    run.first_s = verdicts[0]["time"] - t0 if verdicts else None
    starts = {e["iteration"]: e["time"] for e in events if e["event"] == "check-start"}
    outside = [v["time"] - starts[v["iteration"]] - v["duration_s"] for v in verdicts if v["iteration"] in starts]
    run.outside_s = statistics.median(outside) if outside else None
    run.checks = rep["checks"]
    run.killed = sum(e["event"] == "check-start" for e in events) - len(verdicts)
    run.check_s = sum(v["duration_s"] for v in verdicts)
    run.checked = sorted(v["fingerprint"] for v in verdicts)
    run.asked = sorted({e["fingerprint"] for e in events if e["event"] == "check-start" and not e["speculative"]}
                       | {e["fingerprint"] for e in events if e["event"] == "cached"})
    text = proc.stdout + proc.stderr
    notes = [f"{text.count('Traceback')} traceback(s) in the output" if "Traceback" in text else "",
             f"Ray retried {text.count('Task run_check failed')} failed task(s)" if "Task run_check failed" in text
             else ""]
    run.note = "; ".join(n for n in notes if n)
    return rep


def ray_args(executor: str, address: str | None) -> list[str]:
    if executor == "local":
        return []
    return ["--executor", "ray"] + (["--ray-address", address] if address else [])


# -- 2. end to end -----------------------------------------------------------------------------------
def part_e2e(root: Path) -> list[CliRun]:
    from fixtures import fixture_path

    model = fixture_path("chain")
    out = []

    def one(executor: str, address: str | None) -> None:
        run = CliRun("e2e", executor, 1)
        argv = ["reduce", str(model), "-o", "reduced.onnx", "--session", "session", "-q", "--events",
                "events.jsonl", "-j", "1", *ray_args("local" if executor == "local" else "ray", address),
                "--check", *FAULTY]
        # without --ray-address Ray joins any cluster running on this machine: RAY_ADDRESS=local starts one
        rep = run_cli(run, argv, root / "e2e" / executor.split()[0] / str(len(out)),
                      extra_env=None if address or executor == "local" else {"RAY_ADDRESS": "local"})
        if rep:
            run.culprits = rep["result"]["node_names"]
        out.append(run)
        print(f"  e2e {executor:22s}: {run.status} checks={run.checks} wall={run.wall_s:.1f}s "
              f"loop={run.loop_s or 0:.1f}s culprits={run.culprits} {run.note}", flush=True)

    one("local", None)
    with ray_cluster(2) as (_, address):
        one("ray (running cluster)", address)
    one("ray (own cluster)", None)
    return out


def each_executor(one, runs: list[CliRun], workers: list[int], ray_workers: list[int]) -> None:
    """``one(executor, w, address)`` for every local ``-j w``, then on a fresh Ray cluster of ``w``
    CPUs for every Ray ``w`` (its workers' peak count and memory go to the last run)."""
    for w in workers:
        one("local", w, None)
    for w in ray_workers:
        with ray_cluster(w) as (_, address), WorkerMemory() as mem:
            one("ray", w, address)
        runs[-1].ray_workers_peak, runs[-1].ray_pss_mb = mem.peak_workers, mem.peak_pss_mb


# -- 3. reduce scaling -------------------------------------------------------------------------------
def part_reduce(root: Path, case: str, workers: list[int], ray_workers: list[int], sleep_s: float) -> list[CliRun]:
    from fixtures import fixture_path

    fixture, node, _ = REDUCE_CASES[case]
    model = fixture_path(fixture)
    check = [PY, str(SELF), "--as-check", f"{sleep_s:g}", node, "{artifact}"]
    runs = []

    def one(executor: str, w: int, address: str | None) -> None:
        run = CliRun("reduce", executor, w)
        argv = ["reduce", str(model), "-o", "reduced.onnx", "--session", "session", "-q", "--events",
                "events.jsonl", "-j", str(w), *ray_args(executor, address), "--check", *check]
        rep = run_cli(run, argv, root / "reduce" / f"{executor}-j{w}")
        if rep:
            run.culprits = rep["result"]["node_names"]
            run.asks = 1 + sum(rep["result"]["checks_per_phase"].values())
        runs.append(run)
        print(f"  reduce {executor:5s} -j {w:2d}: {run.status} checks={run.checks} +{run.killed} killed "
              f"wall={run.wall_s:.1f}s loop={run.loop_s or 0:.1f}s rounds={run.rounds or 0:.1f} "
              f"culprits={run.culprits} {run.note}", flush=True)

    each_executor(one, runs, workers, ray_workers)
    base = next((r for r in runs if r.executor == "local" and r.workers == 1 and r.status == "ok"), None)
    for r in runs:
        if base is not None and r.status == "ok":
            r.used = len(set(r.checked) & set(base.checked))
            r.same = (r.culprits == base.culprits == [node] and set(base.checked) <= set(r.checked)
                      and set(r.asked) <= set(base.checked) and r.asks == base.asks)
    return runs


# -- 4. build hunt scaling ---------------------------------------------------------------------------
def part_build(root: Path, workers: list[int], ray_workers: list[int], sleep_s: float, build_sleep_s: float,
               per_worker: int) -> list[CliRun]:
    from fixtures import fixture_path

    model = fixture_path("chain")  # the fake builder does not read it
    build_cmd = f"{PY} {SELF} --as-builder {build_sleep_s:g} {{model}} {{engine}} {{tactics}} {{build}}"
    check = [PY, str(SELF), "--as-engine-check", f"{sleep_s:g}"]
    runs = []

    def one(executor: str, w: int, address: str | None) -> None:
        n = per_worker * w
        run = CliRun("build", executor, w)
        argv = ["build", str(model), "--build-cmd", build_cmd, "--until", str(n), "--session", "session", "-q",
                "--events", "events.jsonl", "-j", str(w), *ray_args(executor, address), "--check", *check]
        rep = run_cli(run, argv, root / "build" / f"{executor}-j{w}", ok_codes=(0, 4))  # 4: ranking not sure
        if rep:
            run.builds = rep["result"]["builds"]
            if run.builds != n:
                run.note = "; ".join(filter(None, [run.note, f"{run.builds} builds, asked for {n}"]))
        runs.append(run)
        print(f"  build  {executor:5s} -j {w:2d}: {run.status} builds={run.builds} checks={run.checks} "
              f"wall={run.wall_s:.1f}s loop={run.loop_s or 0:.1f}s {run.note}", flush=True)

    each_executor(one, runs, workers, ray_workers)
    return runs


# -- tables ------------------------------------------------------------------------------------------
def f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(r) + " |" for r in rows)]


def overhead_lines(o: dict) -> list[str]:
    rows = [[r["row"], f(r["median"], ".1f"), f(r["mean"], ".1f"), f(r["p90"], ".1f"), f(r["min"], ".1f"),
             f(r["max"], ".1f")] for r in o["rows"]]
    d = o["difference_ms"]
    rows.append(["**ray - local**", f"**{d['median']:.1f}**", f"**{d['mean']:.1f}**", f"**{d['p90']:.1f}**", "",
                 ""])
    warm = o["rows"][1]
    return [f"Per check, ms ({o['runs']} checks in a row after {o['warmup']} warm-up checks; Ray executor made in "
            f"{warm['made_s'] * 1000:.0f} ms; its first warm-up check took {warm['warmup_s'][0] * 1000:.0f} ms):", "",
            *table(["", "median", "mean", "p90", "min", "max"], rows)]


def e2e_lines(runs: list[CliRun]) -> list[str]:
    rows = [[r.executor, r.status if r.status != "ok" else str(r.checks), f(r.wall_s, ".1f"), f(r.loop_s, ".1f"),
             f(r.wall_s / r.checks if r.wall_s and r.checks else None, ".2f"), f(r.mean_check_s, ".2f"),
             ", ".join(r.culprits) or r.note] for r in runs]
    return table(["`bisector reduce` chain, -j 1", "checks", "wall s", "loop s", "wall s / check",
                  "mean check s", "culprits"], rows)


def scaling_rows(runs: list[CliRun]) -> list[CliRun]:
    return sorted(runs, key=lambda r: (r.executor != "local", r.workers))


def memory_cell(r: CliRun) -> str:
    return "-" if r.ray_workers_peak is None else f"{r.ray_workers_peak} / {r.ray_pss_mb:,.0f}"


def reduce_lines(runs: list[CliRun]) -> list[str]:
    rows = []
    for r in scaling_rows(runs):
        base = next((b for b in runs if b.executor == r.executor and b.workers == 1 and b.status == "ok"), None)
        speed = base.wall_s / r.wall_s if base and r.wall_s and r.status == "ok" else None
        spec = r.checks - r.used if r.checks is not None and r.used is not None else None
        rows.append([("Ray" if r.executor == "ray" else "local threads"), str(r.workers),
                     (str(r.checks) if r.status == "ok" else r.status) + (f" +{r.killed} killed" if r.killed else ""),
                     f(r.used, "d"), f(spec, "d"), f(r.mean_check_s, ".2f"), f(r.outside_s, ".2f"),
                     f(r.rounds, ".1f"), f(r.loop_s, ".1f"),
                     f(r.first_s, ".2f"), f(r.wall_s, ".1f"), f(speed, ".2f") + ("x" if speed else ""),
                     "-" if r.same is None else ("yes" if r.same else "NO"), memory_cell(r), r.note or ""])
    return table(["executor", "workers (-j)", "checks run", "verdicts used", "speculative", "mean check s",
                  "s outside the check", "rounds", "loop s", "first verdict s", "wall s", "speedup",
                  "same as local -j 1",
                  "Ray workers / MB (peak)", "note"], rows)


def build_lines(runs: list[CliRun], sleep_s: float, build_sleep_s: float) -> list[str]:
    ideal = 3600 / (sleep_s + build_sleep_s)
    rows = []
    for r in scaling_rows(runs):
        bph = r.builds / r.loop_s * 3600 if r.builds and r.loop_s else None
        base = next((b for b in runs if b.executor == r.executor and b.workers == 1 and b.status == "ok"), None)
        base_bph = base.builds / base.loop_s * 3600 if base and base.builds and base.loop_s else None
        rows.append([("Ray" if r.executor == "ray" else "local threads"), str(r.workers),
                     str(r.builds) if r.status == "ok" else r.status, f(r.mean_check_s, ".2f"), f(r.outside_s, ".2f"),
                     f(r.loop_s, ".1f"),
                     f(r.first_s, ".2f"), f(r.wall_s, ".1f"), f(bph, ",.0f"),
                     f(bph / base_bph if bph and base_bph else None, ".1f") + "x",
                     f(bph / (ideal * r.workers) if bph else None, ".0%"), memory_cell(r), r.note or ""])
    return [f"Ideal for one worker: 3600 / ({build_sleep_s:g} s build + {sleep_s:g} s check) = {ideal:,.0f} builds "
            "per hour.", "",
            *table(["executor", "workers (-j)", "builds", "mean check s", "build + wait s", "loop s",
                    "first verdict s", "wall s",
                    "builds / hour", "x one worker", "of W x ideal", "Ray workers / MB (peak)", "note"], rows)]


def markdown(results: dict, argv: list[str], total_s: float) -> str:
    from bench.reduce_vs_polygraphy import machine

    import ray

    load = results.get("load", {})
    lines = [f"Machine: {machine()}; ray {ray.__version__}. Whole run: {total_s:.0f} s; load average (1 min) "
             f"{load.get('start', 0):.1f} at the start, {load.get('end', 0):.1f} at the end.", "",
             "Command: `" + " ".join([".venv/bin/python bench/ray_scaling.py", *argv]) + "`",
             ""]
    if "overhead" in results:
        lines += ["**Per-check overhead** (executor API, check `true`)", "", *overhead_lines(results["overhead"]), ""]
    if "e2e" in results:
        lines += ["**End to end** (`bisector reduce` of chain, faulty_check, `-j 1`)", "",
                  *e2e_lines(results["e2e"]), ""]
    if "reduce" in results:
        fixture, node, note = REDUCE_CASES[results["reduce_case"]]
        lines += [f"**Reduce scaling** ({fixture}: {note}; culprit {node}; check sleeps {results['sleep_s']:g} s)", "",
                  *reduce_lines(results["reduce"]), ""]
    if "build" in results:
        lines += [f"**Build hunt scaling** (`--until {results['builds_per_worker']}xW`; build sleeps "
                  f"{results['build_sleep_s']:g} s, check {results['sleep_s']:g} s)", "",
                  *build_lines(results["build"], results["sleep_s"], results["build_sleep_s"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=("overhead", "e2e", "reduce", "build"),
                    default=["overhead", "e2e", "reduce", "build"])
    ap.add_argument("--runs", type=int, default=100, help="checks timed per executor (part overhead)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed checks first (part overhead)")
    ap.add_argument("--workers", type=int, nargs="+", default=list(DEFAULT_WORKERS),
                    help="-j of the local-executor runs (reduce, build); must start with 1")
    ap.add_argument("--ray-workers", type=int, nargs="*", default=list(DEFAULT_RAY_WORKERS),
                    help="-j and num_cpus of the Ray runs (reduce, build); must start with 1")
    ap.add_argument("--sleep", type=float, default=1.0, help="seconds each check sleeps (reduce, build)")
    ap.add_argument("--build-sleep", type=float, default=1.0, help="seconds each fake build sleeps")
    ap.add_argument("--builds-per-worker", type=int, default=4, help="a hunt at -j W builds this x W times")
    ap.add_argument("--reduce-case", choices=sorted(REDUCE_CASES), default="squeezenet")
    ap.add_argument("--markdown", type=Path, help="write the tables as markdown here")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument("--workdir", type=Path, help="keep runs here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)
    for name in ("workers", "ray_workers"):
        ws = getattr(args, name)
        if ws and ws[0] != 1:
            ap.error(f"--{name.replace('_', '-')} must start with 1 (the speedup's baseline)")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-ray-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"sleep_s": args.sleep, "build_sleep_s": args.build_sleep,
                     "builds_per_worker": args.builds_per_worker, "reduce_case": args.reduce_case}
    results["load"] = {"start": os.getloadavg()[0]}
    start = time.monotonic()
    try:
        if "overhead" in args.parts:
            results["overhead"] = part_overhead(workdir / "overhead", args.runs, args.warmup)
        if "e2e" in args.parts:
            results["e2e"] = part_e2e(workdir)
        if "reduce" in args.parts:
            results["reduce"] = part_reduce(workdir, args.reduce_case, args.workers, args.ray_workers, args.sleep)
        if "build" in args.parts:
            results["build"] = part_build(workdir, args.workers, args.ray_workers, args.sleep, args.build_sleep,
                                          args.builds_per_worker)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - start
    results["load"]["end"] = os.getloadavg()[0]
    text = markdown(results, argv, total)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
        print(f"wrote {args.markdown}")
    if args.json:
        doc = {k: ([{**asdict(r), "mean_check_s": r.mean_check_s, "rounds": r.rounds} for r in v]
                   if isinstance(v, list) else v) for k, v in results.items()}
        args.json.write_text(json.dumps({**doc, "total_s": total, "argv": argv}, indent=1))
    bad = [r for k in ("e2e", "reduce", "build") for r in results.get(k, []) if r.status != "ok" or r.same is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
