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


def run_script(name: str, workdir) -> dict:
    """Run tests/engine/NAME (a cluster of its own, in a process of its own); its JSON."""
    pytest.importorskip("ray", reason="ray is not installed: pip install 'bisector[ray]'")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "engine" / name), str(workdir)], capture_output=True,
                          text=True, timeout=500, env={**ENV, "RAY_AUTH_MODE": "disabled"}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.ray
def test_a_node_removed_mid_check_gives_a_retry_on_the_other_node_and_the_local_answer(tmp_path):
    done = run_script("ray_two_nodes.py", tmp_path)
    assert "error" not in done, done["error"]
    local = api.run(ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=tmp_path / "local.onnx")),
                    FAULTY, api.RunOptions(session=tmp_path / "local"))
    assert done["exit_code"] == 0 and done["answer"] == list(local.report.result.node_names) == ["relu4"]
    assert done["verdicts"] == [[e.fingerprint, e.verdict.value] for e in local.outcome.iterations]
    first, retry, *rest = done["raylets"]
    assert first == done["removed"] and retry != first and set(rest) == {retry}  # the rest on the live node
    assert len(done["raylets"]) == len(done["verdicts"]) + 1  # one try more than verdicts: the lost one
    assert not done["grandchild_alive"]


@pytest.mark.ray
def test_a_cluster_whose_head_dies_mid_run_stops_it_in_one_line_and_resume_ends_it_there_again(tmp_path):
    done = run_script("ray_cluster_down.py", tmp_path)
    # Ray's driver would end the process with exit 1 after 60 s; bisector stops it first, resumably
    assert done["exit_code"] == 3 and done["seconds_to_exit"] < 40, done
    assert "stopped answering" in done["stderr_tail"][-1] and "lost on the Ray cluster" in done["stderr_tail"][-1]
    assert len(done["journal_lines"]) >= done["known_before"] >= 1  # what was journaled stays
    assert done["resume_exit_code"] == 0 and done["answer"] == ["relu4"], done
