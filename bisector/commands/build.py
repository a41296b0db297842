"""``bisector build``: hunt a flaky engine build. Build again and again (each build a fresh choice
of tactics), check each engine, record every layer's tactic, and rank the (layer, tactic) pairs
that go with failing builds (``bisector.build.ranking``).

Each build is one iteration: the materializer runs the builder into the iteration directory (the
engine as ``polygraphy_debug.engine``, the tactics file ``tactics.json``, the build's log
``build.log``); the check then runs on the engine as on any artifact. After the check,
``tactics.json`` (and with ``keep_engines`` the engine) is sorted into ``good/`` or ``bad/`` as
``tactics_N<iteration>.json``. A copy stays in the iteration directory (``build_tactics.json``,
with ``build.json``: the build number and its seconds), which ``finish`` ranks from. The hunt is
journaled like every search: a hunt killed at 3 a.m. resumes with the next build.

Example (no CLI)::

    cmd = BuildCommand(BuildOptions(model=Path("m.onnx"), build_cmd="python b.py {model} {engine} {tactics}",
                                    until="100"))
    run = api.run(cmd, CheckSpec.command(["python", "check.py", "polygraphy_debug.engine"]))
    run.report.result.suspects[0]["layer"]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bisector.checks.base import Artifact, Verdict
from bisector.commands.base import Command, Plan, Report
from bisector.commands.build_builders import BUILD_LOG, BUILDERS, BuildFailed, BuildPaths, Builder, make_builder
from bisector.errors import UserError, one_of
from bisector.model.fingerprint import items_fingerprint
from bisector.strategies.base import Candidate

TACTICS_NAME = "tactics.json"  # sorted into good/ or bad/ after the check
KEPT_TACTICS = "build_tactics.json"  # the copy finish ranks from
BUILD_META = "build.json"  # {"build": i, "seconds": s}
SUSPECTS_NAME = "suspects.json"
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Until:
    """``--until``: a verdict to stop at, a number of builds, or a duration in seconds."""

    verdict: Verdict | None = None
    builds: int | None = None
    seconds: float | None = None


def parse_until(text: str) -> Until:
    """``good``/``bad`` -> stop at that verdict; ``N`` -> N builds; ``8h``/``30m``/``90s``/``1d``."""
    word = str(text).strip().lower()
    if word in ("good", "bad", "pass", "fail"):
        return Until(verdict=Verdict.parse(word))
    if word.isdigit() and int(word) > 0:
        return Until(builds=int(word))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", word)
    if m and float(m[1]) > 0:
        return Until(seconds=float(m[1]) * DURATION_UNITS[m[2]])
    raise UserError(f"`until` {text!r}: expected good, bad, a positive number of builds or a duration (8h, 30m)")


@dataclass(frozen=True)
class BuildOptions:
    model: Path
    builder: str = "command"  # command, tensorrt or trtexec
    build_cmd: str | None = None  # the command builder's template: "... {model} {engine} {tactics}"
    until: str = "bad"  # good, bad, N builds, or a duration (8h)
    max_builds: int | None = None
    keep_engines: bool = False
    iter_artifact: str = "polygraphy_debug.engine"
    build_timeout: float | None = None  # seconds per build (command and trtexec builders)
    trtexec: str = "trtexec"
    output: Path | None = None  # suspects.json written here too
    launch_dir: Path | None = None  # where `build_cmd`'s relative paths are found (default: here, when made)
    confidence: float | None = None  # stop once the top suspect is this sure (0.99), whatever `until` says


class BuildMaterializer:
    """Runs build ``i`` into the iteration directory (see the module docstring)."""

    def __init__(self, builder: Builder, model: Path, artifact: str):
        self.builder = builder
        self.model = Path(model)
        self.artifact = artifact

    def fingerprint(self, candidate: Candidate) -> str:
        return items_fingerprint("build", candidate.items)

    def materialize(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact:
        (build,) = candidate.items
        workdir = Path(workdir)
        paths = BuildPaths(model=self.model, workdir=workdir, engine=workdir / self.artifact,
                           tactics=workdir / TACTICS_NAME, log=workdir / BUILD_LOG)
        start = time.monotonic()
        try:
            self.builder.build(paths, build)
        except BuildFailed as exc:  # one crashed build is a skip; the hunt goes on (BuildStrategy counts them)
            return Artifact(workdir=workdir, path=paths.engine, iteration=iteration, description=candidate.label,
                            skip=str(exc))
        seconds = time.monotonic() - start
        shutil.copyfile(paths.tactics, workdir / KEPT_TACTICS)
        (workdir / BUILD_META).write_text(json.dumps({"build": build, "seconds": round(seconds, 3)}))
        return Artifact(workdir=workdir, path=paths.engine, iteration=iteration, description=candidate.label)

    def deferred(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact:
        """Build ``candidate`` where its check runs (a Ray node with the check's GPU): the artifact's
        ``prepare`` is :meth:`materialize`, and gives its skip reason."""
        artifact = Artifact(workdir=Path(workdir), path=Path(workdir) / self.artifact, iteration=iteration,
                            description=candidate.label)
        artifact.prepare = functools.partial(_made_here, self, candidate, Path(workdir), iteration)
        return artifact


def _made_here(materializer: BuildMaterializer, candidate: Candidate, workdir: Path, iteration: int) -> str:
    return materializer.materialize(candidate, workdir, iteration).skip


class BuildCommand(Command):
    """``bisector build``: build until a build passes, fails, N builds or a duration; rank tactics."""

    name = "build"
    options_type = BuildOptions
    OUTPUT_FIELDS = ("output",)

    def __init__(self, options: BuildOptions):
        if options.launch_dir is None:  # pinned when made, so that a resume from elsewhere finds the builder
            options = dataclasses.replace(options, launch_dir=Path.cwd())
        super().__init__(options)

    @property
    def per_iteration(self) -> tuple[str, ...]:
        return (self.options.iter_artifact,)

    def builder(self) -> Builder:
        o = self.options
        return make_builder(o.builder, o.build_cmd, o.build_timeout, o.trtexec, o.launch_dir)

    def params(self) -> dict[str, Any]:
        o = self.options
        return {"builder": o.builder, "build_cmd": o.build_cmd, "until": o.until, "max_builds": o.max_builds,
                "iter_artifact": o.iter_artifact, "confidence": o.confidence}

    def check_outputs(self) -> None:
        from bisector.commands.candidates import check_writable

        o = self.options
        one_of("`builder`", o.builder, BUILDERS)
        parse_until(o.until)
        if o.confidence is not None and not 0 < o.confidence < 1:
            raise UserError(f"`confidence` must be between 0 and 1 (0.99), not {o.confidence}")
        if o.max_builds is not None and o.max_builds < 1:
            raise UserError(f"`max_builds` must be at least 1, not {o.max_builds}")
        if o.iter_artifact in ("", ".", "..") or Path(o.iter_artifact).name != o.iter_artifact:
            raise UserError(f"`iter_artifact` {o.iter_artifact!r} must be a plain file name")
        if not Path(o.model).is_file():
            raise UserError(f"{o.model}: no such model file")
        self.builder().validate()
        check_writable(o.output)

    def setup(self, session) -> Plan:
        from bisector.strategies.build import BuildStrategy

        o = self.options
        until = parse_until(o.until)
        limit = min(n for n in (until.builds, o.max_builds) if n) if (until.builds or o.max_builds) else None
        strategy = BuildStrategy(until=until.verdict, limit=limit, stop=lambda done: None)
        rules = [deadline_rule(session, until.seconds, o.until) if until.seconds else None,
                 suspects_rule(session, strategy.progress, o.confidence)]
        strategy.stop = first_reason([r for r in rules if r is not None])
        sorted_files = (TACTICS_NAME, BUILD_LOG) + ((o.iter_artifact,) if o.keep_engines else ())
        intro = (f"build {Path(o.model).name} with the {o.builder} builder until {o.until}"
                 + (f" (at most {limit} builds)" if limit else ""),)
        return Plan(strategy, BuildMaterializer(self.builder(), o.model, o.iter_artifact), intro=intro,
                    artifacts=sorted_files)

    def finish(self, plan: Plan, outcome, session, check, force_output: bool = False) -> Report:
        from bisector.commands.build_report import build_report

        return build_report(self, outcome.result, session, check, force_output)


def hunt_builds(session) -> dict[int, tuple[Any, Path]]:
    """Each build the journal judged: build number -> (its entry, its iteration directory)."""
    out = {}
    for entry in session.journal:
        if entry.phase == "hunt" and entry.items and entry.iteration is not None:
            out[entry.items[0]] = (entry, Path(session.root) / "iterations" / f"{entry.iteration:04d}")
    return out


def spent_seconds(session) -> float:
    """Build and check seconds of the builds journaled so far (what ``--until 8h`` counts)."""
    total = 0.0
    for entry, workdir in hunt_builds(session).values():
        total += float((entry.evidence or {}).get("duration_s") or 0.0)
        try:
            total += float(json.loads((workdir / BUILD_META).read_text()).get("seconds", 0.0))
        except (OSError, ValueError):
            pass
    return total


def deadline_rule(session, budget_s: float, text: str):
    """The strategy's stop rule for a duration: builds already journaled replay; then the hunt stops
    once the session's build and check time (this run's clock, plus what the journal holds) is spent."""
    known = len(hunt_builds(session))
    deadline = time.monotonic() + budget_s - spent_seconds(session)

    def stop(done: int) -> str | None:
        if done < known or time.monotonic() < deadline:
            return None
        return f"{text} spent"
    return stop


def suspects_rule(session, progress, confidence: float | None):
    """After each new build, rank the builds so far and show the top suspect in the live view
    (``progress.status``). With ``confidence``, stop once the top suspect's p-value times the
    number of pairs and the number of builds so far (Bonferroni over the pairs and over the looks,
    ``ranking.confident``) is below ``1 - confidence`` and the next suspect is ``SEPARATION``
    times less likely. Each build's tactics are read once. Only builds ``0 .. done - 1`` count (the
    ones the hunt has taken, in order), never a later build that ``-j`` finished first: where a
    hunt stops is the same at any ``-j``, and on a resume."""
    from bisector.build.ranking import builds_needed, confident, rank
    from bisector.build.tactics import pairs, read_tactics

    read: dict[int, tuple[dict[str, str], bool] | None] = {}

    def stop(done: int) -> str | None:
        for i, (entry, workdir) in hunt_builds(session).items():
            if i < done and i not in read and entry.verdict in (Verdict.GOOD, Verdict.BAD):
                try:
                    read[i] = (pairs(read_tactics(workdir / KEPT_TACTICS)), entry.verdict == Verdict.BAD)
                except (OSError, ValueError):
                    read[i] = None
        builds = [b for b in read.values() if b is not None]
        s = rank(builds) if any(failed for _, failed in builds) else []
        if not s:
            return None
        more = builds_needed(s, len(builds), alpha=1 - confidence, sequential=True) if confidence \
            else builds_needed(s, len(builds))
        progress.status = (f"top suspect {s[0].layer} tactic {s[0].tactic}: p = {s[0].p_value:.2g}, in "
                           f"{s[0].bad_with} failing / {s[0].good_with} passing builds"
                           + (f"; sure in about {more} more builds" if more else ""))
        if confidence and confident(s, len(builds), confidence):
            return f"{s[0].layer} tactic {s[0].tactic} reached confidence {confidence:g}"
        return None
    return stop


def first_reason(rules):
    """One stop rule from several: the first that gives a reason (None: no rule)."""
    if not rules:
        return None
    return lambda done: next((why for rule in rules if (why := rule(done))), None)
