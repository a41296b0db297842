"""precision: the fewest nodes that must stay in fp32 for a reduced-precision model to pass.

Items are the lowerable nodes (positions in the model's node list), given *in search order*: most
sensitive first (``--order sensitivity``) or topological (``--order topo``). A candidate's items are
its **keep-set**: the nodes that stay fp32; every other item runs in the low precision. The
verdicts follow the check: BAD = the failure is there (too much was lowered), GOOD = it passes.
The search assumes that keeping more never hurts (monotone), and verifies every answer it returns.

Endpoints (re-tested by the engine first): keeping nothing must fail, keeping everything must pass.

``mode="auto"`` (default): adaptive group testing, one culprit at a time.

1. **search**: with ``F`` the culprits found so far and ``R`` the items still in play (a prefix of
   the order), find the shortest prefix ``R[:j]`` such that ``F | R[:j]`` passes (binary search;
   ``F | R`` is known to pass). Then ``F | R[:j-1]`` fails, so ``R[j-1]`` is needed: it joins ``F``,
   and only ``R[:j-1]`` stays in play (``F | R[:j-1]`` plus the new culprit is the passing set).
   Then ``F`` alone is tried (**confirm**): if it passes, the search is over. ``likely`` (the number
   of items the sensitivity pass flagged) adds one probe per round, ``F | R[:likely]``, before the
   binary search. When it passes and the flagged nodes are few (at most ``ceil(log2 N)``), they
   are settled one by one instead (**drop**: try ``F | flagged - {x}`` for each, least sensitive
   first), which is cheaper when most flagged nodes are culprits, as overflowing nodes are. The same
   one-by-one pass takes over when culprits come densely (**dense**: many small errors that add
   up): the last rounds settled few items per culprit, and ``R`` is no longer than the binary
   searches would cost if as many culprits remained as were found.
2. **minimize**: try to drop each culprit (``F - {x}``). A removal that is a subset of a keep-set
   already seen failing fails too (monotone), so it costs no check; under the assumption, step 1's
   answer is already 1-minimal and this pass is free. ``verify_minimal`` checks every removal anyway.

Cost: k culprits among N items take at most ``k * (ceil(log2 N) + 1)`` checks by binary search;
the likely probe adds one per round at most, the drop phase costs at most ``1 + ceil(log2 N)`` in
all, and the dense switch is capped so that the total stays within the issue's budget of
``2k * ceil(log2 N) + 1`` for N >= 4 (a property test holds every answer to it). When the check
passes iff a set S is kept, the answer is exactly S.

``mode="bisect"`` and ``mode="linear"`` reproduce ``polygraphy debug precision``: keep a contiguous
run of the order, the first k items (``direction="forward"``) or the last k (``"reverse"``), and
binary-search k (assuming monotone), or try k = 1, 2, ... until one passes. Given the topological
order, that is Polygraphy's "run the first k layers in higher precision". These answers are not
minimal: they are there to compare with.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from bisector.checks.base import Verdict
from bisector.strategies.base import MODES, Candidate, Search, Strategy, bisect, ceil_log2

DIRECTIONS = ("forward", "reverse")
# Dense switch: the last DENSE_ROUNDS rounds settled at most one binary search's worth of items per
# culprit; and only while the culprits found are at most this many times ceil(log2 N) (keeps the
# 2k*ceil(log2 N)+1 budget).
DENSE_MAX_FACTOR = 2
DENSE_ROUNDS = 2


class PrecisionStrategy(Strategy):
    """Search over keep-sets of ``items`` (lowerable node positions, in search order).

    ``names`` labels items for people (a sequence indexed by position, or a mapping);
    ``likely``: the first ``likely`` items of the order are suspects (see the module docstring);
    ``verify_minimal``: prove 1-minimality with one check per kept node instead of inferring it.
    """

    name = "precision"

    def __init__(self, items: Sequence[int], mode: str = "auto", direction: str = "forward",
                 names: Sequence[str] | Mapping[int, str] | None = None, likely: int = 0,
                 verify_minimal: bool = False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        self.items = list(items)
        if len(set(self.items)) != len(self.items):
            raise ValueError("items must be distinct")
        if not self.items:
            raise ValueError("nothing to search: no node can run in the low precision")
        self.mode = mode
        self.direction = direction
        self.names = names
        self.likely = max(0, min(int(likely), len(self.items)))
        self.verify_minimal = verify_minimal
        self.rank = {x: i for i, x in enumerate(self.items)}
        self.known: dict[frozenset, Verdict] = {}
        self.bad: list[frozenset] = []
        self.progress.size = len(self.items)

    def params(self) -> dict[str, Any]:
        return {"items": self.items, "mode": self.mode, "direction": self.direction, "likely": self.likely,
                "verify_minimal": self.verify_minimal}

    # -- candidates -------------------------------------------------------------------------
    def label_of(self, x: int) -> str:
        if self.names is None:
            return str(x)
        try:
            return str(self.names[x])
        except (IndexError, KeyError):
            return str(x)

    def describe(self, keep) -> str:
        keep = self.in_order(keep)
        if not keep:
            return f"keep none ({len(self.items)} node{'s' if len(self.items) != 1 else ''} low)"
        shown = ", ".join(self.label_of(x) for x in keep[:3]) + (", ..." if len(keep) > 3 else "")
        return f"keep {len(keep)}: {shown}"

    def in_order(self, keep) -> list[int]:
        return sorted(keep, key=self.rank.__getitem__)

    def cand(self, keep, phase: str, label: str | None = None) -> Candidate:
        keep = frozenset(keep)
        return Candidate(keep, label=label or self.describe(keep), phase=phase, kind="keep")

    def endpoints(self) -> tuple[Candidate, Candidate | None]:
        n = len(self.items)
        return (self.cand((), "endpoints", f"keep none (all {n} lowerable nodes low)"),
                self.cand(self.items, "endpoints", f"keep all {n} lowerable nodes in fp32"))

    def on_verdict(self, candidate: Candidate, verdict: Verdict) -> None:
        self.known[candidate.items] = verdict
        if verdict == Verdict.BAD:
            self.bad.append(candidate.items)

    def test(self, keep, phase: str, label: str | None = None, speculate=()) -> Search:
        """``verdict = yield from self.test(keep, phase)``: known verdicts are not asked again."""
        keep = frozenset(keep)
        if keep in self.known:
            return self.known[keep]
        return (yield from self.check(self.cand(keep, phase, label), speculate))

    # -- the search -------------------------------------------------------------------------
    def search(self) -> Search:
        # The engine verified both endpoints first.
        self.on_verdict(self.cand((), "endpoints"), Verdict.BAD)
        self.known[frozenset(self.items)] = Verdict.GOOD
        if self.mode == "auto":
            keep = yield from self._auto()
            keep, proof = yield from self._minimize(keep)
        else:
            keep = yield from self._polygraphy()
            proof = None
        return self._result(keep, proof)

    def _auto(self) -> Search:
        found: list[int] = []
        rest = list(self.items)  # always a prefix of the order, minus nothing found
        likely = set(self.items[:self.likely])
        rounds = 0
        consumed: list[int] = []  # items settled (found or dropped) per round
        while True:
            base = frozenset(found)
            # Invariant: base | rest is known to pass. The likely items of rest are its first p.
            p = sum(1 for x in rest if x in likely)
            use_likely = 0 < p < len(rest)
            probe = p if use_likely else len(rest) // 2

            def prefix(j: int, base=base, rest=rest) -> Candidate:
                return self.cand(base | set(rest[:j]), "search")

            if rounds:
                spec = [prefix(probe)] if 0 < probe < len(rest) else []
                if (yield from self.test(base, "confirm", speculate=spec)) == Verdict.GOOD:
                    return found
                if self._dense(found, rest, consumed):
                    return found + (yield from self._drop_one(base, rest, "dense"))
            rounds += 1
            self.progress.size = len(found)
            lo, hi = 0, len(rest)  # prefix(lo) fails (or is assumed to), prefix(hi) passes
            if use_likely:
                verdict = yield from self.test(prefix(p).items, "search")
                if verdict == Verdict.GOOD and p <= ceil_log2(len(self.items)):
                    return found + (yield from self._drop_one(base, rest[:p]))
                if verdict == Verdict.GOOD:
                    hi = p
                elif verdict == Verdict.BAD:
                    lo = p
            lo, hi = yield from self.track(bisect(lo, hi, prefix, self.ask, self.progress, bad_side="low"))
            # Normally hi == lo + 1 and rest[lo] is the culprit; skips can leave a wider span,
            # all of which is kept (minimize may drop some later).
            found += rest[lo:hi]
            consumed.append(len(rest) - lo)
            rest = rest[:lo]
            self.progress.remaining = ceil_log2(len(rest) + 1) + 1

    def _dense(self, found: list[int], rest: list[int], consumed: list[int]) -> bool:
        """One check per item beats a binary search per culprit when culprits are dense: the last
        two rounds used up few items per culprit found, and ``rest`` is no longer than the binary
        searches would cost if as many culprits remained as were found (that cap keeps the budget)."""
        cost = ceil_log2(len(rest)) + 1
        recent = consumed[-DENSE_ROUNDS:]
        return 1 < len(rest) <= len(found) * cost and len(recent) == DENSE_ROUNDS \
            and sum(recent) <= DENSE_ROUNDS * cost and len(found) <= DENSE_MAX_FACTOR * ceil_log2(len(self.items))

    def _drop_one(self, base: frozenset, suspects: list[int], phase: str = "drop") -> Search:
        """``base | suspects`` passes: drop each suspect that is not needed, least likely first.

        ``len(suspects)`` checks; cheaper than a binary search per culprit when most suspects are
        culprits, which is what few flagged nodes usually are.
        """
        current = list(suspects)
        for k, x in enumerate(reversed(suspects)):
            self.progress.remaining = len(suspects) - k
            rest = [y for y in current if y != x]
            upcoming = list(reversed(suspects))[k + 1:k + 3]
            spec = [self.cand(base | {y for y in current if y != z}, phase) for z in upcoming]
            label = f"without {self.label_of(x)}, {self.describe(base | set(rest))}"
            if (yield from self.test(base | set(rest), phase, label, spec)) == Verdict.GOOD:
                current = rest
        return current

    def _minimize(self, keep: list[int]) -> Search:
        """Drop what can be dropped; returns ``(keep, proof)``. ``keep`` is known to pass."""
        current = list(keep)
        proof: list[dict[str, str]] = []
        while True:  # a pass that removes nothing ends it, so at most len(keep) + 1 passes
            proof, removed = [], False
            for x in list(current):
                rest = frozenset(y for y in current if y != x)
                inferred = rest not in self.known and not self.verify_minimal and any(rest <= b for b in self.bad)
                self.progress.remaining = len(current)
                if inferred:
                    verdict, how = Verdict.BAD, "inferred"
                else:
                    how = "known" if rest in self.known else "checked"
                    label = f"without {self.label_of(x)}, {self.describe(rest)}"
                    verdict = yield from self.test(rest, "minimize", label)
                proof.append({"node": self.label_of(x), "verdict": verdict.value, "how": how})
                if verdict == Verdict.GOOD:
                    current = [y for y in current if y != x]
                    removed = True
                    self.progress.size = len(current)
            if not removed:
                break
        return current, proof

    def _polygraphy(self) -> Search:
        order = self.items if self.direction == "forward" else self.items[::-1]
        n = len(order)
        side = "first" if self.direction == "forward" else "last"

        def run(k: int) -> Candidate:
            return self.cand(order[:k], self.mode, f"keep the {side} {k} of {n}")

        if self.mode == "bisect":
            _, hi = yield from self.track(bisect(0, n, run, self.ask, self.progress, bad_side="low"))
            return order[:hi]
        for k in range(1, n):
            self.progress.remaining = n - k
            if (yield from self.check(run(k))) == Verdict.GOOD:
                return order[:k]
        return list(order)

    def _result(self, keep: list[int], proof) -> dict:
        keep = self.in_order(keep)
        return {
            "keep": keep,
            "keep_names": [self.label_of(x) for x in keep],
            "mode": self.mode,
            "direction": self.direction,
            "lowerable": len(self.items),
            "minimal_proof": proof,
            "one_minimal": None if proof is None else all(p["verdict"] == "bad" for p in proof),
            "removals_inferred": 0 if proof is None else sum(p["how"] == "inferred" for p in proof),
            "checks_per_phase": dict(self.progress.phases),
        }
