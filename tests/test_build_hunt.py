"""``bisector build`` on the fixture flaky builder (fixtures/flaky_builder.py: a real builder on
onnxruntime whose engine is an ONNX model) and its check (fixtures/engine_check.py): a hunt until
the first bad build, a hunt of N builds that ranks the planted flaky tactic first, kill -9 and
resume, and (slow) the issue's unattended 150-build hunt.

Each build's seed is its build number (``--seed {build}``), so a hunt is the same every time; with
``--fail-prob 1`` a build fails exactly when it chose the flawed implementation of ``fc1_matmul``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import onnx
import pytest

from bisector import api
from bisector.checks.spec import CheckSpec
from bisector.commands.build import BuildCommand, BuildOptions
from fixtures.flaky_builder import tactic_hash
from fixtures.models import make_transformer
from tests.helpers import ENV, ROOT, bisector, journal, one_error_line, report

BUILDER = ROOT / "fixtures" / "flaky_builder.py"
CHECK = ROOT / "fixtures" / "engine_check.py"
FLAKY = "fc1_matmul"
SUSPECT_KEYS = {"layer", "tactic", "p_value", "odds_ratio", "ochiai", "bad_with", "good_with", "bad_without",
                "good_without"}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "t.onnx"
    onnx.save(make_transformer(), str(path))
    return path


def build_cmd(flaky_tactic: str = "gemm_split_k", fail_prob: float = 1.0, seed: str = "--seed {build}") -> str:
    return (f"{sys.executable} {BUILDER} {{model}} {{engine}} {{tactics}} {seed} --flaky-layer {FLAKY} "
            f"--flaky-tactic {flaky_tactic} --fail-prob {fail_prob}")


def check_argv(model: Path) -> list[str]:
    return [sys.executable, str(CHECK), "polygraphy_debug.engine", "--reference", str(model)]


def test_until_bad_stops_at_the_first_failing_build_and_sorts_each_build_into_good_or_bad(tmp_path, model):
    # gemm_fp32 is flawed here: builds 0 and 1 chose another implementation, build 2 chose it
    done = bisector("build", str(model), "--build-cmd", build_cmd("gemm_fp32"), "--until", "bad", "--keep-engines",
                    "--session", "s", "-q", "-o", "out.json", "--check", *check_argv(model), cwd=tmp_path)
    # one failing build among three: the top suspect is not sure yet, so the hunt is inconclusive
    assert done.returncode == 4, done.stderr
    assert report(tmp_path / "s")["conclusive"] is False and "not sure" in done.stderr
    assert not (tmp_path / "out.json").exists()
    r = report(tmp_path / "s")["result"]
    assert r["verdict"].startswith("Not sure")
    assert (r["builds"], r["good_builds"], r["bad_builds"]) == (3, [0, 1], [2])
    assert r["reason"] == "build 2 was bad"
    session = tmp_path / "s"
    assert sorted(p.name for p in (session / "good").glob("tactics_N*.json")) == ["tactics_N0.json", "tactics_N1.json"]
    assert [p.name for p in (session / "bad").glob("*")] and (session / "bad" / "tactics_N2.json").is_file()
    assert (session / "bad" / "polygraphy_debug_N2.engine").is_file()  # --keep-engines
    assert (session / "bad" / "build_N2.log").is_file()
    suspects = json.loads((session / "result" / "suspects.json").read_text())
    assert suspects[0]["layer"] == FLAKY and suspects[0]["tactic"] == tactic_hash("MatMul", "gemm_fp32")


def test_a_hunt_of_n_builds_ranks_the_planted_tactic_first(tmp_path, model):
    events = []
    run = api.run(BuildCommand(BuildOptions(model=model, build_cmd=build_cmd(), until="10")),
                  CheckSpec.command(check_argv(model)), api.RunOptions(session=tmp_path / "s", jobs=2),
                  listeners=(events.append,))
    r = run.report.result
    shown = [e["status"] for e in events if e.get("status")]  # the live view's line: the top suspect so far
    assert shown and shown[-1].startswith(f"top suspect {FLAKY} tactic {tactic_hash('MatMul', 'gemm_split_k')}")
    assert r.builds == 10 and (r.good, r.bad) == (6, 4) and r.bad_builds == (0, 1, 5, 9)
    assert r.pass_rate == pytest.approx(0.6)
    assert (r.suspects[0]["layer"], r.suspects[0]["tactic"]) == (FLAKY, tactic_hash("MatMul", "gemm_split_k"))
    written = json.loads((tmp_path / "s" / "result" / "suspects.json").read_text())
    assert written == list(r.suspects) and all(set(s) == SUSPECT_KEYS for s in written)
    assert [s["p_value"] for s in written] == sorted(s["p_value"] for s in written)
    md = (tmp_path / "s" / "result" / "report.md").read_text()
    assert "pass rate 60%" in md and "### Pass rate over time" in md and f"| `{FLAKY}` |" in md
    assert not list((tmp_path / "s").glob("*/polygraphy_debug_N*.engine"))  # engines only with --keep-engines
    assert r.verdict.startswith("Not sure yet") and run.exit_code == 4  # ranked first, but 4 failures are not sure


def test_a_hunt_stops_once_the_top_suspect_is_sure_enough_or_its_time_is_spent(tmp_path, model):
    # even builds take longer, so at -j 3 later builds finish first: the stop still counts builds in order
    (tmp_path / "slow_even.py").write_text(
        "import os, sys, time\nb = int(sys.argv[1])\nb % 2 or time.sleep(0.4)\n"
        f"os.execv(sys.executable, [sys.executable, {str(BUILDER)!r}, *sys.argv[2:]])\n")
    slow_even = build_cmd().replace(f"{BUILDER}", "slow_even.py {build}")
    hunt = BuildCommand(BuildOptions(model=model, build_cmd=slow_even, until="40", confidence=0.9,
                                     launch_dir=tmp_path))
    sure = api.run(hunt, CheckSpec.command(check_argv(model)), api.RunOptions(session=tmp_path / "sure", jobs=3))
    sure = sure.report.result
    assert sure.builds == 16 and sure.reason.startswith(f"{FLAKY} tactic {tactic_hash('MatMul', 'gemm_split_k')}")
    assert sure.reason.endswith("reached confidence 0.9")
    assert sure.verdict.startswith("Sure:")  # the report's verdict follows the rule that stopped the hunt
    timed = api.run(BuildCommand(BuildOptions(model=model, build_cmd=build_cmd(), until="1s")),
                    CheckSpec.command(check_argv(model)), api.RunOptions(session=tmp_path / "timed")).report.result
    assert timed.reason == "1s spent" and 1 <= timed.builds <= 4


def test_the_confidence_rule_counts_only_the_builds_the_hunt_has_taken_in_order(tmp_path, model):
    from types import SimpleNamespace

    from bisector.artifacts.journal import read
    from bisector.commands.build import suspects_rule
    from bisector.strategies.base import Progress

    run = api.run(BuildCommand(BuildOptions(model=model, build_cmd=build_cmd(), until="20")),
                  CheckSpec.command(check_argv(model)), api.RunOptions(session=tmp_path / "s", jobs=2))
    session = SimpleNamespace(root=run.session.root, journal=read(run.session.root / "journal.jsonl"))
    # 20 builds journaled; a -j 1 hunt is sure after 16 (the test above): later builds must not count sooner
    rule = suspects_rule(session, Progress(), 0.9)
    assert [rule(done) for done in (0, 8, 15)] == [None, None, None]
    assert rule(16).endswith("reached confidence 0.9")


def crashing_builder(tmp_path: Path, crash: str) -> str:
    """A build command that crashes (exit 139, a last log line) on the builds ``crash`` names
    (a Python expression of ``b``), else runs the fixture builder."""
    (tmp_path / "crashy.py").write_text(
        "import os, sys\n"
        "b = int(sys.argv[1])\n"
        f"if {crash}:\n"
        "    print(f'Segmentation fault in build {b}', flush=True)\n"
        "    sys.exit(139)\n"
        f"os.execv(sys.executable, [sys.executable, {str(BUILDER)!r}, *sys.argv[2:]])\n")
    return build_cmd().replace(f"{BUILDER}", "crashy.py {build}")


def test_a_crashed_build_is_a_skip_with_its_reason_and_the_hunt_goes_on(tmp_path, model):
    done = bisector("build", str(model), "--build-cmd", crashing_builder(tmp_path, "b in (1, 2)"), "--until", "6",
                    "--session", "s", "--json", "--check", *check_argv(model), cwd=tmp_path)
    assert done.returncode in (0, 4), done.stderr
    assert "Traceback" not in done.stderr and "Segmentation fault in build 1" in done.stderr
    r = report(tmp_path / "s")["result"]
    assert (r["builds"], r["skip"]) == (6, 2) and 1 not in r["bad_builds"] + r["good_builds"]
    skips = [e for e in journal(tmp_path / "s") if e["verdict"] == "skip"]
    assert [e["items"] for e in skips] == [[1], [2]]
    assert all(e["evidence"]["cause"] == "build" and "failed (exit 139): Segmentation fault" in e["evidence"]["note"]
               for e in skips)


def test_a_builder_that_keeps_failing_ends_the_hunt_inconclusive_with_its_last_line(tmp_path, model):
    from bisector.strategies.build import SKIPS_IN_A_ROW

    done = bisector("build", str(model), "--build-cmd", crashing_builder(tmp_path, "b >= 2"), "--until", "good",
                    "--session", "s", "-o", "out.json", "--check", *check_argv(model), cwd=tmp_path)
    assert done.returncode == 4, done.stderr
    assert "the builder keeps failing" in done.stderr and f"Segmentation fault in build {1 + SKIPS_IN_A_ROW}" \
        in done.stderr.replace("\n", " ")
    doc = report(tmp_path / "s")
    assert doc["conclusive"] is False and (doc["result"]["builds"], doc["result"]["skip"]) == (2 + SKIPS_IN_A_ROW,
                                                                                               SKIPS_IN_A_ROW)
    assert not (tmp_path / "out.json").exists()


def test_confirm_forces_the_top_suspect_away_and_on_and_the_failure_follows_it(tmp_path, model):
    api.run(BuildCommand(BuildOptions(model=model, build_cmd=build_cmd(), until="6")),
            CheckSpec.command(check_argv(model)), api.RunOptions(session=tmp_path / "s", jobs=2))
    done = bisector("confirm", "s", "--repeat", "4", "-j", "2", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    r = report(tmp_path / "s" / "confirm")["result"]
    assert (r["layer"], r["tactic"]) == (FLAKY, tactic_hash("MatMul", "gemm_split_k"))
    assert r["away_tactic"] != r["tactic"]
    assert (r["on"]["bad"], r["on"]["good"], r["away"]["bad"], r["away"]["good"]) == (4, 0, 0, 4)
    assert r["follows"] and r["p_value"] == pytest.approx(1 / 70)
    assert r["verdict"].startswith(f"The failure follows {FLAKY} tactic")
    forced = json.loads((tmp_path / "s" / "confirm" / "forced_away.json").read_text())
    assert [(t["layer"], t["tactic"]) for t in forced["layers"]] == [(FLAKY, r["away_tactic"])]


def test_confirm_of_an_innocent_pair_is_not_confirmed_and_inconclusive(tmp_path, model):
    api.run(BuildCommand(BuildOptions(model=model, build_cmd=build_cmd(), until="6")),
            CheckSpec.command(check_argv(model)), api.RunOptions(session=tmp_path / "s", jobs=2))
    suspects = json.loads((tmp_path / "s" / "result" / "suspects.json").read_text())
    layers = Counter(s["layer"] for s in suspects)
    innocent = next(s for s in suspects if s["layer"] != FLAKY and layers[s["layer"]] > 1)
    done = bisector("confirm", "s", "--repeat", "2", "--layer", innocent["layer"], "--tactic", innocent["tactic"],
                    "--json", cwd=tmp_path)
    assert done.returncode == 4, done.stderr
    r = report(tmp_path / "s" / "confirm")
    assert r["conclusive"] is False and r["result"]["verdict"].startswith("Not confirmed")


def test_confirm_refuses_a_hunt_without_a_failing_build_or_without_a_journal(tmp_path, model):
    api.run(BuildCommand(BuildOptions(model=model, build_cmd=build_cmd(fail_prob=0.0), until="2")),
            CheckSpec.command(check_argv(model)), api.RunOptions(session=tmp_path / "s"))
    done = bisector("confirm", "s", cwd=tmp_path)
    assert done.returncode == 2 and "s failed: there is no suspect to confirm" in one_error_line(done.stderr)
    (tmp_path / "s" / "journal.jsonl").unlink()
    done = bisector("confirm", "s", cwd=tmp_path)
    assert done.returncode == 2 and "journal cannot be read" in one_error_line(done.stderr)


def test_confirm_refuses_a_session_that_is_no_hunt_or_names_half_a_suspect(tmp_path, model):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "session.json").write_text(json.dumps({"format": 1, "spec": {}}))
    half = bisector("confirm", "s", "--layer", FLAKY, cwd=tmp_path)
    assert half.returncode == 2 and "--layer and --tactic go together" in half.stderr


def test_kill_9_mid_hunt_then_resume_builds_each_build_once(tmp_path, model):
    session = tmp_path / "s"
    argv = [sys.executable, "-m", "bisector", "build", str(model), "--build-cmd", build_cmd(), "--until", "6",
            "--session", str(session), "-q", "--check", *check_argv(model)]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (session / "journal.jsonl").exists() and len(journal(session, torn_ok=True)) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the hunt ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(journal(session, torn_ok=True))
    assert 2 <= before < 6
    done = bisector("resume", str(session), cwd=tmp_path)
    assert done.returncode == 4, done.stderr  # 3 failing builds of 6: ranked, but not sure yet (inconclusive)
    entries = journal(session)
    assert sorted(e["items"][0] for e in entries) == list(range(6))
    assert max(Counter(e["fingerprint"] for e in entries).values()) == 1
    r = report(session)["result"]
    assert (r["builds"], r["bad_builds"]) == (6, [0, 1, 5])
    assert report(session)["checks_this_run"] == 6 - before
    assert r["suspects"][0]["layer"] == FLAKY
    assert r["suspects_json"] == str(session / "result" / "suspects.json")


@pytest.mark.slow
def test_the_issue_s_unattended_hunt_of_150_builds_ranks_the_one_way_flaky_tactic_first(tmp_path, model):
    """The done-when command: random seeds, a tactic that fails half the times it is chosen."""
    done = bisector("build", str(model), "--builder", "command", "--build-cmd",
                    build_cmd(fail_prob=0.5, seed=""), "--until", "150", "-j", "2", "--session", "s", "-q",
                    "--check", *check_argv(model), cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr
    suspects = json.loads((tmp_path / "s" / "result" / "suspects.json").read_text())
    assert (suspects[0]["layer"], suspects[0]["tactic"]) == (FLAKY, tactic_hash("MatMul", "gemm_split_k"))


def test_an_unknown_placeholder_or_a_missing_script_is_refused_before_a_session(tmp_path, model):
    for cmd, words in ((build_cmd() + " --note {buld}", "unknown placeholder(s) {buld}; known: {model}"),
                       (f"{sys.executable} nope.py {{model}} {{engine}} {{tactics}}", "build script nope.py does not")):
        done = bisector("build", str(model), "--build-cmd", cmd, "--session", "s", "--check", *check_argv(model),
                        cwd=tmp_path)
        assert done.returncode == 2 and words in one_error_line(done.stderr)
        assert "--build-cmd" in done.stderr and not (tmp_path / "s").exists()
