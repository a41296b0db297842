"""A build hunt on Ray: each build is made where its check runs (the task's node and GPU), not on
the machine that drives the hunt, and the hunt's verdicts are those of a local one."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from bisector import api
from bisector.checks.spec import CheckSpec
from bisector.commands.build import BuildCommand, BuildOptions
from fixtures.models import make_transformer
from tests.helpers import ROOT

# run directly (tests/test_build_hunt.py): builds 0, 1 and 5 of these are bad
RECORD = ("import os, runpy, sys; open(sys.argv[1], 'a').write(os.environ.get('RAY_RAYLET_PID', '-') + ' ' + "
          "os.environ.get('CUDA_VISIBLE_DEVICES', '-') + '\\n'); sys.argv = sys.argv[2:]; "
          "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.ray
def test_a_hunt_on_ray_builds_on_the_checks_node_and_gives_the_verdicts_of_a_local_one(ray, tmp_path):
    model = tmp_path / "t.onnx"
    onnx.save(make_transformer(), str(model))
    builds = tmp_path / "built-in"
    build_cmd = (f"{sys.executable} -c \"{RECORD}\" {builds} {ROOT / 'fixtures' / 'flaky_builder.py'} {{model}} "
                 "{engine} {tactics} --seed {build} --flaky-layer fc1_matmul --flaky-tactic gemm_split_k "
                 "--fail-prob 1.0")
    check = CheckSpec.command([sys.executable, str(ROOT / "fixtures" / "engine_check.py"), "polygraphy_debug.engine",
                               "--reference", str(model)])
    runs = {}
    for name, options in (("local", {}), ("ray", {"executor": "ray", "jobs": 2, "gpus_per_check": 1})):
        command = BuildCommand(BuildOptions(model=model, build_cmd=build_cmd, until="6", launch_dir=tmp_path))
        runs[name] = api.run(command, check, api.RunOptions(session=tmp_path / name, **options))
        if name == "local":
            assert set(builds.read_text().split()) == {"-"}  # built here
            builds.unlink()
    def build_of(run, entry) -> int:
        return json.loads((run.session.root / "iterations" / f"{entry.iteration:04d}" / "build.json").read_text())["build"]

    verdicts = {name: sorted((build_of(run, e), e.verdict.value) for e in run.outcome.iterations)
                for name, run in runs.items()}
    assert verdicts["ray"] == verdicts["local"] and len(verdicts["local"]) == 6
    assert [b for b, v in verdicts["local"] if v == "bad"] == [0, 1, 5]
    seen = [line.split() for line in builds.read_text().splitlines()]
    assert len(seen) == 6 and all(pid != "-" and gpu in ("0", "1") for pid, gpu in seen)  # each on a Ray GPU
    assert runs["ray"].report.result.suspects[0]["layer"] == runs["local"].report.result.suspects[0]["layer"]
