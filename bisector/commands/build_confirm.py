"""``bisector confirm HUNT``: does the failure follow the hunt's top suspect? Rebuild ``repeat``
times with the suspect's layer forced to another tactic (``away``: the one that layer got most
often in passing builds) and as many times with the suspect forced on, alternating; check each
build with the hunt's own check. The failure follows the suspect when forced-on builds fail and
forced-away builds do not (one-sided Fisher exact test of the two arms).

Forcing goes through the hunt's builder: a tactics file of one layer (bisector's format, in the
confirm session: ``forced_on.json``, ``forced_away.json``); the command builder gets it as
``--load-tactics FILE`` appended to ``--build-cmd`` (or where its ``{force}`` placeholder is), the
tensorrt and trtexec builders through the editable timing cache.

The confirm session is its own session (default ``HUNT/confirm``): journaled and resumable.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bisector.checks.base import Artifact
from bisector.commands.base import Command, Plan, Report
from bisector.commands.build_builders import BUILD_LOG, BuildFailed, BuildPaths
from bisector.errors import UserError
from bisector.model.fingerprint import items_fingerprint
from bisector.strategies.base import Candidate

SURE_P = 0.05  # the arms differ at this p-value


@dataclass(frozen=True)
class ConfirmOptions:
    hunt: Path  # the build hunt's session
    repeat: int = 5  # builds per arm
    layer: str | None = None  # default: the top suspect's
    tactic: str | None = None


@dataclass(frozen=True)
class ConfirmResult:
    layer: str
    tactic: str
    away_tactic: str
    on: dict[str, int]
    away: dict[str, int]
    p_value: float
    follows: bool
    verdict: str

    def to_json(self) -> dict[str, Any]:
        from bisector.codec import encode

        return encode(self)


def hunt_command(root: Path):
    """The hunt's BuildCommand, from its ``session.json``."""
    from bisector.artifacts.session import load_meta
    from bisector.commands.registry import command_from_json

    meta = load_meta(Path(root))
    spec = meta.get("spec") or {}
    command = command_from_json(spec.get("command") or {})
    if command.name != "build":
        raise UserError(f"{root} is a {command.name} session, not a build hunt: `hunt`")
    return command


def tactics_of_builds(root: Path) -> list[tuple[dict, bool]]:
    """Each judged build of the hunt: ``({layer: Tactic}, failed)``."""
    from bisector.build.tactics import read_tactics
    from bisector.commands.build import KEPT_TACTICS

    out = []
    try:
        lines = (Path(root) / "journal.jsonl").read_text().splitlines()
    except OSError as e:
        raise UserError(f"{root}: the hunt's journal cannot be read ({e.strerror or e}): `hunt`",
                        hint=f"a hunt that never built: bisector resume {root}") from None
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("phase") != "hunt" or e.get("verdict") not in ("good", "bad") or e.get("iteration") is None:
            continue
        try:
            out.append((read_tactics(Path(root) / "iterations" / f"{e['iteration']:04d}" / KEPT_TACTICS),
                        e["verdict"] == "bad"))
        except (OSError, ValueError):
            continue
    return out


def choose(root: Path, layer: str | None, tactic: str | None):
    """``(suspect Tactic, away Tactic)``: the suspect (default: the hunt's top one) and the tactic its
    layer got most often in passing builds (else in any build)."""
    builds = tactics_of_builds(root)
    if not any(failed for _, failed in builds):
        raise UserError(f"no build of {root} failed: there is no suspect to confirm: `hunt`",
                        hint=f"let the hunt find failing builds: bisector resume {root}")
    if layer is None or tactic is None:
        path = Path(root) / "result" / "suspects.json"
        suspects = json.loads(path.read_text()) if path.exists() else []
        if not suspects:
            raise UserError(f"{root} ranks no suspect yet (no result/suspects.json, or an empty one)",
                            hint=f"let the hunt find failing builds: bisector resume {root}")
        layer, tactic = suspects[0]["layer"], suspects[0]["tactic"]
    seen = [t[layer] for t, _ in builds if layer in t]
    on = next((t for t in seen if t.tactic == tactic), None)
    if on is None:
        raise UserError(f"no build of {root} gave layer {layer!r} tactic {tactic!r}: nothing to force")
    others = Counter(t for t, failed in ((t[layer], f) for t, f in builds if layer in t)
                     if t.tactic != tactic and not failed) or Counter(t for t in seen if t.tactic != tactic)
    if not others:
        raise UserError(f"layer {layer!r} got tactic {tactic} in every build: there is no other tactic to force",
                        hint="the failure may not come from this layer's tactic at all")
    return on, others.most_common(1)[0][0]


class ConfirmMaterializer:
    def __init__(self, builder, model: Path, artifact: str, forces: dict[str, Path]):
        self.builder, self.model, self.artifact, self.forces = builder, Path(model), artifact, forces

    def fingerprint(self, candidate: Candidate) -> str:
        return items_fingerprint(f"confirm-{candidate.kind}", candidate.items)

    def materialize(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact:
        (build,) = candidate.items
        workdir = Path(workdir)
        paths = BuildPaths(model=self.model, workdir=workdir, engine=workdir / self.artifact,
                           tactics=workdir / "tactics.json", log=workdir / BUILD_LOG)
        try:
            self.builder.build(paths, build, force=self.forces[candidate.kind])
        except BuildFailed as exc:  # a skip of its arm; the others go on
            return Artifact(workdir=workdir, path=paths.engine, iteration=iteration, description=candidate.label,
                            skip=str(exc))
        return Artifact(workdir=workdir, path=paths.engine, iteration=iteration, description=candidate.label)


class ConfirmCommand(Command):
    """``bisector confirm``: force the top suspect away and on, check each rebuild."""

    name = "confirm"
    options_type = ConfirmOptions

    @property
    def model(self) -> Path | None:
        return hunt_command(self.options.hunt).options.model

    @property
    def per_iteration(self) -> tuple[str, ...]:
        return (hunt_command(self.options.hunt).options.iter_artifact,)

    def params(self) -> dict[str, Any]:
        o = self.options
        return {"hunt": str(o.hunt), "repeat": o.repeat, "layer": o.layer, "tactic": o.tactic}

    def check_outputs(self) -> None:
        if self.options.repeat < 1:
            raise UserError(f"`repeat` must be at least 1, not {self.options.repeat}")
        hunt_command(self.options.hunt).builder().validate()
        choose(self.options.hunt, self.options.layer, self.options.tactic)

    def setup(self, session) -> Plan:
        from bisector.build.tactics import write_tactics
        from bisector.strategies.build import ConfirmStrategy

        hunt = hunt_command(self.options.hunt)
        on, away = choose(self.options.hunt, self.options.layer, self.options.tactic)
        forces = {arm: write_tactics(Path(session.root) / f"forced_{arm}.json", {t.layer: t},
                                     {"builder": "bisector confirm", "arm": arm})
                  for arm, t in (("on", on), ("away", away))}
        materializer = ConfirmMaterializer(hunt.builder(), hunt.options.model, hunt.options.iter_artifact, forces)
        intro = (f"confirm {on.layer} tactic {on.tactic}: {self.options.repeat} build(s) with it forced on, as many "
                 f"forced away to {away.tactic}",)
        return Plan(ConfirmStrategy(self.options.repeat), materializer, intro=intro, state=(on, away),
                    artifacts=(BUILD_LOG,))

    def finish(self, plan: Plan, outcome, session, check, force_output: bool = False) -> Report:
        on, away = plan.state
        r = confirm_result(on, away, outcome.result["on"], outcome.result["away"])
        path = Path(session.result_dir) / "confirm.json"
        path.write_text(json.dumps(r.to_json(), indent=1) + "\n")
        return Report(result=r, files={"confirm_json": str(path)}, markdown=f"## Answer\n\n{r.verdict}\n",
                      lines=(r.verdict,), reproduce=tuple(check.argv) if check.kind == "command" else None,
                      conclusive=r.follows and r.on["bad"] + r.on["good"] > 0 and r.away["bad"] + r.away["good"] > 0,
                      doubt="" if r.follows else r.verdict if r.on["good"] + r.on["bad"] and r.away["good"] + r.away["bad"]
                      else "every build of an arm was skipped", show_failing_log=False)


def confirm_result(on, away, on_counts: dict[str, int], away_counts: dict[str, int]) -> ConfirmResult:
    from bisector.build.ranking import fisher_greater

    p = fisher_greater(on_counts["bad"], on_counts["good"], away_counts["bad"], away_counts["good"])
    follows = on_counts["bad"] > 0 and p < SURE_P
    name = f"{on.layer} tactic {on.tactic}"
    seen = (f"forced on: {on_counts['bad']} of {on_counts['bad'] + on_counts['good']} builds failed; forced away "
            f"to {away.tactic}: {away_counts['bad']} of {away_counts['bad'] + away_counts['good']} (p = {p:.2g})")
    if follows:
        text = f"The failure follows {name}: {seen}."
    elif on_counts["bad"] == 0:
        text = f"Not confirmed: no build with {name} forced on failed ({seen}); more builds (`repeat`) may tell."
    else:
        text = f"Not confirmed: the failure does not follow {name} clearly ({seen})."
    return ConfirmResult(on.layer, on.tactic, away.tactic, dict(on_counts), dict(away_counts), p, follows, text)
