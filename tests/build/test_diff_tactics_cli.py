"""``bisector diff-tactics`` as a real process, on directories of good/ and bad/ tactics files."""

from __future__ import annotations

import json

from bisector.build.tactics import Tactic, write_tactics
from tests.build.test_ranking import flaky_builds
from tests.helpers import bisector, one_error_line


def write_builds(root, builds) -> None:
    """Each build's tactics file into root/good or root/bad, with a non-tactics file beside them."""
    for sub in ("good", "bad"):
        (root / sub).mkdir(parents=True)
        (root / sub / "polygraphy_debug.engine").write_bytes(b"\x00engine")
    for i, (tactics, failed) in enumerate(builds):
        ours = {layer: Tactic(layer, tactic, f"impl_{tactic}") for layer, tactic in tactics.items()}
        write_tactics(root / ("bad" if failed else "good") / f"build_{i}.json", ours, {"seed": i})


def test_ranks_the_one_way_flaky_culprit_first(tmp_path):
    builds = flaky_builds(seed=1)
    write_builds(tmp_path / "art", builds)
    run = bisector("diff-tactics", "--dir", "art", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    n_bad = sum(f for _, f in builds)
    assert f"Loaded {len(builds) - n_bad} good tactic replays." in run.stdout
    assert f"Loaded {n_bad} bad tactic replays." in run.stdout
    assert "Could not determine potentially bad tactics" in run.stdout  # the set difference lost it
    row1 = next(line for line in run.stdout.splitlines() if line.lstrip("│| ").startswith("1 "))
    assert "layer5" in row1 and "impl_b" in row1
    assert "Sure: layer5 tactic b goes with the failures" in run.stdout


def test_json_is_one_object(tmp_path):
    builds = flaky_builds(seed=2, failing=6)
    write_builds(tmp_path, builds)
    run = bisector("diff-tactics", "--good", "good", "--bad", "bad", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)  # exactly one object, nothing else on stdout
    assert doc["command"] == "diff-tactics" and doc["exit_code"] == 0
    assert len(doc["bad"]) == 6 and len(doc["good"]) == len(builds) - 6
    top = doc["suspects"][0]
    assert (top["layer"], top["tactic"]) == ("layer5", "b") and top["bad_with"] == 6
    assert set(top) == {"layer", "tactic", "p_value", "odds_ratio", "ochiai", "bad_with", "good_with",
                        "bad_without", "good_without"}
    assert len(doc["suspects"]) == 24 and isinstance(doc["verdict"], str) and isinstance(doc["sure"], bool)
    assert "Loaded" in run.stderr  # the tables go to stderr


def test_files_named_one_by_one_and_a_set_difference(tmp_path):
    write_tactics(tmp_path / "g.json", {"x": Tactic("x", "1")}, {})
    write_tactics(tmp_path / "b1.json", {"x": Tactic("x", "2", "slow_kernel")}, {})
    write_tactics(tmp_path / "b2.json", {"x": Tactic("x", "1")}, {})
    run = bisector("diff-tactics", "--good", "g.json", "--bad", "b1.json", "--bad", "b2.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Found potentially bad tactics" in run.stdout
    assert "Layer: x\n    Algorithms: ['2 (slow_kernel)']" in run.stdout


def test_user_errors(tmp_path):
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    run = bisector("diff-tactics", cwd=tmp_path)
    assert run.returncode == 2 and "no tactics files" in one_error_line(run.stderr)
    (tmp_path / "bad" / "broken.json").write_text('{"format": "bisector-tactics", "version": 1}')
    run = bisector("diff-tactics", cwd=tmp_path)
    assert run.returncode == 2 and "broken.json" in one_error_line(run.stderr)
    run = bisector("diff-tactics", "--good", "nowhere", "--bad", "bad", cwd=tmp_path)
    assert run.returncode == 2 and "nowhere: no such file" in one_error_line(run.stderr)
