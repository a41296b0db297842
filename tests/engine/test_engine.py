"""The engine with a small real materializer (a text file per candidate) and real check processes
(tests/scripts/set_check.py): cache, endpoints, speculative -j, journal durability, devices, skip,
a missing check command."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bisector.artifacts.journal import JOURNAL_NAME, read
from bisector.artifacts.session import Session
from bisector.checks.base import Artifact, Check, Verdict
from bisector.checks.command import CommandCheck
from bisector.engine import EndpointError, Engine
from bisector.errors import UserError
from bisector.strategies.base import Candidate, Strategy
from bisector.strategies.reduce import ReduceStrategy
from tests.strategies import drive, fails_if_all

ROOT = Path(__file__).resolve().parents[2]
SET_CHECK = str(ROOT / "tests" / "scripts" / "set_check.py")


class TextMaterializer:
    """A candidate becomes ``candidate.txt``: its items, one per line."""

    def __init__(self):
        self.materialized = 0

    def fingerprint(self, candidate: Candidate) -> str:
        text = f"{candidate.kind}:{','.join(map(str, candidate.sorted_items()))}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def materialize(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact:
        self.materialized += 1
        path = workdir / "candidate.txt"
        path.write_text("".join(f"{i}\n" for i in candidate.sorted_items()))
        return Artifact(workdir=workdir, path=path, iteration=iteration, description=candidate.label)


def chain(n: int) -> list[frozenset[int]]:
    return [frozenset({i - 1}) if i else frozenset() for i in range(n)]


def check(need, *extra: str, record: Path | None = None) -> CommandCheck:
    argv = [sys.executable, SET_CHECK, "{artifact}", "--need", ",".join(map(str, sorted(need))), *extra]
    if record is not None:
        argv += ["--record", str(record)]
    return CommandCheck(argv)


def session(root: Path, params: dict | None = None) -> Session:
    return Session.open(root, command=["bisector", "test"], strategy="reduce", params=params or {}, model=None)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def engine(tmp_path: Path, n: int, need, *extra: str, jobs: int = 1, name: str = "s", strategy=None,
           **kw) -> tuple[Engine, Path]:
    record = tmp_path / f"{name}.record.jsonl"
    eng = Engine(strategy or ReduceStrategy(n, chain(n)), TextMaterializer(), check(need, *extra, record=record),
                 session(tmp_path / name), jobs=jobs, **kw)
    return eng, record


# ------------------------------------------------------------------------------------- the answer
def test_engine_gives_the_answer_of_the_pure_driver(tmp_path):
    eng, record = engine(tmp_path, 20, {3, 17})
    outcome = eng.run()
    expected = drive(ReduceStrategy(20, chain(20)), fails_if_all({3, 17}))
    assert outcome.result == expected.result
    assert outcome.result["nodes"] == [3, 17]
    assert outcome.stats.checks == expected.checks == len(records(record))


def test_one_node_subject_needs_only_the_endpoint(tmp_path):
    eng, record = engine(tmp_path, 1, {0})
    outcome = eng.run()  # the search asks nothing: it returns at once
    assert outcome.result["nodes"] == [0]
    assert outcome.stats.checks == 1 and len(records(record)) == 1


# ------------------------------------------------------------------------------------- the cache
def test_a_fingerprint_is_never_checked_twice_and_cached_verdicts_are_not_counted(tmp_path):
    eng, record = engine(tmp_path, 20, {3, 17})
    outcome = eng.run()
    runs = records(record)
    seen = [tuple(r["items"]) for r in runs]
    assert len(seen) == len(set(seen)), "a candidate was checked twice"
    assert outcome.stats.cached > 0  # ddmin asks again for candidates it has seen
    assert outcome.stats.checks == len(runs) == len(eng.session.journal)
    assert sum(outcome.stats.verdicts.values()) == outcome.stats.checks
    assert eng.materializer.materialized == len(runs)  # a cached verdict costs no artifact either


def test_resume_replays_the_journal_with_zero_checks(tmp_path):
    eng, record = engine(tmp_path, 20, {3, 17})
    first = eng.run()
    eng.session.close()  # one process at a time: let the resume take the session's lock
    again = Engine(ReduceStrategy(20, chain(20)), TextMaterializer(), check({3, 17}, record=record),
                   session(tmp_path / "s"))
    second = again.run()
    assert second.result == first.result
    assert second.stats.run_checks == 0
    assert second.stats.checks == first.stats.checks  # the session's checks, from the journal
    assert second.stats.verdicts == first.stats.verdicts
    assert second.stats.cached >= first.stats.checks
    assert len(records(record)) == first.stats.checks


# ------------------------------------------------------------------------------------- endpoints
def test_full_candidate_passing_is_an_endpoint_error(tmp_path):
    eng, record = engine(tmp_path, 10, {42})  # 42 is in no candidate: nothing fails
    with pytest.raises(EndpointError) as err:
        eng.run()
    assert "full model (10 nodes): passes the check" in err.value.message
    assert "no failure to search for" in err.value.message
    assert err.value.hint and "check" in err.value.hint
    assert isinstance(err.value, UserError)
    assert len(records(record)) == 1  # the endpoint first, and nothing else


class TwoEnds(Strategy):
    """A minimal strategy with both endpoints: all items must fail, none must pass."""

    name = "two-ends"

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def endpoints(self):
        return (Candidate(frozenset(range(self.n)), label="everything", phase="endpoints"),
                Candidate(frozenset(), label="nothing", phase="endpoints"))

    def search(self):
        verdict = yield self.ask(Candidate(frozenset({0}), label="first", phase="search"))
        return {"first": verdict.value}


def test_trivial_candidate_failing_is_an_endpoint_error(tmp_path):
    eng, record = engine(tmp_path, 4, set(), strategy=TwoEnds(4))  # need nothing: everything fails
    with pytest.raises(EndpointError) as err:
        eng.run()
    assert "the trivial candidate (nothing) also fails the check" in err.value.message
    assert [r["items"] for r in records(record)] == [[0, 1, 2, 3], []]


def test_endpoints_that_bracket_a_failure_let_the_search_run(tmp_path):
    eng, record = engine(tmp_path, 4, {1}, strategy=TwoEnds(4))
    outcome = eng.run()
    assert outcome.result == {"first": "good"}
    assert [r["items"] for r in records(record)] == [[0, 1, 2, 3], [], [0]]


def test_endpoint_skipped_is_an_endpoint_error(tmp_path):
    eng, _ = engine(tmp_path, 6, {3}, "--skip-without", "99", strategy=TwoEnds(6))
    with pytest.raises(EndpointError, match="was skipped by the check"):
        eng.run()


# ------------------------------------------------------------------------------------- -j
@pytest.mark.parametrize("need", [{3, 13}, {11}, {0, 5, 9}])
def test_j2_gives_exactly_the_answer_of_j1(tmp_path, need):
    one, _ = engine(tmp_path, 16, need, name="j1")
    two, record2 = engine(tmp_path, 16, need, "--sleep", "0.2", jobs=2, name="j2")  # overlaps under load too
    r1, r2 = one.run(), two.run()
    assert r2.result == r1.result
    assert r2.result["nodes"] == sorted(need)
    journal = list(two.session.journal)
    assert any(e.speculative for e in journal), "-j 2 never speculated"
    runs = records(record2)
    overlapping = any(a["start"] < b["end"] and b["start"] < a["end"] for a, b in itertools.combinations(runs, 2))
    assert overlapping, "-j 2 never ran two checks at once"
    # Every verdict the answer rests on was journaled, speculative ones too: resume needs no check.
    two.session.close()
    again = Engine(ReduceStrategy(16, chain(16)), TextMaterializer(), check(need), session(tmp_path / "j2"))
    assert again.run().stats.run_checks == 0


def test_with_j2_the_first_ask_runs_beside_the_full_model_check(tmp_path):
    events = []
    eng, _ = engine(tmp_path, 16, {5}, "--sleep", "0.3", jobs=2, listeners=[events.append])
    eng.run()
    starts = [e for e in events if e["event"] in ("check-start", "verdict")][:3]
    assert [e["event"] for e in starts] == ["check-start", "check-start", "verdict"]
    assert starts[1]["speculative"] and not starts[0]["speculative"]


def test_j3_with_skips_gives_the_answer_of_j1(tmp_path):
    extra = ("--skip-without", "5", "--full", "12")
    one, _ = engine(tmp_path, 12, {3, 10}, *extra, name="j1")
    three, _ = engine(tmp_path, 12, {3, 10}, *extra, "--sleep", "0.03", jobs=3, name="j3")
    assert three.run().result == one.run().result


# ------------------------------------------------------------------------------------- speculation at the end
class AskAndGuess(Strategy):
    """Asks for {0} while guessing it will want {1} next, then is done without it."""

    name = "ask-and-guess"

    def endpoints(self):
        return None, None

    def search(self):
        verdict = yield self.ask(Candidate(frozenset({0}), label="asked", phase="search"),
                                 [Candidate(frozenset({1}), label="guessed", phase="search")])
        return {"asked": verdict.value}


SLOW_GUESS = """\
import os, sys, time
items = open(sys.argv[1]).read().split()
open(os.path.join(sys.argv[2], items[0]), "w").write(str(os.getpid()))
if items == ["1"]:
    time.sleep(float(sys.argv[3]))
for _ in range(200):  # the asked check ends only once the guess runs
    if os.path.exists(os.path.join(sys.argv[2], "1")):
        break
    time.sleep(0.05)
"""


def slow_guess(tmp_path: Path, seconds: float) -> tuple[CommandCheck, Path]:
    """A check that leaves its pid in PIDS/<item> and sleeps ``seconds`` on the guessed candidate; on
    the asked one it ends only once the guess has started."""
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "slow_guess.py"
    script.write_text(SLOW_GUESS)
    return CommandCheck([sys.executable, str(script), "{artifact}", str(pids), str(seconds)]), pids


def test_speculation_still_running_when_the_search_ends_is_cancelled(tmp_path):
    check, pids = slow_guess(tmp_path, 60)
    eng = Engine(AskAndGuess(), TextMaterializer(), check, session(tmp_path / "s"), jobs=2)
    start = time.monotonic()
    outcome = eng.run()
    assert time.monotonic() - start < 20, "the engine waited for the speculative check"
    assert outcome.result == {"asked": "good"}
    guess = int((pids / "1").read_text())
    assert not os.path.exists(f"/proc/{guess}"), "the cancelled check was not killed and reaped"
    entries = read(tmp_path / "s" / JOURNAL_NAME)
    assert [e.label for e in entries] == ["asked"] and outcome.stats.checks == 1  # nothing of the guess
    assert sorted(p.name for p in (tmp_path / "s" / "iterations").iterdir()) == [f"{entries[0].iteration:04d}"]

    eng.session.close()
    again = Engine(AskAndGuess(), TextMaterializer(), check, session(tmp_path / "s"), jobs=2).run()
    assert again.result == outcome.result and again.stats.run_checks == 0  # cancel left the check usable


class GuessWrongThenMoveOn(Strategy):
    """Asks for {0} guessing {1}, then for {2} guessing {3}: the first guess is never wanted."""

    name = "guess-wrong"

    def endpoints(self):
        return None, None

    def search(self):
        first = yield self.ask(Candidate(frozenset({0}), label="a0", phase="search"),
                               [Candidate(frozenset({1}), label="g1", phase="search")])
        second = yield self.ask(Candidate(frozenset({2}), label="a2", phase="search"),
                                [Candidate(frozenset({3}), label="g3", phase="search")])
        return {"a0": first.value, "a2": second.value}


WAIT_FOR = """\
import os, sys, time
item = open(sys.argv[1]).read().split()[0]
open(os.path.join(sys.argv[2], item), "w").write(str(os.getpid()))
if item == "1":
    time.sleep(60)
partner = {"0": "1", "2": "3"}.get(item)  # ends only once its guess has started
for _ in range(200):
    if partner is None or os.path.exists(os.path.join(sys.argv[2], partner)):
        break
    time.sleep(0.05)
"""


def test_a_guess_the_search_no_longer_wants_is_killed_and_its_slot_reused(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "wait_for.py"
    script.write_text(WAIT_FOR)
    check = CommandCheck([sys.executable, str(script), "{artifact}", str(pids)])
    events = []
    eng = Engine(GuessWrongThenMoveOn(), TextMaterializer(), check, session(tmp_path / "s"), jobs=2,
                 listeners=[events.append])
    start = time.monotonic()
    outcome = eng.run()
    assert time.monotonic() - start < 20, "the unwanted guess kept its slot"
    assert outcome.result == {"a0": "good", "a2": "good"}
    assert (pids / "3").exists()  # started while a2 ran: the dropped guess's slot was reused
    guess = int((pids / "1").read_text())
    assert not os.path.exists(f"/proc/{guess}"), "the unwanted guess was not killed and reaped"
    labels = [e.label for e in read(tmp_path / "s" / JOURNAL_NAME)]
    assert "g1" not in labels and {"a0", "a2"} <= set(labels)  # g3 ends with a2 or is cancelled
    assert [e["label"] for e in events if e["event"] == "dropped"] == ["g1"]


class Uncancellable(Check):
    """A check that cannot cancel (``cancellable`` is False): its speculation runs to the end."""

    def __init__(self, inner):
        self._inner = inner

    def run(self, artifact):
        return self._inner.run(artifact)


def test_speculation_that_cannot_be_cancelled_is_journaled_when_it_finishes(tmp_path):
    check, pids = slow_guess(tmp_path, 1)
    eng = Engine(AskAndGuess(), TextMaterializer(), Uncancellable(check), session(tmp_path / "s"), jobs=2)
    outcome = eng.run()
    assert outcome.result == {"asked": "good"}
    entries = read(tmp_path / "s" / JOURNAL_NAME)
    assert [(e.label, e.speculative) for e in entries] == [("asked", False), ("guessed", True)]
    assert outcome.stats.checks == 2
    eng.session.close()
    again = Engine(AskAndGuess(), TextMaterializer(), check, session(tmp_path / "s"), jobs=2).run()
    assert again.result == outcome.result and again.stats.run_checks == 0


# ------------------------------------------------------------------------------------- journal
def test_each_verdict_is_durable_before_the_next_check_starts(tmp_path):
    eng, record = engine(tmp_path, 20, {3, 17}, "--journal-lines")  # the check counts the lines
    eng.run()
    runs = records(record)
    assert [r["journal_lines"] for r in runs] == list(range(len(runs)))


JOURNAL_WRITER = """
import sys
from pathlib import Path
from bisector.artifacts.journal import Entry, Journal
from bisector.checks.base import Verdict
j = Journal(Path(sys.argv[1]))
for i in range(3):
    j.append(Entry(fingerprint=f"{i:032x}", verdict=Verdict.BAD, iteration=i))
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_journal_appends_are_fsynced(tmp_path):
    trace = tmp_path / "trace.txt"
    journal = tmp_path / JOURNAL_NAME
    proc = subprocess.run(["strace", "-f", "-o", str(trace), "-e", "trace=openat,write,fsync,close",
                           sys.executable, "-c", JOURNAL_WRITER, str(journal)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    fd, events = None, []
    for line in trace.read_text().splitlines():
        if "openat(" in line and str(journal) in line and "= " in line and "O_WRONLY" in line:
            fd = line.rsplit("= ", 1)[1].split()[0]
        elif fd is not None and f"write({fd}," in line:
            events.append("write")
        elif fd is not None and f"fsync({fd})" in line:
            events.append("fsync")
        elif fd is not None and f"close({fd})" in line:
            events.append("close")
            fd = None
    assert events == ["write", "fsync", "close"] * 3
    assert len(read(journal)) == 3


def test_torn_last_line_is_tolerated_and_only_that_check_is_repeated(tmp_path):
    eng, record = engine(tmp_path, 20, {3, 17})
    first = eng.run()
    eng.session.close()
    path = tmp_path / "s" / JOURNAL_NAME
    lines = path.read_text().splitlines(keepends=True)
    torn = lines[-1][: len(lines[-1]) // 2]  # killed in the middle of the last write
    path.write_text("".join(lines[:-1]) + torn)
    assert len(read(path)) == len(lines) - 1
    again = Engine(ReduceStrategy(20, chain(20)), TextMaterializer(), check({3, 17}, record=record),
                   session(tmp_path / "s"))
    second = again.run()
    assert second.result == first.result
    assert second.stats.run_checks == 1  # only the verdict that was torn
    assert second.stats.checks == first.stats.checks
    assert len(records(record)) == first.stats.checks + 1
    text = path.read_text()
    assert text.endswith("\n")
    good_lines = [ln for ln in text.splitlines() if ln.strip()]
    assert torn not in good_lines  # the torn bytes were cut off: no verdict in them
    assert len(read(path)) == len(lines)  # everything else reads back
    for ln in good_lines:
        if ln != torn:
            json.loads(ln)


@pytest.mark.parametrize("line,says", [("not json", "journal.jsonl:3 is damaged"), ('{"no": "fingerprint"}', "no 'fingerprint'"),
                                        ('{"fingerprint": "ab", "verdict": "bad", "iteration": 3.5}', "'iteration' is 3.5"),
                                        ('{"fingerprint": "ab", "verdict": "maybe"}', "'maybe' is not a valid Verdict"), ("{}", "no 'fin"),
                                        ('{"fingerprint": "ab", "verdict": "bad", "items": ["x"]}', "no node position")])
def test_a_damaged_journal_line_is_a_one_line_error_and_the_journal_is_kept(tmp_path, line, says):
    path = tmp_path / JOURNAL_NAME
    good = '{"fingerprint": "aa", "verdict": "good", "iteration": 0}\n'
    path.write_text(good + "\n" + line + "\n" + good)
    with pytest.raises(UserError, match=re.escape(says)):
        read(path)
    assert path.read_text() == good + "\n" + line + "\n" + good  # nothing lost or rewritten


def test_two_verdicts_for_one_candidate_are_reported_not_used(tmp_path):
    eng, _ = engine(tmp_path, 20, {3})
    eng.run()
    eng.session.close()
    path = tmp_path / "s" / JOURNAL_NAME
    first = json.loads(path.read_text().splitlines()[0])
    flipped = dict(first, verdict="good" if first["verdict"] == "bad" else "bad", iteration=99)
    with open(path, "a") as f:
        f.write(json.dumps(flipped) + "\n")
    with pytest.raises(UserError, match="two verdicts") as err:
        session(tmp_path / "s")
    assert "two processes ran the session at once" in err.value.message and "bisector replay" in err.value.hint


# ------------------------------------------------------------------------------------- devices, skip
def test_devices_give_each_worker_its_own_cuda_visible_devices(tmp_path):
    eng, record = engine(tmp_path, 16, {3, 13}, "--sleep", "0.1", jobs=2, devices=["0", "1"])
    eng.run()
    runs = records(record)
    assert {r["cuda"] for r in runs} == {"0", "1"}
    for a in runs:
        for b in runs:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["cuda"] != b["cuda"], "two checks ran at once on one device"


def test_without_devices_cuda_visible_devices_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    eng, record = engine(tmp_path, 8, {3})
    eng.run()
    assert {r["cuda"] for r in records(record)} == {None}


def test_exit_125_is_a_skip_and_the_search_goes_around_it(tmp_path):
    eng, record = engine(tmp_path, 20, {3, 17}, "--skip-without", "5", "--full", "20")
    outcome = eng.run()
    assert outcome.stats.verdicts["skip"] > 0
    assert sum(r["code"] == 125 for r in records(record)) == outcome.stats.verdicts["skip"]
    skips = [e for e in eng.session.journal if e.verdict == Verdict.SKIP]
    assert skips and all(e.evidence["exit_code"] == 125 and "skip" in e.evidence["note"] for e in skips)

    def predicate(items):
        if 5 not in items and len(items) != 20:
            return Verdict.SKIP
        return Verdict.BAD if {3, 17} <= items else Verdict.GOOD

    assert outcome.result == drive(ReduceStrategy(20, chain(20)), predicate).result
    assert outcome.result["nodes"] == [3, 5, 17]  # 5 could never be removed: its removal is untestable


# ------------------------------------------------------------------------------------- a missing command
def test_missing_check_command_is_a_user_error_before_the_start(tmp_path):
    with pytest.raises(UserError, match="not found"):
        CommandCheck([str(tmp_path / "no-such-check.sh"), "{artifact}"]).validate()
    with pytest.raises(UserError, match="not found on PATH"):
        CommandCheck(["no-such-check-command-anywhere", "{artifact}"]).validate()


def test_check_command_missing_at_the_start_is_a_user_error_and_the_session_resumes(tmp_path):
    script = tmp_path / "check.sh"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import subprocess, sys
        sys.exit(subprocess.call([sys.executable, {SET_CHECK!r}, *sys.argv[1:]]))
        """))
    script.chmod(0o755)
    record = tmp_path / "record.jsonl"
    argv = [str(script), "{artifact}", "--need", "3,17", "--record", str(record)]

    hidden = tmp_path / "check.sh.away"
    script.rename(hidden)  # gone before the first check
    eng = Engine(ReduceStrategy(20, chain(20)), TextMaterializer(), CommandCheck(argv), session(tmp_path / "s"))
    with pytest.raises(UserError, match="not found"):
        eng.run()
    assert (tmp_path / "s" / "session.json").exists()
    assert read(tmp_path / "s" / JOURNAL_NAME) == []

    eng.session.close()
    hidden.rename(script)
    outcome = Engine(ReduceStrategy(20, chain(20)), TextMaterializer(), CommandCheck(argv),
                     session(tmp_path / "s")).run()
    assert outcome.result["nodes"] == [3, 17]
    assert outcome.stats.checks == len(records(record))


def test_a_check_that_cannot_run_is_a_user_error(tmp_path):
    script = tmp_path / "check.sh"
    script.write_text("exit 1\n")  # no #! line: exec fails with ENOEXEC
    script.chmod(0o755)
    eng = Engine(ReduceStrategy(4, chain(4)), TextMaterializer(), CommandCheck([str(script)]), session(tmp_path / "s"))
    with pytest.raises(UserError, match="cannot be run"):
        eng.run()


# ------------------------------------------------------------------------------------- events
def test_events_come_in_order_start_checks_verdicts_done(tmp_path):
    events = []
    eng, _ = engine(tmp_path, 8, {5}, listeners=[events.append])
    outcome = eng.run()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("check-start") == kinds.count("verdict") == outcome.stats.checks
    assert events[-1]["result"] == outcome.result
    started = {e["iteration"] for e in events if e["event"] == "check-start"}
    assert started == {e["iteration"] for e in events if e["event"] == "verdict"}


def test_a_broken_listener_does_not_break_the_session(tmp_path):
    def broken(event):
        raise RuntimeError("display died")

    eng, _ = engine(tmp_path, 8, {5}, listeners=[broken])
    assert eng.run().result["nodes"] == [5]
