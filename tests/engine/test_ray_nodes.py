"""A node that dies mid-check, on a real Ray cluster of two nodes on this machine
(``ray.cluster_utils.Cluster``, run by tests/engine/ray_two_nodes.py in a process of its own): the
check is retried on the other node, never given a verdict from the dead one, its grandchild dies
with its node, and the reduce answers as a local ``-j 1`` does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bisector import api
from bisector.commands.reduce import ReduceCommand, ReduceOptions
from fixtures import fixture_path
from tests.engine.test_ray_executor import FAULTY
from tests.helpers import ENV, ROOT


@pytest.mark.ray
def test_a_node_removed_mid_check_gives_a_retry_on_the_other_node_and_the_local_answer(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed: pip install 'bisector[ray]'")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "engine" / "ray_two_nodes.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=400, env={**ENV, "RAY_AUTH_MODE": "disabled"},
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in done, done["error"]
    local = api.run(ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=tmp_path / "local.onnx")),
                    FAULTY, api.RunOptions(session=tmp_path / "local"))
    assert done["exit_code"] == 0 and done["answer"] == list(local.report.result.node_names) == ["relu4"]
    assert done["verdicts"] == [[e.fingerprint, e.verdict.value] for e in local.outcome.iterations]
    first, retry, *rest = done["raylets"]
    assert first == done["removed"] and retry != first and set(rest) == {retry}  # the rest on the live node
    assert len(done["raylets"]) == len(done["verdicts"]) + 1  # one try more than verdicts: the lost one
    assert not done["grandchild_alive"]
