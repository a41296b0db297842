"""Run by tests/engine/test_ray_nodes.py in a process of its own (a Ray cluster of several nodes
on this machine cannot share a process with the suite's one-node cluster): a reduce on the first
two-node cluster of ``ray.cluster_utils.Cluster``, whose first check's node is removed mid-check.

    python tests/engine/ray_two_nodes.py WORKDIR      # prints one JSON object

The check records ``$RAY_RAYLET_PID`` (its node's raylet) and, the first time only, starts a
grandchild and waits: this script then removes that node. What the JSON says: the reduce's exit
code and answer, the journal's verdicts, the raylets each check ran under, the removed raylet, and
whether the first try's grandchild outlived its node.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["RAY_AUTH_MODE"] = "disabled"

CHECK = ("import os, runpy, subprocess, sys, time; m = sys.argv[1]; first = not os.path.exists(m); "
         "open(m, 'a').write(os.environ['RAY_RAYLET_PID'] + '\\n'); "
         "first and (open(m + '.child', 'w').write(str(subprocess.Popen(['sleep', '300']).pid)), time.sleep(120)); "
         "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def main(work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from bisector import api
    from bisector.checks.spec import CheckSpec
    from bisector.commands.reduce import ReduceCommand, ReduceOptions
    from fixtures import fixture_path

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    marker = work / "raylets"
    check = CheckSpec.command([sys.executable, "-c", CHECK, str(marker), str(ROOT / "fixtures" / "faulty_check.py"),
                               "polygraphy_debug.onnx", "--fault", "scale:relu4", "--load-inputs", "inputs.json"])
    done: dict = {}

    def reduce() -> None:
        command = ReduceCommand(ReduceOptions(model=fixture_path("chain"), output=work / "red.onnx"))
        try:
            run = api.run(command, check, api.RunOptions(session=work / "s", executor="ray", gpus_per_check=1,
                                                         ray_address=cluster.address))
            done.update(exit_code=run.exit_code, answer=list(run.report.result.node_names),
                        verdicts=[[e.fingerprint, e.verdict.value] for e in run.outcome.iterations])
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            done.update(error=f"{type(exc).__name__}: {exc}")

    runner = threading.Thread(target=reduce)
    runner.start()
    deadline = time.monotonic() + 120
    while not (work / "raylets.child").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    victim_pid = int(marker.read_text().split()[0])
    victim = next(n for n in nodes if n.all_processes["raylet"][0].process.pid == victim_pid)
    grandchild = int((work / "raylets.child").read_text())
    cluster.remove_node(victim)
    runner.join(300)
    deadline = time.monotonic() + 15
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    done.update(raylets=[int(p) for p in marker.read_text().split()], removed=victim_pid,
                grandchild_alive=_alive(grandchild))
    ray.shutdown()
    cluster.shutdown()
    return done


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
