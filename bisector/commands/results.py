"""What each command answers, as frozen values with ``to_json()``: ``report.json``'s ``result`` is
written from them, and code that drives a command (tests, the daemon) reads their fields, not
dict keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bisector.codec import encode


class _Json:
    def to_json(self) -> dict[str, Any]:
        return encode(self)


@dataclass(frozen=True)
class ReduceResult(_Json):
    """The smallest failing node set (``nodes``, positions in the prepared model, and their names),
    the passing set closest to it in size (``min_good``), the checks per phase and whether some
    candidate passed (``conclusive``)."""

    nodes: tuple[int, ...]
    node_names: tuple[str, ...]
    original_nodes: int
    conclusive: bool
    min_good: tuple[int, ...] | None = None
    minimal_proof: tuple[dict, ...] | None = None
    one_minimal: bool | None = None
    checks_per_phase: dict[str, int] | None = None
    culprits: tuple[dict, ...] = ()
    phases: tuple[dict, ...] = ()

    @classmethod
    def of(cls, res: dict[str, Any], written: dict[str, Any], phases: list[dict]) -> "ReduceResult":
        proof = res.get("minimal_proof")
        return cls(nodes=tuple(res["nodes"]), node_names=tuple(res["node_names"]),
                   original_nodes=res["original_nodes"], conclusive=res["conclusive"],
                   min_good=None if res.get("min_good") is None else tuple(res["min_good"]),
                   minimal_proof=None if proof is None else tuple(proof), one_minimal=res.get("one_minimal"),
                   checks_per_phase=dict(res.get("checks_per_phase") or {}),
                   culprits=tuple(written.get("culprits", ())), phases=tuple(phases))


@dataclass(frozen=True)
class PrecisionResult(_Json):
    """The nodes to keep in fp32 (``keep`` positions and ``keep_names``), out of ``lowerable``;
    whether the answer is 1-minimal and how many removals were inferred rather than checked."""

    keep: tuple[int, ...]
    keep_names: tuple[str, ...]
    lowerable: int
    conclusive: bool
    one_minimal: bool | None = None
    removals_inferred: int = 0
    kept_nodes: tuple[dict, ...] = ()
    extra: dict[str, Any] | None = None  # the strategy's other fields, as it gave them

    @classmethod
    def of(cls, res: dict[str, Any], written: dict[str, Any], conclusive: bool) -> "PrecisionResult":
        known = {"keep", "keep_names", "lowerable", "one_minimal", "removals_inferred", "conclusive"}
        return cls(keep=tuple(res["keep"]), keep_names=tuple(res.get("keep_names", ())),
                   lowerable=res["lowerable"], conclusive=conclusive, one_minimal=res.get("one_minimal"),
                   removals_inferred=res.get("removals_inferred", 0),
                   kept_nodes=tuple(written.get("kept_nodes", ())),
                   extra={k: v for k, v in res.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        doc = encode(self)
        return {**(doc.pop("extra") or {}), **doc}


@dataclass(frozen=True)
class RepeatResult(_Json):
    """How often the check ran, why it stopped, and its verdicts."""

    runs: int
    reason: str
    good: int
    bad: int
    skip: int
    bad_rate: float

    @classmethod
    def of(cls, res: dict[str, Any]) -> "RepeatResult":
        return cls(runs=res["runs"], reason=res["reason"], good=res["good"], bad=res["bad"], skip=res["skip"],
                   bad_rate=res["bad_rate"])


@dataclass(frozen=True)
class BuildResult(_Json):
    """A build hunt: how many builds, why it stopped, the verdicts and pass rate, the good and bad
    build numbers, and the ranked (layer, tactic) suspects (``Suspect.to_json()``, best first) with
    the ranking's plain-words verdict."""

    builds: int
    reason: str
    good: int
    bad: int
    skip: int
    pass_rate: float
    good_builds: tuple[int, ...] = ()
    bad_builds: tuple[int, ...] = ()
    suspects: tuple[dict, ...] = ()
    verdict: str = ""

    @classmethod
    def of(cls, res: dict[str, Any], suspects: list[dict], verdict: str) -> "BuildResult":
        return cls(builds=res["builds"], reason=res["reason"], good=res["good"], bad=res["bad"], skip=res["skip"],
                   pass_rate=res["pass_rate"], good_builds=tuple(res.get("good_builds", ())),
                   bad_builds=tuple(res.get("bad_builds", ())), suspects=tuple(suspects), verdict=verdict)
