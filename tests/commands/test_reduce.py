"""reduce end to end, through the real CLI entry point, on fixture models with real faults
injected by a real check process (fixtures/faulty_check.py) and real onnxruntime runs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from bisector.cli import main
from fixtures import fixture_path
from fixtures.models import make_chain

ROOT = Path(__file__).resolve().parents[2]
FAULTY = [sys.executable, str(ROOT / "fixtures" / "faulty_check.py")]


def reduce(tmp_path: Path, model: Path, *extra: str, check: list[str] | None = None) -> tuple[int, dict]:
    session = tmp_path / "session"
    argv = ["reduce", str(model), "-o", str(tmp_path / "reduced.onnx"), "--session", str(session), "-q", *extra]
    if check is not None:
        argv += ["--check", *check]
    code = main(argv, exit=False)
    report = session / "result" / "report.json"
    return code, (json.loads(report.read_text()) if report.exists() else {})


def faulty(fault: str) -> list[str]:
    return [*FAULTY, "polygraphy_debug.onnx", "--fault", fault, "--load-inputs", "inputs.json"]


def recheck(tmp_path: Path, fault: str) -> int:
    """Run the check on the written answer (reduced.onnx and its inputs) and return its exit code."""
    inputs = tmp_path / "reduced_inputs.json"
    return subprocess.run([*FAULTY, str(tmp_path / "reduced.onnx"), "--fault", fault, "--load-inputs", str(inputs)],
                          capture_output=True).returncode


CASES = [
    ("chain", "scale:relu4", "relu4"),
    ("chain", "nan:matmul2", "matmul2"),
    ("convnet", "bias:conv2b", "conv2b"),  # one branch of a diamond
    ("convnet", "scale:add_skip4", "add_skip4"),  # a skip connection
    ("convnet", "threshold:relu4:2.0", "relu4"),  # data-dependent: needs recorded activations
    ("diamond", "scale:branch_a_relu", "branch_a_relu"),
    ("transformer", "scale:softmax", "softmax"),
    ("unnamed", "scale:sigmoid5", "sigmoid5"),  # other nodes are unnamed: named stably, kept apart
]


@pytest.mark.parametrize("fixture,fault,culprit", CASES)
def test_reduce_finds_the_culprit(tmp_path, fixture, fault, culprit):
    model = fixture_path(fixture)
    n = len(onnx.load(str(model)).graph.node)
    code, report = reduce(tmp_path, model, check=faulty(fault))
    assert code == 0
    assert report["result"]["node_names"] == [culprit]
    assert report["checks"] <= 2 * (n - 1).bit_length() + 4
    assert recheck(tmp_path, fault) == 1  # the answer, re-checked on its own, still fails
    kept = [n.name for n in onnx.load(str(tmp_path / "reduced.onnx")).graph.node]
    assert kept == [culprit]  # node names from the input model are kept


def test_random_cut_feed_loses_a_data_dependent_fault_that_recorded_values_keep(tmp_path):
    model = fixture_path("convnet")
    code, report = reduce(tmp_path, model, "--cut-feed", "random", check=faulty("threshold:relu4:2.0"))
    assert code == 0
    assert report["result"]["node_names"] != ["relu4"]  # the fault needs values over 2.0


def test_several_samples_feed_every_sample(tmp_path):
    model = fixture_path("chain")
    code, report = reduce(tmp_path, model, "--samples", "3", "--save-inputs", str(tmp_path / "used.json"),
                          check=faulty("scale:relu4"))
    assert code == 0 and report["result"]["node_names"] == ["relu4"]
    from bisector.data import generate_inputs, load_inputs
    from bisector.model.prepare import default_specs

    samples = load_inputs(tmp_path / "reduced_inputs.json")
    assert len(samples) == 3
    assert not all((samples[0][k] == samples[1][k]).all() for k in samples[0])
    used = load_inputs(tmp_path / "used.json")  # --save-inputs: the full model's inputs, every sample
    generated = generate_inputs(default_specs(onnx.load(str(model))), samples=3, seed=1)
    assert [sorted(u) for u in used] == [sorted(g) for g in generated] == [["x"]] * 3
    assert all((u["x"] == g["x"]).all() for u, g in zip(used, generated))


def test_dynamic_shapes_are_frozen_from_the_flag(tmp_path):
    model = fixture_path("dynamic")
    code, _ = reduce(tmp_path, model, check=faulty("scale:relu1"))
    assert code == 2  # a dynamic input and no shape: told which flag to use
    code, report = reduce(tmp_path / "again", model, "--model-input-shapes", "x:[2,16]",
                          check=faulty("scale:reduce_mean1"))
    assert code == 0 and report["result"]["node_names"] == ["reduce_mean1"]


def test_ir3_model(tmp_path):
    model = fixture_path("ir3")
    names = [n.name for n in onnx.load(str(model)).graph.node]
    culprit = names[len(names) // 2]
    code, report = reduce(tmp_path, model, check=faulty(f"scale:{culprit}"))
    assert code == 0 and report["result"]["node_names"] == [culprit]


def test_control_flow_nodes_stay_whole(tmp_path):
    model = fixture_path("control_flow")
    code, report = reduce(tmp_path, model, check=faulty("scale:if1_then_mul"))
    assert code == 0
    assert report["result"]["node_names"] == ["if1"]  # the If holding the faulty branch, as one node


def test_external_data_model_reduces_without_copying_weights_per_iteration(tmp_path):
    (tmp_path / "model").mkdir()
    for f in ("external.onnx", "external.onnx.data"):
        shutil.copy(fixture_path("external").with_name(f), tmp_path / "model" / f)
    model, data = tmp_path / "model" / "external.onnx", tmp_path / "model" / "external.onnx.data"
    names = [n.name for n in onnx.load(str(model), load_external_data=False).graph.node]
    culprit = names[len(names) // 2]
    code, report = reduce(tmp_path, model, "--weights", "link", check=faulty(f"scale:{culprit}"))
    assert code == 0 and report["result"]["node_names"] == [culprit]
    # The session copied the user's weights once and never linked them: a hard link to them would
    # make onnx.load refuse the user's own model. Candidates linked the session's own copy.
    assert data.stat().st_nlink == 1
    assert (tmp_path / "session" / "weights" / data.name).stat().st_ino != data.stat().st_ino
    onnx.load(str(model))
    written = sum(p.stat().st_size for p in (tmp_path / "session" / "iterations").rglob("*.onnx"))
    assert written < data.stat().st_size / 10
    # once checked, an iteration keeps the check's log, not the artifact or the link to the weights
    left = {p.name for p in (tmp_path / "session" / "iterations").rglob("*") if p.is_file()}
    assert left == {"check.log"}


def test_a_pair_fault_gives_a_one_minimal_proven_answer(tmp_path):
    """The check fails only when both nodes are in the candidate: the answer holds both, and the
    proof shows that removing either one passes."""
    script = tmp_path / "pair.py"
    script.write_text(
        "import onnx\n"
        "def check(path):\n"
        "    names = {n.name for n in onnx.load(path, load_external_data=False).graph.node}\n"
        "    return not {'matmul2', 'relu4'} <= names\n")
    model = tmp_path / "chain.onnx"
    onnx.save(make_chain(), model)
    code, report = reduce(tmp_path, model, "--verify-minimal", "--check-script", str(script))
    assert code == 0
    assert report["result"]["node_names"] == ["matmul2", "relu4"]
    assert report["result"]["one_minimal"] is True
    assert [p["verdict"] for p in report["result"]["minimal_proof"]] == ["good", "good"]


@pytest.mark.parametrize("mode", ["bisect", "linear"])
def test_polygraphy_modes_return_a_failing_subgraph(tmp_path, mode):
    model = fixture_path("chain")
    code, report = reduce(tmp_path, model, "--mode", mode, check=faulty("scale:relu4"))
    assert code == 0
    assert "relu4" in report["result"]["node_names"]
    assert recheck(tmp_path, "scale:relu4") == 1


def test_compare_check_finds_fp16_overflow_in_process(tmp_path):
    model = fixture_path("fp16_overflow_1")
    code, report = reduce(tmp_path, model, "--compare", "--precision", "fp16", "--atol", "1e-2", "--rtol", "1e-2",
                          "--no-remove-intermediate")
    assert code == 0
    assert report["result"]["node_names"] == ["matmul6"]
    # --weights auto links for the in-process check: no candidate carries a copy of its weights
    candidates = list((tmp_path / "session" / "iterations").glob("*/polygraphy_debug.onnx"))
    assert len(candidates) == report["checks"]
    for path in candidates:
        inits = onnx.load(str(path), load_external_data=False).graph.initializer
        assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in inits if len(t.dims) == 2)
    assert code == 0 and main(["compare", str(tmp_path / "reduced.onnx"), "--load-inputs",
                               str(tmp_path / "reduced_inputs.json"), "--precision", "fp16"], exit=False) == 1


def test_a_check_that_passes_the_full_model_stops_with_advice(tmp_path, capsys):
    model = fixture_path("chain")
    code, report = reduce(tmp_path, model, check=faulty("scale:no_such_node"))
    assert code == 2
    assert "passes the check" in capsys.readouterr().err
    assert (tmp_path / "session" / "journal.jsonl").exists()


def test_custom_domain_gives_a_clear_error(tmp_path, capsys):
    m = make_chain()
    m.graph.node[3].domain = "com.example"
    m.opset_import.add(domain="com.example", version=1)
    path = tmp_path / "custom.onnx"
    onnx.save(m, path)
    code, _ = reduce(tmp_path, path, check=faulty("scale:relu1"))
    assert code == 2
    err = capsys.readouterr().err
    assert "com.example" in err or "onnxruntime" in err
    assert "Traceback" not in err
