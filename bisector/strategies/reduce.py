"""reduce: the smallest subgraph that still fails, in about log2 N checks, 1-minimal.

Items are node positions in topological order; a candidate is any set of them. Tensors a
candidate reads but does not write are fed with values (recorded from the full model by default),
so *any* node set can be checked, not just cones: that is what lets bisector be both fast and
small. The phases, in order (``mode="auto"``):

1. **suffix**: bisect over topological prefixes ``{0..i}`` for the first ``p`` whose prefix fails.
   Adding node ``p`` makes it fail, so the failure is in ``p``'s outputs and only ``p``'s
   ancestors matter from here on.
2. **prefix**: try ``{p}`` alone first (a single culprit fed with real values fails on its own);
   otherwise bisect over suffixes of ``p``'s ancestor cone for the latest start that still fails.
3. **removal**: ddmin over what is left until no single node can be removed (1-minimal).
4. **proof** (``verify_minimal``): check the result minus each node, one logged check each.

A single culprit costs 1 (full model) + ceil(log2 N) + 1 checks.

``mode="bisect"`` and ``mode="linear"`` reproduce ``polygraphy debug reduce``: the *outputs* phase
makes one node's outputs the graph outputs (its ancestor cone stays); the *inputs* phase makes one
node's inputs the graph inputs (its descendants within the cone stay). ``bisect`` binary-searches
the index assuming monotone failures; ``linear`` tries every index and keeps the smallest failure.

The result is always a *verified* failing candidate: never a node set that was not checked bad.
"""

from __future__ import annotations

from typing import Any

from bisector.checks.base import Verdict
from bisector.strategies.base import MODES, Candidate, Search, Strategy, bisect, ddmin, smaller_first

SPAN_GAPS_SHOWN = 3  # nodes named in a label for what a candidate leaves out between its ends


class ReduceStrategy(Strategy):
    """Search over node sets of a DAG given as ``preds[i]`` = direct predecessors of node ``i``.

    ``reduce_outputs``/``reduce_inputs`` mirror Polygraphy's ``--no-reduce-outputs`` and
    ``--no-reduce-inputs``. ``names`` label candidates for people (positions otherwise).
    """

    name = "reduce"

    def __init__(self, n: int, preds: list[frozenset[int]], mode: str = "auto", reduce_inputs: bool = True,
                 reduce_outputs: bool = True, verify_minimal: bool = False, names: list[str] | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if n < 1:
            raise ValueError("nothing to reduce: the model has no nodes")
        self.n = n
        self.preds = preds
        self.mode = mode
        self.reduce_inputs = reduce_inputs
        self.reduce_outputs = reduce_outputs
        self.verify_minimal = verify_minimal
        self.names = names or [str(i) for i in range(n)]
        self._cone_sizes: list[int] | None = None  # for polygraphy_outputs_candidate, computed once
        self.good: list[frozenset] = []
        self.bad: list[frozenset] = []
        self.progress.size = n

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "mode": self.mode, "reduce_inputs": self.reduce_inputs,
                "reduce_outputs": self.reduce_outputs, "verify_minimal": self.verify_minimal}

    # -- candidates -------------------------------------------------------------------------
    def cand(self, items, phase: str, label: str) -> Candidate:
        return Candidate(frozenset(items), label=label, phase=phase, kind="nodes")

    def endpoints(self) -> tuple[Candidate, Candidate | None]:
        return self.cand(range(self.n), "endpoints", f"full model ({self.n} node{'s' if self.n != 1 else ''})"), None

    def cone(self, p: int) -> list[int]:
        """``p`` and all its ancestors, in topological order."""
        seen, stack = {p}, [p]
        while stack:
            for q in self.preds[stack.pop()]:
                if q not in seen:
                    seen.add(q)
                    stack.append(q)
        return sorted(seen)

    def polygraphy_outputs_candidate(self, num_nodes: int) -> Candidate | None:
        """The candidate `polygraphy debug reduce` judged when its replay says an outputs step had
        ``num_nodes`` nodes: Polygraphy marks one node's outputs, so its model is that node's cone.
        None unless exactly one node has a cone of that size (the replay names no node)."""
        if self._cone_sizes is None:
            bits: list[int] = []
            for i in range(self.n):
                b = 1 << i
                for q in self.preds[i]:
                    b |= bits[q]
                bits.append(b)
            self._cone_sizes = [bin(b).count("1") for b in bits]
        matches = [i for i, size in enumerate(self._cone_sizes) if size == num_nodes]
        if len(matches) != 1:
            return None
        items = self.cone(matches[0])
        return self.cand(items, "outputs", f"outputs of {self.names[matches[0]]}, {self.span(items)}")

    def descendants_within(self, start: int, allowed: set[int]) -> list[int]:
        """``start`` and the nodes of ``allowed`` that depend on it, in topological order."""
        seen = {start}
        for i in sorted(allowed):
            if i > start and self.preds[i] & seen:
                seen.add(i)
        return sorted(seen)

    def span(self, items) -> str:
        items = sorted(items)
        if len(items) == 1:
            return f"1 node: {self.names[items[0]]}"
        text = f"{len(items)} nodes: {self.names[items[0]]} .. {self.names[items[-1]]}"
        present = set(items)
        gaps = [i for i in range(items[0], items[-1] + 1) if i not in present]
        if gaps:  # tell apart candidates with the same ends (ddmin removes chunks from the middle)
            shown = ", ".join(self.names[i] for i in gaps[:SPAN_GAPS_SHOWN])
            text += f" without {shown}" + (f" +{len(gaps) - SPAN_GAPS_SHOWN}" if len(gaps) > SPAN_GAPS_SHOWN else "")
        return text

    def on_verdict(self, candidate: Candidate, verdict: Verdict) -> None:
        if verdict == Verdict.BAD:
            self.bad.append(candidate.items)
            self.progress.size = min(len(b) for b in self.bad)
        elif verdict == Verdict.GOOD:
            self.good.append(candidate.items)

    # -- the search -------------------------------------------------------------------------
    def search(self) -> Search:
        self.bad.append(frozenset(range(self.n)))  # the engine verified the full model first
        if self.mode == "auto":
            result = yield from self._auto()
        else:
            result = yield from self._polygraphy()
        proof = (yield from self._verify(result)) if self.verify_minimal else None
        if not self.good:
            yield from self._control(result)
        return self._result(result, proof)

    def _control(self, result: list[int]) -> Search:
        """No candidate has passed: either every one held the culprit (it is the first node), or the
        check fails whatever it gets (it cannot load the candidate, names the wrong file, times out).
        One check of everything but the answer tells them apart: it must pass for the answer to mean
        anything. The result's ``conclusive`` says whether some candidate passed."""
        rest = [i for i in range(self.n) if i not in set(result)]
        if rest:
            yield from self.check(self.cand(rest, "control", f"without the answer, {self.span(rest)}"))

    def _auto(self) -> Search:
        n = self.n
        p = n - 1
        if self.reduce_outputs and n > 1:
            def prefix(i: int) -> Candidate:
                return self.cand(range(i + 1), "suffix", f"up to {self.names[i]}, {self.span(range(i + 1))}")

            _, p = yield from self.track(bisect(-1, n - 1, prefix, self.ask, self.progress, bad_side="high"))
            if frozenset(range(p + 1)) not in self.bad:  # skips left it untested
                p = n - 1
        if not self.reduce_inputs:
            return list(range(p + 1))
        region = self.cone(p) if self.reduce_outputs else list(range(n))
        if len(region) > 1 and self.reduce_outputs:
            alone = self.cand([p], "prefix", f"alone, {self.span([p])}")
            if (yield from self.check(alone)) == Verdict.BAD:
                region = [p]
        if len(region) > 1:
            # Suffixes region[k:]; region[0:] fails (it holds the whole failing prefix cone).
            top = len(region) - 1 if self.reduce_outputs else len(region)

            def suffix(k: int) -> Candidate:
                return self.cand(region[k:], "prefix", f"from {self.names[region[k]]}, {self.span(region[k:])}")

            lo, _ = yield from self.track(bisect(0, top, suffix, self.ask, self.progress, bad_side="low"))
            region = region[lo:]
            if frozenset(region) not in self.bad:
                if (yield from self.check(suffix(lo))) != Verdict.BAD:
                    region = sorted(min(self.bad, key=smaller_first))
        elif frozenset(region) not in self.bad:  # p has no ancestors: its cone was never checked
            alone = self.cand(region, "prefix", f"alone, {self.span(region)}")
            if (yield from self.check(alone)) != Verdict.BAD:
                region = sorted(min(self.bad, key=smaller_first))
        if len(region) > 1:
            def removal(subset: list) -> Candidate:
                return self.cand(subset, "removal", f"remove to {self.span(subset)}")

            region = yield from self.track(ddmin(region, removal, self.ask, self.progress))
        return sorted(region)

    def _polygraphy(self) -> Search:
        n = self.n
        current = list(range(n))
        if self.reduce_outputs:
            def outputs_at(i: int) -> Candidate:
                items = self.cone(i)
                return self.cand(items, "outputs", f"outputs of {self.names[i]}, {self.span(items)}")

            current = yield from self._index_search(outputs_at, n - 1, first_bad_high=True)
        if self.reduce_inputs and len(current) > 1:
            allowed, order = set(current), sorted(current)

            def inputs_at(k: int) -> Candidate:
                items = self.descendants_within(order[k], allowed)
                return self.cand(items, "inputs", f"inputs of {self.names[order[k]]}, {self.span(items)}")

            current = yield from self._index_search(inputs_at, len(order) - 1, first_bad_high=False)
        return sorted(current)

    def _index_search(self, make, last: int, first_bad_high: bool) -> Search:
        """Polygraphy's search over indices 0..last; returns the chosen failing node set.

        bisect: the outputs phase looks for the earliest failing index, the inputs phase for the
        latest; both assume failures are monotone and trust the untested end, as Polygraphy does,
        except that an untested answer falls back to the smallest verified failure.
        linear: every index is checked; the smallest failing candidate wins.
        """
        if self.mode == "bisect":
            if first_bad_high:
                _, idx = yield from self.track(bisect(-1, last, make, self.ask, self.progress, bad_side="high"))
            else:
                idx, _ = yield from self.track(bisect(0, last + 1, make, self.ask, self.progress, bad_side="low"))
            chosen = make(idx).items
        else:
            for idx in range(last + 1):
                self.progress.remaining = last - idx + 1
                yield from self.check(make(idx))
            chosen = None
        if chosen is None or chosen not in self.bad:
            chosen = min(self.bad, key=smaller_first)
        return sorted(chosen)

    def _verify(self, result: list[int]) -> Search:
        proof = []
        for i, x in enumerate(result):
            rest = [y for y in result if y != x]
            self.progress.remaining = len(result) - i
            if not rest:
                proof.append({"node": self.names[x], "verdict": "good", "note": "the empty graph cannot fail"})
                continue
            cand = self.cand(rest, "proof", f"without {self.names[x]}, {self.span(rest)}")
            verdict = yield from self.check(cand)
            proof.append({"node": self.names[x], "verdict": verdict.value})
        return proof

    def _result(self, result: list[int], proof) -> dict:
        min_good = None
        if self.good:
            size = len(result)
            min_good = sorted(min(self.good, key=lambda g: (abs(len(g) - size), -len(g), sorted(g))))
        return {
            "nodes": result,
            "node_names": [self.names[i] for i in result],
            "min_good": min_good,
            "minimal_proof": proof,
            "one_minimal": None if proof is None else all(p["verdict"] == "good" for p in proof),
            "checks_per_phase": dict(self.progress.phases),
            "original_nodes": self.n,
            "conclusive": bool(self.good),
        }
