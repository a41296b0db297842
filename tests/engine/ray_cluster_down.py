"""Run by tests/engine/test_ray_nodes.py in a process of its own: a ``bisector reduce --executor
ray`` (a process of its own too) on a cluster whose GCS (its head) is killed mid-run; then a
cluster at the same address again and ``bisector resume``.

    python tests/engine/ray_cluster_down.py WORKDIR      # prints one JSON object
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["RAY_AUTH_MODE"] = "disabled"

SLOW = ("import runpy, sys, time; time.sleep(1.5); sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(work: Path) -> dict:
    from ray.cluster_utils import Cluster

    from fixtures import fixture_path

    port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "gcs_server_port": port})
    shutil.copy(fixture_path("chain"), work / "m.onnx")
    check = [sys.executable, "-c", SLOW, str(ROOT / "fixtures" / "faulty_check.py"), "polygraphy_debug.onnx",
             "--fault", "scale:relu4", "--load-inputs", "inputs.json"]
    argv = [sys.executable, "-m", "bisector", "reduce", "m.onnx", "-o", "red.onnx", "--session", "s", "-j", "2",
            "--executor", "ray", "--ray-address", cluster.address, "--check", *check]
    proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    journal = work / "s" / "journal.jsonl"
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    known = len(journal.read_text().splitlines())
    cluster.head_node.kill_gcs_server()  # the cluster's head is gone; this machine's raylet lives on a while
    down = time.monotonic()
    out, err = proc.communicate(timeout=120)
    cluster.shutdown()
    done = {"exit_code": proc.returncode, "seconds_to_exit": round(time.monotonic() - down, 1),
            "stderr_tail": err.strip().splitlines()[-3:], "known_before": known,
            "journal_lines": [json.loads(line) for line in journal.read_text().splitlines()]}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "gcs_server_port": port})
    try:
        resumed = subprocess.run([sys.executable, "-m", "bisector", "resume", "s", "-q"], cwd=work, text=True,
                                 capture_output=True, stdin=subprocess.DEVNULL, timeout=240)
        done.update(resume_exit_code=resumed.returncode, resume_stderr=resumed.stderr.strip().splitlines()[-3:],
                    answer=json.loads((work / "s" / "result" / "report.json").read_text())["result"]
                    .get("node_names") if resumed.returncode == 0 else None)
    finally:
        cluster.shutdown()
    return done


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
