"""The strategy contract: a strategy is a pure search.

- No heavy or I/O imports (onnx, onnxruntime, tensorrt, rich, typer), no files, clock or global
  randomness: scanned in the source (ast) and checked at run time (what importing pulls in).
- The same verdicts give the same candidates: in one process and across processes with different
  hash seeds (resume runs in a new process).
- ReduceStrategy on random DAGs and random culprit sets: the answer is verified bad and 1-minimal,
  a single culprit costs at most 2*ceil(log2 N)+4 checks, ``verify_minimal`` proves it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bisector.checks.base import Verdict
from bisector.strategies.base import ceil_log2
from bisector.strategies.reduce import ReduceStrategy
from bisector.strategies.repeat import RepeatStrategy
from tests.strategies import drive, fails_if_all, fails_if_any

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = sorted((ROOT / "bisector" / "strategies").glob("*.py"))

FORBIDDEN_MODULES = {
    "onnx", "onnxruntime", "tensorrt", "rich", "typer",  # heavy or UI: the engine's and the CLI's
    "numpy", "onnx_graphsurgeon", "polygraphy",
    "os", "io", "pathlib", "shutil", "tempfile", "glob", "sys", "subprocess", "socket", "pickle", "json",
    "time", "datetime", "random", "secrets", "uuid", "importlib",  # files, clock, randomness
    "bisector.engine", "bisector.artifacts", "bisector.model", "bisector.backends", "bisector.cli",
    "bisector.commands", "bisector.cli.progress",
}
FORBIDDEN_CALLS = {"open", "input", "print", "__import__", "exec", "eval", "hash", "id"}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN_MODULES)


@pytest.mark.parametrize("path", STRATEGIES, ids=lambda p: p.name)
def test_strategy_source_imports_nothing_heavy_and_touches_no_files_clock_or_randomness(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [f"{path.name}:{line}: import {name}" for line, name in _imported(tree) if _forbidden(name)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            bad.append(f"{path.name}:{node.lineno}: calls {node.func.id}()")
        if isinstance(node, ast.Attribute) and node.attr in ("read_text", "read_bytes", "write_text", "open"):
            bad.append(f"{path.name}:{node.lineno}: touches a file (.{node.attr})")
    assert not bad, "strategies must stay pure:\n" + "\n".join(bad)


def test_the_scan_catches_what_it_should():
    tree = ast.parse("import onnx\nfrom rich.console import Console\nimport time\nfrom random import choice\n"
                     "from bisector.model import graph\nopen('x')\n")
    names = [n for _, n in _imported(tree)]
    assert all(_forbidden(n) for n in ("onnx", "rich.console", "time", "random.choice", "bisector.model.graph"))
    assert not any(_forbidden(n) for n in ("typing", "dataclasses", "bisector.checks.base", "onnxconverter"))
    assert {"onnx", "rich.console", "time", "random"} <= set(names)


def test_importing_every_strategy_pulls_in_no_heavy_module():
    mods = ", ".join(f"bisector.strategies.{p.stem}" for p in STRATEGIES if p.stem != "__init__")
    code = (f"import sys, json\nimport {mods}\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnx', 'onnxruntime', 'tensorrt', 'rich', 'typer', 'numpy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert json.loads(out) == []


# ------------------------------------------------------------------------------------- random DAGs
@st.composite
def dags(draw, max_n: int = 48) -> list[frozenset[int]]:
    """``preds[i]`` for n nodes in topological order: a chain, diamonds, a forest or random edges."""
    n = draw(st.integers(1, max_n))
    shape = draw(st.sampled_from(["chain", "diamonds", "random", "forest"]))
    preds: list[frozenset[int]] = []
    for i in range(n):
        if i == 0:
            p = set()
        elif shape == "chain":
            p = {i - 1}
        elif shape == "diamonds":  # a -> (b, c) -> d, repeated: d joins both branches
            p = {i - 3, i - 2} if i % 3 == 0 and i >= 3 else ({i - 1} if i % 3 == 1 else {i - 2})
        elif shape == "forest":  # several independent chains
            p = {i - 3} if i >= 3 else set()
        else:
            p = draw(st.sets(st.integers(0, i - 1), max_size=3))
        preds.append(frozenset(p))
    return preds


@st.composite
def cases(draw, max_culprits: int = 3):
    preds = draw(dags())
    n = len(preds)
    culprits = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=min(max_culprits, n)))
    kind = draw(st.sampled_from(["all", "any"]))
    return preds, sorted(culprits), kind


def _predicate(kind, culprits):
    return fails_if_all(culprits) if kind == "all" else fails_if_any(culprits)


@SETTINGS
@given(cases())
def test_reduce_is_deterministic(case):
    preds, culprits, kind = case
    first = drive(ReduceStrategy(len(preds), preds), _predicate(kind, culprits))
    second = drive(ReduceStrategy(len(preds), preds), _predicate(kind, culprits))
    assert first.sequence == second.sequence
    assert first.result == second.result


@SETTINGS
@given(cases())
def test_reduce_auto_answer_is_bad_and_one_minimal(case):
    preds, culprits, kind = case
    pred = _predicate(kind, culprits)
    run = drive(ReduceStrategy(len(preds), preds), pred)
    nodes = frozenset(run.result["nodes"])
    assert pred(nodes) == Verdict.BAD, f"the answer {sorted(nodes)} does not fail"
    for x in nodes:
        assert pred(nodes - {x}) == Verdict.GOOD, f"{x} can be removed from {sorted(nodes)}"
    if kind == "all":
        assert sorted(nodes) == culprits  # the only 1-minimal failing set
    else:
        assert len(nodes) == 1 and min(nodes) in culprits
    checked_bad = {c.items for c in run.checked if pred(c.items) == Verdict.BAD}
    assert nodes in checked_bad or nodes == frozenset(range(len(preds))), "the answer was never checked"


@SETTINGS
@given(dags(max_n=200), st.data())
def test_reduce_single_culprit_cost(preds, data):
    n = len(preds)
    culprit = data.draw(st.integers(0, n - 1))
    run = drive(ReduceStrategy(n, preds), fails_if_all([culprit]))
    assert run.result["nodes"] == [culprit]
    assert run.checks <= 2 * ceil_log2(n) + 4, (run.checks, n)


@SETTINGS
@given(cases())
def test_reduce_verify_minimal_proof_is_all_good(case):
    preds, culprits, kind = case
    run = drive(ReduceStrategy(len(preds), preds, verify_minimal=True), _predicate(kind, culprits))
    proof = run.result["minimal_proof"]
    assert [p["node"] for p in proof] == [str(i) for i in run.result["nodes"]]
    assert all(p["verdict"] == "good" for p in proof)
    assert run.result["one_minimal"] is True


@SETTINGS
@given(cases(), st.sampled_from(["bisect", "linear"]), st.booleans(), st.booleans())
def test_reduce_every_mode_terminates_with_a_verified_bad_answer(case, mode, reduce_inputs, reduce_outputs):
    preds, culprits, kind = case
    if not (reduce_inputs or reduce_outputs):
        reduce_inputs = True
    pred = _predicate(kind, culprits)
    strategy = ReduceStrategy(len(preds), preds, mode=mode, reduce_inputs=reduce_inputs,
                              reduce_outputs=reduce_outputs)
    run = drive(strategy, pred, max_asks=10 * len(preds) + 10)
    nodes = frozenset(run.result["nodes"])
    assert pred(nodes) == Verdict.BAD
    assert nodes in {c.items for c in run.checked}, "the answer was never checked"


@SETTINGS
@given(cases(), st.booleans(), st.booleans())
def test_reduce_auto_without_one_side_still_answers_a_verified_bad_set(case, reduce_inputs, reduce_outputs):
    preds, culprits, kind = case
    if not (reduce_inputs or reduce_outputs):
        reduce_outputs = True
    pred = _predicate(kind, culprits)
    run = drive(ReduceStrategy(len(preds), preds, reduce_inputs=reduce_inputs, reduce_outputs=reduce_outputs), pred)
    nodes = frozenset(run.result["nodes"])
    assert pred(nodes) == Verdict.BAD
    assert nodes in {c.items for c in run.checked}
    if reduce_inputs:  # the removal phase runs: 1-minimal
        assert all(pred(nodes - {x}) == Verdict.GOOD for x in nodes)


@st.composite
def flaky_predicates(draw):
    """A culprit predicate where some candidates are SKIP (untestable), decided by their items."""
    preds, culprits, kind = draw(cases())
    salt = draw(st.integers(0, 1000))
    rate = draw(st.sampled_from([3, 5, 8]))
    full = frozenset(range(len(preds)))
    base = _predicate(kind, culprits)

    def pred(items):
        if items != full and (sum(items) * 31 + len(items) * 7 + salt) % rate == 0:
            return Verdict.SKIP
        return base(items)

    return preds, pred


@SETTINGS
@given(flaky_predicates(), st.sampled_from(["auto", "bisect", "linear"]))
def test_reduce_with_skips_terminates_with_a_verified_bad_answer(case, mode):
    preds, pred = case
    first = drive(ReduceStrategy(len(preds), preds, mode=mode), pred, max_asks=10 * len(preds) + 10)
    second = drive(ReduceStrategy(len(preds), preds, mode=mode), pred)
    assert first.sequence == second.sequence
    nodes = frozenset(first.result["nodes"])
    assert pred(nodes) == Verdict.BAD
    assert nodes in {c.items for c in first.checked} | {frozenset(range(len(preds)))}


# ------------------------------------------------------------------------------------- repeat
@pytest.mark.parametrize("until,limit,verdicts,runs", [
    (Verdict.BAD, None, "ggbg", 3),
    (Verdict.GOOD, None, "bbsg", 4),
    (None, 4, "gbgb", 4),
    (Verdict.BAD, 2, "ggg", 2),
])
def test_repeat_asks_one_new_run_each_time(until, limit, verdicts, runs):
    answers = {i: Verdict.parse({"g": "good", "b": "bad", "s": "skip"}[v]) for i, v in enumerate(verdicts)}
    run = drive(RepeatStrategy(until=until, limit=limit), lambda items: answers[min(items)])
    assert [a.candidate.sorted_items() for a in run.asks] == [[i] for i in range(runs)]
    assert run.result["runs"] == runs


# ------------------------------------------------------------------------------------- across processes
DRIVER = """
import json, sys
from tests.strategies import drive, fails_if_all
from bisector.strategies.reduce import ReduceStrategy
from bisector.strategies.repeat import RepeatStrategy
from bisector.checks.base import Verdict
n = 40
preds = [frozenset({i - 1, i // 2}) - {i} if i else frozenset() for i in range(n)]
names = [f"node_{i}" for i in range(n)]
out = {}
for mode in ("auto", "bisect", "linear"):
    run = drive(ReduceStrategy(n, preds, mode=mode, names=names, verify_minimal=True), fails_if_all({5, 17, 30}))
    out[mode] = [run.sequence, run.result]
run = drive(RepeatStrategy(limit=5), lambda items: Verdict.BAD if min(items) % 2 else Verdict.GOOD)
out["repeat"] = [run.sequence, run.result]
print(json.dumps(out, sort_keys=True))
"""


def test_same_candidates_in_processes_with_different_hash_seeds():
    """Resume and replay run the strategy in a new process: set or dict order must not leak in."""
    outs = [subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, cwd=ROOT, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")]
    assert outs[0] == outs[1] == outs[2]
    assert json.loads(outs[0])["auto"][1]["nodes"] == [5, 17, 30]
