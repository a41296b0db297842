"""The fixture flaky builder (fixtures/flaky_builder.py) and its check (fixtures/engine_check.py):
real builds of ONNX "engines" on onnxruntime, forced tactics, and a flaw that strikes at its rate."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest

from bisector.build.tactics import Tactic, load, read_tactics, write_tactics
from fixtures import flaky_builder
from fixtures.engine_check import check
from fixtures.models import make_convnet, make_transformer
from tests.helpers import ENV, ROOT

BUILDER, CHECK = ROOT / "fixtures" / "flaky_builder.py", ROOT / "fixtures" / "engine_check.py"


def run(script, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    onnx.save(make_transformer(), root / "transformer.onnx")
    onnx.save(make_convnet(), root / "convnet.onnx")
    return root


@pytest.mark.parametrize("name", ["transformer", "convnet"])
def test_a_build_is_a_right_engine_and_a_tactics_file(tmp_path, models, name):
    model = models / f"{name}.onnx"
    built = run(BUILDER, model, "e.onnx", "t.json", "--seed", 5, "--verbose", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "built e.onnx" in built.stdout and "The selected tactic is (tactic hash, cost(in ms)):0x" in built.stdout
    whole = load(tmp_path / "t.json")
    assert whole.meta["seed"] == 5 and whole.meta["builder"] == "fixtures.flaky_builder"
    assert list(whole.tactics) == [n.name for n in onnx.load(model).graph.node]
    assert set(whole.time_ms) == set(whole.tactics)
    assert all(t.key.startswith("0x") and len(t.key) == 34 for t in whole.tactics.values())
    checked = run(CHECK, "e.onnx", "--reference", model, cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.startswith("MATCH"), checked.stdout
    again = run(BUILDER, model, "e2.onnx", "t2.json", "--seed", 5, cwd=tmp_path)
    assert again.returncode == 0
    assert (tmp_path / "e.onnx").read_bytes() == (tmp_path / "e2.onnx").read_bytes()
    assert read_tactics(tmp_path / "t2.json") == whole.tactics


def test_seeds_vary_the_choices_and_every_implementation_is_right():
    model = make_transformer()
    seen = set()
    for seed in range(30):
        engine, tactics, _, struck = flaky_builder.build(model, seed)
        seen |= {(layer, t.name) for layer, t in tactics.items()}
        assert not struck
    names = {name for _, name in seen}
    assert {"gemm_fp32", "gemm_split_k", "gemm_fp16_acc", "softmax", "softmax_stable", "softmax_naive"} <= names
    assert len({layer for layer, _ in seen if layer.endswith("matmul")}) == 8


def test_every_implementation_passes_the_check(tmp_path):
    """Forcing each implementation on every layer that has it: the engine stays right."""
    for make, impls in ((make_transformer, ("gemm_split_k", "gemm_fp16_acc", "softmax_stable", "softmax_naive")),
                        (make_convnet, ("conv_split_cin",))):
        model = make()
        onnx.save(model, tmp_path / "m.onnx")
        for impl in impls:
            op = next(op for op, table in flaky_builder.IMPLS.items() if impl in table)
            forced = {n.name: Tactic(n.name, flaky_builder.tactic_hash(op, impl), impl)
                      for n in model.graph.node if n.op_type == op}
            engine, tactics, _, _ = flaky_builder.build(model, 0, forced)
            assert {tactics[layer].name for layer in forced} == {impl}
            onnx.save(engine, tmp_path / "e.onnx")
            assert check(str(tmp_path / "e.onnx"), str(tmp_path / "m.onnx"))[0] == 0, impl


def test_load_tactics_forces_the_choices(tmp_path, models):
    model = models / "transformer.onnx"
    assert run(BUILDER, model, "a.onnx", "a.json", "--seed", 1, cwd=tmp_path).returncode == 0
    assert run(BUILDER, model, "b.onnx", "b.json", "--seed", 2, cwd=tmp_path).returncode == 0
    a, b = read_tactics(tmp_path / "a.json"), read_tactics(tmp_path / "b.json")
    assert a != b  # the seeds chose differently ...
    forced = run(BUILDER, model, "c.onnx", "c.json", "--seed", 2, "--load-tactics", "a.json", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert read_tactics(tmp_path / "c.json") == a  # ... and forcing seed 1's tactics gives them back
    layer = "softmax"
    write_tactics(tmp_path / "bad.json", {layer: Tactic(layer, "0xdeadbeef", "nope")}, {})
    refused = run(BUILDER, model, "d.onnx", "d.json", "--load-tactics", "bad.json", cwd=tmp_path)
    assert refused.returncode == 2 and "forced tactic 0xdeadbeef" in refused.stderr
    assert not (tmp_path / "d.onnx").exists()
    unknown = run(BUILDER, model, "d.onnx", "d.json", "--flaky-layer", "nowhere", cwd=tmp_path)
    assert unknown.returncode == 2 and "no such node" in unknown.stderr


def test_the_flaw_strikes_at_its_rate_and_only_when_chosen(tmp_path):
    model = make_transformer()
    onnx.save(model, tmp_path / "m.onnx")
    flaw = flaky_builder.Flaw("softmax", "softmax_naive", 0.5)
    naive = {"softmax": Tactic("softmax", flaky_builder.tactic_hash("Softmax", "softmax_naive"), "softmax_naive")}
    failed = 0
    for seed in range(60):
        engine, _, _, struck = flaky_builder.build(model, seed, naive, flaw)
        onnx.save(engine, tmp_path / "e.onnx")
        code, line = check(str(tmp_path / "e.onnx"), str(tmp_path / "m.onnx"))
        assert code == (1 if struck else 0), line  # the check sees exactly the builds the flaw struck
        assert {p.key: p.value for p in engine.metadata_props}["flaky_builder.fault"] == str(int(struck))
        failed += struck
    assert 18 <= failed <= 42  # 0.5 of 60: within 3 standard deviations (3.9)
    stable = {"softmax": Tactic("softmax", flaky_builder.tactic_hash("Softmax", "softmax_stable"), "softmax_stable")}
    assert not any(flaky_builder.build(model, seed, stable, flaw)[3] for seed in range(30))
    chosen = [flaky_builder.build(model, seed, None, flaw) for seed in range(30)]
    assert any(t["softmax"].name == "softmax_naive" for _, t, _, _ in chosen)
    assert all(t["softmax"].name == "softmax_naive" for _, t, _, struck in chosen if struck)


def test_the_flaw_through_the_scripts(tmp_path, models):
    """The command line of a hunt: build with a flaky layer, then the check, as real processes."""
    model = models / "transformer.onnx"
    codes = set()
    for seed in range(8):
        built = run(BUILDER, model, "e.onnx", "t.json", "--seed", seed, "--flaky-layer", "softmax",
                    "--fail-prob", 1.0, cwd=tmp_path)
        assert built.returncode == 0, built.stderr
        naive = read_tactics(tmp_path / "t.json")["softmax"].name == "softmax_naive"
        code = run(CHECK, "e.onnx", "--reference", model, cwd=tmp_path).returncode
        assert code == (1 if naive else 0)
        codes.add(code)
    assert codes == {0, 1}
