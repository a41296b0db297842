"""bisector reduce's own cost: time per iteration, bytes per iteration, and the in-process compare check.

    .venv/bin/python bench/reduce_overhead.py [--markdown FILE] [--json FILE] [--only overhead bytes compare]

1. **overhead**: ``bisector reduce`` on ``wide_1000`` and ``wide_10000`` (fixtures) with a check
   that costs nearly nothing: a ``--check-script`` function that looks for the culprit's name in the
   candidate it is handed in memory (``artifact.model``), bad when present. The engine's event
   stream (``--events``) gives the loop's wall time (event ``start`` to ``done``) and each check's
   duration; *per iteration* = (loop time - time inside checks) / checks. It covers everything the
   tool does per check: fingerprint, cut, write ``polygraphy_debug.onnx`` and ``inputs.json``,
   journal (fsync'd), cleanup, search. Setup (preparing the model, recording activations) and
   writing the result happen once and are reported apart. A breakdown times
   ``ReduceMaterializer.materialize`` directly on candidates of several sizes.
2. **bytes**: the same 4-layer MLP (12 nodes) with 258 KiB, 16 MiB and 64 MiB of weights, reduced
   with ``--weights link`` and ``--weights auto`` (and the same cheap check, with
   ``--no-remove-intermediate``). Bytes per iteration = bytes of the files in each iteration
   directory that are not hard links to the session's weight file, plus the journal's growth.
3. **compare**: a 1,000-node model whose fp32 run overflows (``softplus_exp`` = Exp of 1000 h,
   then Log: inf or -inf), reduced once with ``--compare --validate`` (in-process) and once with
   the command check ``polygraphy run polygraphy_debug.onnx --onnxrt --load-inputs inputs.json
   --validate``. Both fail a candidate exactly when one of its outputs is non-finite on
   onnxruntime CPU fp32 with the recorded inputs, so both searches see the same verdicts (checked:
   the journals' verdict sequences are compared). A second pair does the same for an fp16
   overflow (``ovf_up`` x 2**17, ``ovf_down`` x 2**-17): ``--compare --precision fp16`` against the
   command check ``bisector compare polygraphy_debug.onnx --precision fp16 ...``, because
   ``polygraphy run --onnxrt --fp-to-fp16`` runs fp16 on the CPU in fp32 and does not see the
   overflow at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent
PARTS = ("overhead", "bytes", "compare")
OVERHEAD_MODELS = {"wide_1000": "w83_tanh", "wide_10000": "w833_tanh"}
OVERHEAD_TARGET_MS = {"wide_1000": 50.0, "wide_10000": 300.0}
BYTES_WIDTHS = (128, 1024, 2048)  # 4 x W x (W + 1) fp32: 258 KiB, 16 MiB (auto embeds), 64 MiB (auto links)
MLP_LAYERS = 4
MLP_CULPRIT = "matmul3"
COMPARE_NODES = 1000
COMPARE_SPEEDUP_TARGET = 5.0
FP16_TOL = "0.05"

CHECK_SCRIPT = '''\
import os
CULPRIT = os.environ["BENCH_CULPRIT"]


def check(artifact_path, artifact):
    """Good (True) when the candidate does not contain the culprit node."""
    return not any(n.name == CULPRIT for n in artifact.model.graph.node)
'''


def run(argv: list[str], cwd: Path, env: dict | None = None, timeout: float = 1800) -> tuple[float, str, int]:
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return time.monotonic() - start, proc.stdout + proc.stderr, proc.returncode


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loop_stats(evs: list[dict]) -> dict:
    start = next(e["time"] for e in evs if e["event"] == "start")
    done = next(e["time"] for e in evs if e["event"] == "done")
    verdicts = [e for e in evs if e["event"] == "verdict"]
    in_check = sum(e["duration_s"] for e in verdicts)
    n = len(verdicts)
    return {"checks": n, "loop_s": done - start, "in_check_s": in_check,
            "per_iteration_ms": 1000 * (done - start - in_check) / n if n else None}


def cheap_reduce(model: Path, culprit: str, workdir: Path, extra: list[str] = ()) -> dict:
    """One ``bisector reduce`` with the in-memory culprit check; returns timings from its events."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "check_culprit.py"
    script.write_text(CHECK_SCRIPT)
    shutil.rmtree(workdir / "session", ignore_errors=True)
    ev = workdir / "events.jsonl"
    ev.unlink(missing_ok=True)
    argv = [str(BIN / "bisector"), "reduce", str(model), "-o", "reduced.onnx", "--session", "session", "-q",
            "--events", str(ev), "--check-script", str(script), *extra]
    wall, out, rc = run(argv, workdir, env={"BENCH_CULPRIT": culprit})
    if rc != 0:
        raise RuntimeError(f"bisector reduce failed ({rc}):\n{out[-2000:]}")
    stats = loop_stats(events(ev))
    report = json.loads((workdir / "session" / "result" / "report.json").read_text())
    stats.update(wall_s=wall, setup_and_result_s=wall - stats["loop_s"], result=report["result"]["node_names"])
    return stats


# -- 1. time per iteration ------------------------------------------------------------------
def materialize_breakdown(model: Path, workdir: Path, repeat: int = 5) -> list[dict]:
    """Time ``materialize`` (cut + write model + write inputs.json) on candidates of several sizes."""
    from bisector.commands.reduce import ReduceOptions, setup
    from bisector.strategies.base import Candidate

    opts = ReduceOptions(model=model, output=workdir / "unused.onnx")
    root = workdir / "api-session"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    _, strategy, mat = setup(opts, root)
    setup_s = time.perf_counter() - t0
    n = strategy.n
    rows = []
    sizes = (("all nodes", range(n)), ("first half", range(n // 2)), ("10 nodes", range(n // 2, n // 2 + 10)),
             ("1 node", [n // 2]))
    for label, items in sizes:
        cand = Candidate(frozenset(items), label=label, phase="bench", kind="nodes")
        times, fp_times = [], []
        for i in range(repeat):
            d = root / "iter" / f"{label.replace(' ', '_')}_{i}"
            t = time.perf_counter()
            mat.fingerprint(cand)
            fp_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            mat.materialize(cand, d, i)
            times.append(time.perf_counter() - t)
        rows.append({"candidate": label, "size": len(cand.items), "materialize_ms": 1000 * min(times),
                     "fingerprint_ms": 1000 * min(fp_times)})
    shutil.rmtree(root, ignore_errors=True)
    return [{"setup_s": setup_s, "nodes": n}] + rows


def part_overhead(workdir: Path) -> dict:
    from fixtures import fixture_path

    out = {}
    for name, culprit in OVERHEAD_MODELS.items():
        model = fixture_path(name)
        stats = cheap_reduce(model, culprit, workdir / name)
        stats["target_ms"] = OVERHEAD_TARGET_MS[name]
        stats["breakdown"] = materialize_breakdown(model, workdir / name)
        out[name] = stats
        print(f"  overhead {name}: {stats['per_iteration_ms']:.1f} ms/iteration over {stats['checks']} checks "
              f"(setup+result {stats['setup_and_result_s']:.1f} s), result {stats['result']}", flush=True)
    return out


# -- 2. bytes per iteration -----------------------------------------------------------------
def mlp(width: int, layers: int = MLP_LAYERS, seed: int = 0):
    """``layers`` x (MatMul W x W, Add, Relu): 3 * layers nodes, 4 * layers * W * (W + 1) bytes of weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, h = [], [], "x"
    for i in range(1, layers + 1):
        w = (rng.standard_normal((width, width)) * np.sqrt(2.0 / width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"matmul{i}_out"], name=f"matmul{i}"),
                  helper.make_node("Add", [f"matmul{i}_out", f"b{i}"], [f"add{i}_out"], name=f"add{i}"),
                  helper.make_node("Relu", [f"add{i}_out"], ["y" if i == layers else f"relu{i}_out"], name=f"relu{i}")]
        h = f"relu{i}_out"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])
    graph = helper.make_graph(nodes, f"mlp_{width}", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def iteration_bytes(session: Path) -> list[dict[str, int]]:
    """Per iteration directory: bytes of the files that are not hard links of the session's weights,
    split into the model (``*.onnx``), ``inputs.json`` and the rest."""
    weights = {(p.stat().st_dev, p.stat().st_ino) for p in (session / "weights").rglob("*") if p.is_file()}
    rows = []
    for d in sorted((session / "iterations").iterdir()):
        row = {"model": 0, "inputs": 0, "other": 0}
        for p in d.rglob("*"):
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                if (st.st_dev, st.st_ino) in weights:
                    continue
                kind = "model" if p.suffix == ".onnx" else "inputs" if p.name == "inputs.json" else "other"
                row[kind] += st.st_size
        rows.append(row)
    return rows


def part_bytes(workdir: Path) -> list[dict]:
    import onnx

    rows = []
    for width in BYTES_WIDTHS:
        d = workdir / f"mlp_{width}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / "model.onnx"
        onnx.save(mlp(width), str(path))
        weight_bytes = sum(t.ByteSize() for t in onnx.load(str(path)).graph.initializer)
        for mode in ("link", "auto"):
            run_dir = d / mode
            stats = cheap_reduce(path, MLP_CULPRIT, run_dir, ["--weights", mode, "--no-remove-intermediate"])
            parts = iteration_bytes(run_dir / "session")
            sizes = [sum(p.values()) for p in parts]
            journal = (run_dir / "session" / "journal.jsonl").stat().st_size
            per_iter = (sum(sizes) + journal) / len(sizes)
            row = {"width": width, "weights_bytes": weight_bytes, "mode": mode, "checks": stats["checks"],
                   "bytes_per_iteration": per_iter, "max_iteration_bytes": max(sizes),
                   "model_bytes_per_iteration": sum(p["model"] for p in parts) / len(parts),
                   "inputs_bytes_per_iteration": sum(p["inputs"] for p in parts) / len(parts),
                   "journal_bytes_per_iteration": journal / len(sizes), "result": stats["result"],
                   "per_iteration_ms": stats["per_iteration_ms"]}
            rows.append(row)
            print(f"  bytes mlp_{width} ({weight_bytes / 2**20:.2f} MiB) --weights {mode}: "
                  f"{per_iter / 1024:.1f} KiB/iteration over {len(sizes)}", flush=True)
            shutil.rmtree(run_dir / "session" / "iterations", ignore_errors=True)
        path.unlink()
    return rows


# -- 3. in-process compare against a command check ------------------------------------------
def splice(base, after: str, nodes, inits):
    """Insert ``nodes`` on the residual path right after the node ``after`` of a make_wide model."""
    import onnx

    graph = base.graph
    pos = next(i for i, n in enumerate(graph.node) if n.name == after)
    old_out = graph.node[pos].output[0]
    new_in, new_out = nodes[0].input[0], nodes[-1].output[0]
    assert new_in == old_out
    for n in graph.node[pos + 1:]:
        for k, x in enumerate(n.input):
            if x == old_out:
                n.input[k] = new_out
    rest = list(graph.node[pos + 1:])
    del graph.node[pos + 1:]
    graph.node.extend(list(nodes) + rest)
    graph.initializer.extend(inits)
    onnx.checker.check_model(base)
    return base


def overflow_model(kind: str, n_nodes: int = COMPARE_NODES):
    """A make_wide model of ``n_nodes`` nodes with an overflow spliced in after block 83's ``res``.

    ``fp32``: ``softplus_scale`` (x 1000), ``softplus_exp``, ``softplus_log``, ``softplus_unscale``
    (x 0.001): the Exp overflows to inf (or underflows to 0, and the Log gives -inf) in fp32.
    ``fp16``: ``ovf_up`` (x 2**17), ``ovf_down`` (x 2**-17): exact in fp32, inf in fp16.
    """
    from onnx import helper, numpy_helper

    from fixtures.models import make_wide

    a = "w83_res_out"
    if kind == "fp32":
        base = make_wide(n_nodes - 4)
        inits = [numpy_helper.from_array(np.array(1000.0, np.float32), "softplus_k"),
                 numpy_helper.from_array(np.array(0.001, np.float32), "softplus_inv_k")]
        nodes = [helper.make_node("Mul", [a, "softplus_k"], ["softplus_scale_out"], name="softplus_scale"),
                 helper.make_node("Exp", ["softplus_scale_out"], ["softplus_exp_out"], name="softplus_exp"),
                 helper.make_node("Log", ["softplus_exp_out"], ["softplus_log_out"], name="softplus_log"),
                 helper.make_node("Mul", ["softplus_log_out", "softplus_inv_k"], ["softplus_unscale_out"],
                                  name="softplus_unscale")]
    else:
        base = make_wide(n_nodes - 2)
        inits = [numpy_helper.from_array(np.array(2.0 ** 17, np.float32), "ovf_k"),
                 numpy_helper.from_array(np.array(2.0 ** -17, np.float32), "ovf_inv_k")]
        nodes = [helper.make_node("Mul", [a, "ovf_k"], ["ovf_up_out"], name="ovf_up"),
                 helper.make_node("Mul", ["ovf_up_out", "ovf_inv_k"], ["ovf_down_out"], name="ovf_down")]
    return splice(base, "w83_res", nodes, inits)


def verdict_sequence(session: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (session / "journal.jsonl").read_text().splitlines() if line.strip()]
    return [(r.get("label"), r.get("verdict")) for r in rows]


def reduce_pair(name: str, model: Path, inproc: list[str], command: list[str], workdir: Path,
                repeat: int = 1) -> dict:
    """Each variant ``repeat`` times, alternating, keeping the fastest run of each (the machine is
    shared: the minimum is the least disturbed measurement); all walls are kept in ``walls_s``."""
    out = {}
    for r in range(repeat):
        for label, args in (("compare", inproc), ("command", ["--check", *command])):
            d = workdir / name / label
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            ev = d / "events.jsonl"
            argv = [str(BIN / "bisector"), "reduce", str(model), "-o", "reduced.onnx", "--session", "session", "-q",
                    "--events", str(ev), *args]
            wall, text, rc = run(argv, d)
            if rc != 0:
                raise RuntimeError(f"{name} {label}: bisector reduce exit {rc}:\n{text[-2000:]}")
            report = json.loads((d / "session" / "result" / "report.json").read_text())
            stats = loop_stats(events(ev))
            walls = out.get(label, {}).get("walls_s", []) + [round(wall, 2)]
            if label not in out or wall < out[label]["wall_s"]:
                out[label] = {"wall_s": wall, "checks": report["checks"], "loop_s": stats["loop_s"],
                              "mean_check_s": stats["in_check_s"] / max(1, stats["checks"]),
                              "result": report["result"]["node_names"], "argv": argv,
                              "verdicts": verdict_sequence(d / "session")}
            out[label]["walls_s"] = walls
            print(f"  compare {name} {label} (run {r + 1}/{repeat}): {wall:.1f} s, {report['checks']} checks, "
                  f"result {report['result']['node_names']}", flush=True)
    out["same_verdicts"] = out["compare"].pop("verdicts") == out["command"].pop("verdicts")
    out["speedup"] = out["command"]["wall_s"] / out["compare"]["wall_s"]
    out["speedup_loop"] = out["command"]["loop_s"] / out["compare"]["loop_s"]
    return out


def part_compare(workdir: Path, repeat: int = 3) -> dict:
    import onnx

    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    fp32 = workdir / "overflow_fp32_1000.onnx"
    onnx.save(overflow_model("fp32"), str(fp32))
    out["fp32-overflow"] = reduce_pair(
        "fp32-overflow", fp32, ["--compare", "--validate"],
        [str(BIN / "polygraphy"), "run", "polygraphy_debug.onnx", "--onnxrt", "--load-inputs", "inputs.json",
         "--validate"], workdir, repeat)
    fp16 = workdir / "overflow_fp16_1000.onnx"
    onnx.save(overflow_model("fp16"), str(fp16))
    tol = ["--atol", FP16_TOL, "--rtol", FP16_TOL]
    out["fp16-overflow"] = reduce_pair(
        "fp16-overflow", fp16, ["--compare", "--precision", "fp16", *tol],
        [str(BIN / "bisector"), "compare", "polygraphy_debug.onnx", "--precision", "fp16", *tol,
         "--load-inputs", "inputs.json"], workdir, repeat)
    # Why not polygraphy run --fp-to-fp16 for the second pair: it does not see the overflow.
    _, _, rc = run([str(BIN / "polygraphy"), "run", str(fp16), "--onnxrt", "--fp-to-fp16", "--validate"], workdir)
    out["fp16-overflow"]["polygraphy_fp_to_fp16_exit"] = rc
    return out


# -- report ---------------------------------------------------------------------------------
def markdown(res: dict, argv: list[str]) -> str:
    from bench.reduce_vs_polygraphy import machine

    lines = [f"Machine: {machine()}.", "",
             "Command: `" + " ".join([".venv/bin/python bench/reduce_overhead.py", *argv]) + "`", ""]
    if "overhead" in res:
        lines += ["Time per iteration, everything but the check (in-memory culprit check):", "",
                  "| model | nodes | checks | loop s | inside checks s | **ms per iteration** | target ms "
                  "| setup + result s | of which `setup()` s | result |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, s in res["overhead"].items():
            n = s["breakdown"][0]["nodes"]
            lines.append(f"| {name} | {n} | {s['checks']} | {s['loop_s']:.2f} | {s['in_check_s']:.2f} "
                         f"| **{s['per_iteration_ms']:.1f}** | {s['target_ms']:.0f} | {s['setup_and_result_s']:.1f} "
                         f"| {s['breakdown'][0]['setup_s']:.1f} | {', '.join(s['result'])} |")
        lines += ["", "`ReduceMaterializer.materialize` alone (cut, write the model and inputs.json), best of 5:", "",
                  "| model | candidate | nodes in candidate | materialize ms | fingerprint ms |",
                  "|---|---|---:|---:|---:|"]
        for name, s in res["overhead"].items():
            for row in s["breakdown"][1:]:
                lines.append(f"| {name} | {row['candidate']} | {row['size']} | {row['materialize_ms']:.1f} "
                             f"| {row['fingerprint_ms']:.2f} |")
    if "bytes" in res:
        lines += ["", f"Bytes written per iteration ({MLP_LAYERS}-layer MLP, {3 * MLP_LAYERS} nodes, same graph, "
                  "growing weights):", "",
                  "| width | weights | --weights | checks | bytes per iteration (mean) | largest iteration "
                  "| model file (mean) | inputs.json (mean) | journal line (mean) |",
                  "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in res["bytes"]:
            lines.append(f"| {r['width']} | {_size(r['weights_bytes'])} | {r['mode']} | {r['checks']} "
                         f"| {_size(r['bytes_per_iteration'])} | {_size(r['max_iteration_bytes'])} "
                         f"| {_size(r['model_bytes_per_iteration'])} | {_size(r['inputs_bytes_per_iteration'])} "
                         f"| {_size(r['journal_bytes_per_iteration'])} |")
    if "compare" in res:
        lines += ["", f"In-process compare against a command check ({COMPARE_NODES}-node model):", "",
                  "| fault | check | command or flags | checks | mean check s | search loop s | wall s (best) "
                  "| every run's wall s | result | speedup (wall) | speedup (loop) |",
                  "|---|---|---|---:|---:|---:|---:|---|---|---:|---:|"]
        for name, pair in res["compare"].items():
            for label in ("command", "compare"):
                r = pair[label]
                flags = r["argv"][r["argv"].index("--events") + 2:]
                flags = " ".join(Path(a).name if a.startswith("/") else a for a in flags)
                sp = (f"**{pair['speedup']:.1f}x** | {pair['speedup_loop']:.1f}x" if label == "compare" else " | ")
                lines.append(f"| {name} | {label} | `{flags}` | {r['checks']} | {r['mean_check_s']:.3f} "
                             f"| {r['loop_s']:.2f} | {r['wall_s']:.1f} | {' '.join(f'{w:.1f}' for w in r['walls_s'])} "
                             f"| {', '.join(r['result'])} | {sp} |")
        lines.append("")
        for name, pair in res["compare"].items():
            lines.append(f"- {name}: same verdict for every candidate, in the same order: "
                         f"{'yes' if pair['same_verdicts'] else '**no**'}.")
        rc = res["compare"].get("fp16-overflow", {}).get("polygraphy_fp_to_fp16_exit")
        if rc is not None:
            verdict = "passes: it does not see the overflow" if rc == 0 else "fails"
            lines.append(f"- `polygraphy run overflow_fp16_1000.onnx --onnxrt --fp-to-fp16 --validate` on the full "
                         f"fp16-overflow model exits {rc} ({verdict}).")
    return "\n".join(lines) + "\n"


def _size(b: float) -> str:
    for unit, k in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= k:
            return f"{b / k:.1f} {unit}"
    return f"{b:.0f} B"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--workdir", type=Path, help="keep runs here (default: a temporary directory, removed)")
    ap.add_argument("--repeat", type=int, default=3, help="compare: runs per variant, the fastest kept (default 3)")
    args = ap.parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-overhead-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    res = {}
    try:
        if "overhead" in args.only:
            res["overhead"] = part_overhead(workdir / "overhead")
        if "bytes" in args.only:
            res["bytes"] = part_bytes(workdir / "bytes")
        if "compare" in args.only:
            res["compare"] = part_compare(workdir / "compare", args.repeat)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    text = markdown(res, argv)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
