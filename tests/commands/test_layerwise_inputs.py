"""Polygraphy's layerwise inputs (issue 9): ``polygraphy run --onnx-outputs mark all --save-inputs
--save-outputs``, then ``polygraphy data merge`` (``data to-input`` before 0.50), gives a
``--load-inputs`` file with a value for every tensor. ``reduce`` feeds those values to cut tensors
and records only what the file lacks; ``precision`` and ``compare`` use the graph inputs. Every file
here is written by the real ``polygraphy`` CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bisector.cli import main
from bisector.data import decode_array, encode_array, load_inputs
from fixtures import fixture_path
from tests.helpers import bisector, one_error_line

ROOT = Path(__file__).resolve().parents[2]
FAULTY = [sys.executable, str(ROOT / "fixtures" / "faulty_check.py")]
POLYGRAPHY = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")
CUT = "add4_out"  # relu4's input: the answer to scale:relu4 is fed it
SHIFT = 5.0  # added to CUT in the file: the model never computes these values

# A check that keeps what each candidate was fed for CUT, then runs the faulty check.
SPY = """
import base64, io, json, subprocess, sys
import numpy as np
seen, *check = sys.argv[1:]
for i, sample in enumerate(json.load(open("inputs.json"))):
    if {cut!r} in sample:
        raw = base64.b64decode(sample[{cut!r}]["array"])
        np.save(f"{{seen}}/{{len(__import__('os').listdir(seen))}}.npy", np.load(io.BytesIO(raw)))
sys.exit(subprocess.run(check).returncode)
""".format(cut=CUT)

pytestmark = pytest.mark.skipif(POLYGRAPHY is None, reason="needs the polygraphy CLI")


def polygraphy_layerwise(model: Path, out: Path) -> Path:
    """The documented workflow: every tensor's value for Polygraphy's default input, one file."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([POLYGRAPHY, "run", str(model), "--onnxrt", "--onnx-outputs", "mark", "all",
                    "--save-inputs", str(out / "inputs.json"), "--save-outputs", str(out / "layerwise.json")],
                   check=True, capture_output=True)
    subprocess.run([POLYGRAPHY, "data", "merge", str(out / "inputs.json"), str(out / "layerwise.json"),
                    "-o", str(out / "layerwise_inputs.json")], check=True, capture_output=True)
    return out / "layerwise_inputs.json"


@pytest.fixture(scope="module")
def chain_layerwise(tmp_path_factory) -> Path:
    return polygraphy_layerwise(fixture_path("chain"), tmp_path_factory.mktemp("chain_layerwise"))


def edited(src: Path, dst: Path, edit) -> Path:
    """``src`` with ``edit(sample)`` applied to its only sample, at the JSON level (Polygraphy's format)."""
    doc = json.loads(src.read_text())
    assert len(doc) == 1
    edit(doc[0])
    dst.write_text(json.dumps(doc))
    return dst


def shift_cut(sample: dict) -> None:
    sample[CUT] = encode_array(decode_array(sample[CUT]) + np.float32(SHIFT))


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv), exit=False)
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


@pytest.mark.parametrize("dropped,note", [((), "nothing recorded"), (("matmul1_out", "relu6_out"), "; 2 recorded")])
def test_reduce_feeds_cut_tensors_the_files_values(tmp_path, capsys, chain_layerwise, dropped, note):
    def edit(sample):
        shift_cut(sample)
        for name in dropped:  # a partial file: those are recorded, the file's values still win
            del sample[name]

    data = edited(chain_layerwise, tmp_path / "layerwise_inputs.json", edit)
    want = load_inputs(data)[0][CUT]
    assert not np.allclose(want, load_inputs(chain_layerwise)[0][CUT])
    (tmp_path / "spy.py").write_text(SPY)
    (tmp_path / "seen").mkdir()
    code, out = run(capsys, "reduce", str(fixture_path("chain")), "-o", str(tmp_path / "reduced.onnx"),
                    "--session", str(tmp_path / "s"), "--load-inputs", str(data),
                    "--check", sys.executable, str(tmp_path / "spy.py"), str(tmp_path / "seen"), *FAULTY,
                    "polygraphy_debug.onnx", "--fault", "scale:relu4", "--load-inputs", "inputs.json")
    assert code == 0, out
    report = json.loads((tmp_path / "s" / "result" / "report.json").read_text())
    assert report["result"]["node_names"] == ["relu4"]
    assert "cut tensors are fed the values the loaded data gives" in out and note in out
    seen = [np.load(p) for p in (tmp_path / "seen").glob("*.npy")]
    assert seen and all(np.array_equal(v, want) for v in seen)  # every candidate cut there saw the file's value
    answer_inputs = tmp_path / "reduced_inputs.json"
    assert np.array_equal(load_inputs(answer_inputs)[0][CUT], want)
    # The answer and its inputs run under Polygraphy as they are.
    subprocess.run([POLYGRAPHY, "run", str(tmp_path / "reduced.onnx"), "--onnxrt", "--load-inputs",
                    str(answer_inputs)], check=True, capture_output=True)


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(not_a_tensor=s["relu4_out"]), "names 'not_a_tensor' ({data}), which is "
                                                      "neither an input nor a tensor of the model"),
    (lambda s: s.update({CUT: encode_array(np.zeros((1, 8), np.float32))}),
     f"--load-inputs gives '{CUT}' shape [1, 8], the model computes [1, 16]"),
    (lambda s: s.update({CUT: encode_array(np.zeros((1, 16), np.float64))}),
     f"--load-inputs gives '{CUT}' as float64, the model computes float32"),
    (lambda s: s.pop("x"), "--load-inputs gives no value for input 'x' in sample 0"),
])
def test_values_that_do_not_fit_the_model_are_refused_in_one_line(tmp_path, chain_layerwise, edit, message):
    data = edited(chain_layerwise, tmp_path / "layerwise_inputs.json", edit)
    proc = bisector("reduce", str(fixture_path("chain")), "-o", str(tmp_path / "r.onnx"), "--session",
                    str(tmp_path / "s"), "--load-inputs", str(data), "--check", "true", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message.replace("{data}", str(data)) in one_error_line(proc.stderr)


def test_precision_and_compare_use_the_inputs_of_a_layerwise_file(tmp_path, capsys, chain_layerwise):
    data = polygraphy_layerwise(fixture_path("fp16_overflow_1"), tmp_path / "fp16")
    code, out = run(capsys, "precision", str(fixture_path("fp16_overflow_1")), "-o", str(tmp_path / "mixed.onnx"),
                    "-q", "--compare", "--atol", "1e-2", "--rtol", "1e-2", "--fp16", "-p", "float32",
                    "--session", str(tmp_path / "s"), "--load-inputs", str(data))
    assert code == 0, out
    keep = json.loads((tmp_path / "s" / "result" / "keep_fp32.json").read_text())
    assert [n["name"] for n in keep["nodes"]] == ["matmul6", "rescale6"]
    code, out = run(capsys, "compare", str(fixture_path("chain")), "--load-inputs", str(chain_layerwise))
    assert code == 0, out
    assert "only the model's inputs are used" in out


def test_values_of_tensors_that_constant_folding_removes_are_not_refused(tmp_path, capsys):
    # make_dynamic's Shape -> Gather -> Unsqueeze -> Concat folds away once the batch is frozen.
    model = fixture_path("dynamic")
    data = polygraphy_layerwise(model, tmp_path / "dynamic")
    assert "shape1_out" in load_inputs(data)[0]
    code, out = run(capsys, "reduce", str(model), "-o", str(tmp_path / "reduced.onnx"), "--session",
                    str(tmp_path / "s"), "--load-inputs", str(data), "--check", *FAULTY, "polygraphy_debug.onnx",
                    "--fault", "scale:matmul2", "--load-inputs", "inputs.json")
    assert code == 0, out
    assert "nothing recorded" in out
    assert json.loads((tmp_path / "s" / "result" / "report.json").read_text())["result"]["node_names"] == ["matmul2"]
