"""Models of 64 MiB of weights and more (issue 9): candidates load in ``onnx.load``, which refuses
external data that is hard-linked, a symlink or outside the model's directory, and the user's own
model stays loadable while a session runs and after a ``kill -9`` of it.

Real ``python -m bisector`` processes, real command checks that call ``onnx.load`` with external
data and run onnxruntime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bisector.model.io import EMBED_WEIGHTS_BELOW_BYTES
from tests.helpers import ENV, bisector, report

D = 1024  # 1024 x 1024 fp32: 4 MiB a MatMul
BEFORE, AFTER = 8, 9  # MatMuls before and after the fault: 17 x 4 MiB = 68 MiB, just past 64 MiB
DATA = "big.onnx.data"

CHECK = textwrap.dedent('''\
    """argv: candidate, the user's model, its weight file, a file to note problems in, seconds to sleep,
    and what fails (exit 1): 'node' when the candidate holds the node 'fault' (reduce), 'overflow'
    when an output is not finite (precision). Exit 3 for anything wrong with the files themselves."""
    import os, sys, time
    import numpy as np, onnx, onnxruntime as ort
    cand, user, user_data, problems, sleep, fails = sys.argv[1:7]

    def problem(text):
        with open(problems, "a") as f:
            f.write(text + "\\n")
        sys.exit(3)

    if os.stat(user_data).st_nlink != 1:
        problem(f"the user's weight file has {os.stat(user_data).st_nlink} links")
    try:
        onnx.load(user)  # the user's own model, with its external data
    except Exception as exc:
        problem(f"onnx.load refuses the user's model: {exc}")
    try:
        model = onnx.load(cand)  # the candidate, external data loaded and checked by onnx
    except Exception as exc:
        problem(f"onnx.load refuses the candidate: {exc}")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
    outs = sess.run(None, feeds)
    time.sleep(float(sleep))
    if fails == "node":
        sys.exit(1 if "fault" in {n.name for n in model.graph.node} else 0)
    sys.exit(0 if all(np.isfinite(o).all() for o in outs) else 1)
''')


def write_big_model(directory: Path) -> tuple[Path, Path]:
    """``big.onnx`` + ``big.onnx.data`` (68 MiB): MatMuls mm0..mm16 with 'fault' (x 1e6) and
    'unfault' (x 1e-6) between mm7 and mm8. Exact in fp32; in fp16, 'fault' overflows (65504)."""
    rng = np.random.default_rng(3)
    nodes, inits, offset, h = [], [], 0, "x"
    with open(directory / DATA, "wb") as f:
        for i in range(BEFORE + AFTER):
            if i == BEFORE:
                for name, factor in (("fault", 1e6), ("unfault", 1e-6)):
                    inits.append(helper.make_tensor(f"{name}_k", TensorProto.FLOAT, [], [factor]))
                    nodes.append(helper.make_node("Mul", [h, f"{name}_k"], [f"{name}_y"], name=name))
                    h = f"{name}_y"
            w = (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32)
            f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[D, D], data_location=TensorProto.EXTERNAL)
            for key, value in (("location", DATA), ("offset", str(offset)), ("length", str(w.nbytes))):
                t.external_data.add(key=key, value=value)
            offset += w.nbytes
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
            h = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(directory / "big.onnx"))
    assert offset >= EMBED_WEIGHTS_BELOW_BYTES
    return directory / "big.onnx", directory / DATA


@pytest.fixture
def big(tmp_path) -> tuple[Path, Path, list[str]]:
    """The user's model and weight file, and the check command (a real script) for them."""
    (tmp_path / "user").mkdir()
    model, data = write_big_model(tmp_path / "user")
    (tmp_path / "check.py").write_text(CHECK)
    check = [sys.executable, str(tmp_path / "check.py"), "polygraphy_debug.onnx", str(model), str(data),
             str(tmp_path / "problems.txt")]
    return model, data, check


def _no_problems(tmp_path: Path) -> None:
    problems = tmp_path / "problems.txt"
    assert not problems.exists(), problems.read_text()


def _user_model_intact(model: Path, data: Path) -> None:
    assert os.stat(data).st_nlink == 1
    onnx.load(str(model))


@pytest.mark.slow
def test_reduce_finds_the_fault_with_a_check_that_calls_onnx_load(tmp_path, big):
    model, data, check = big
    proc = bisector("reduce", str(model), "-o", "reduced.onnx", "--session", "s", "-q", "--check", *check, "0",
                    "node", cwd=tmp_path, timeout=300)
    _no_problems(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report(tmp_path / "s")["result"]["node_names"] == ["fault"]
    _user_model_intact(model, data)
    # Each candidate had its own weight file; the engine removed it with the artifact after the check.
    left = {p.name for p in (tmp_path / "s" / "iterations").rglob("*") if p.is_file()}
    assert left == {"check.log"}
    # The session copied the user's file once and links nothing to it.
    assert os.stat(tmp_path / "s" / "weights" / DATA).st_ino != os.stat(data).st_ino
    assert onnx.load(str(tmp_path / "reduced.onnx")).graph.node[0].name == "fault"


@pytest.mark.slow
def test_candidates_keep_their_own_weight_file_with_no_remove_intermediate(tmp_path, big):
    model, data, check = big
    proc = bisector("reduce", str(model), "-o", "reduced.onnx", "--session", "s", "-q", "--no-remove-intermediate",
                    "--check", *check, "0", "node", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    candidates = sorted((tmp_path / "s" / "iterations").glob("*/polygraphy_debug.onnx"))
    assert candidates
    with_weights = 0
    for cand in candidates:
        own = cand.with_name(cand.name + ".data")
        inits = [t for t in onnx.load(str(cand), load_external_data=False).graph.initializer
                 if t.data_location == TensorProto.EXTERNAL]
        assert {e.value for t in inits for e in t.external_data if e.key == "location"} <= {own.name}
        if inits:  # ('fault' alone has only an embedded scalar)
            with_weights += 1
            assert own.is_file() and os.stat(own).st_nlink == 1
            used = sum(int(e.value) for t in inits for e in t.external_data if e.key == "length")
            assert used <= own.stat().st_size < used + 4096 * len(inits)  # its tensors, nothing more
        onnx.load(str(cand))  # still loadable after the session
    assert with_weights


@pytest.mark.slow
def test_precision_candidates_load_in_onnx(tmp_path, big):
    model, data, check = big
    proc = bisector("precision", str(model), "--precision", "fp16", "--realize", "emulate", "-o", "mixed.onnx",
                    "--session", "s", "-q", "--check", *check, "0", "overflow",
                    cwd=tmp_path, timeout=300)
    _no_problems(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keep = json.loads((tmp_path / "s" / "result" / "keep_fp32.json").read_text())
    assert "fault" in {n["name"] for n in keep["nodes"]}
    checks = [e for e in map(json.loads, (tmp_path / "s" / "journal.jsonl").read_text().splitlines())
              if e["source"] == "check"]
    assert len(checks) > 2  # main stopped after 2 checks: every candidate failed to load
    _user_model_intact(model, data)


@pytest.mark.slow
def test_kill_9_mid_session_leaves_the_users_model_loadable(tmp_path, big):
    model, data, check = big
    argv = [sys.executable, "-m", "bisector", "reduce", str(model), "-o", "reduced.onnx", "--session", "s", "-q",
            "--check", *check, "3", "node"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "s").glob("iterations/*/polygraphy_debug.onnx")):
            assert time.monotonic() < deadline and proc.poll() is None, "no candidate was ever checked"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the check now (it sleeps 3 s)
        _user_model_intact(model, data)  # while the session runs
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _user_model_intact(model, data)  # after kill -9: nothing of the session links to the user's file
    resumed = bisector("resume", "s", cwd=tmp_path, timeout=300)
    _no_problems(tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert report(tmp_path / "s")["result"]["node_names"] == ["fault"]
    _user_model_intact(model, data)
