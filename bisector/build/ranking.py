"""Which (layer, tactic) pairs go with failing builds. Pure: plain dicts in, dataclasses out.

Each build is ``({layer: tactic}, failed)``. For every pair seen, four counts: failing builds with
the pair (``bad_with``), passing builds with it (``good_with``), and the same without it. Then:

- **p_value**: the one-sided Fisher exact test that the pair goes with failures: the chance, with
  the margins fixed, of at least ``bad_with`` failing builds among those with the pair. Exact, from
  the hypergeometric distribution with log-factorials (no scipy).
- **odds_ratio**: the sample odds ratio ``(bad_with * good_without) / (good_with * bad_without)``;
  ``inf`` when only the denominator is 0, ``nan`` when both are.
- **ochiai**: ``bad_with / sqrt(failing builds * builds with the pair)``, the fault-localization
  score: 1 when the pair is in every failing build and in no passing one.

Why a test and not Polygraphy's set difference (:func:`set_difference`, kept for familiarity): a
culprit that fails only some of the times it is chosen ("one-way flaky") also shows up in passing
builds, and one lucky passing build erases it from the difference. The test keeps counting.

Example::

    builds = [({"conv1": "0xa", "fc": "0x1"}, True), ({"conv1": "0xb", "fc": "0x1"}, False), ...]
    suspects = rank(builds)          # best first
    print(verdict(suspects, builds))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

SURE_P = 0.01  # the top suspect is "sure" below this p-value (times the number of pairs) ...
SEPARATION = 10.0  # ... and when the next suspect's p-value is at least this many times larger
MAX_SCALE = 50  # the estimate of builds still needed looks this many times the builds so far ahead

Build = tuple[dict[str, str], bool]


@dataclass(frozen=True)
class Suspect:
    """One (layer, tactic) pair with its test and its four counts."""

    layer: str
    tactic: str
    p_value: float
    odds_ratio: float
    ochiai: float
    bad_with: int
    good_with: int
    bad_without: int
    good_without: int

    def to_json(self) -> dict:
        """A JSON-able dict; an infinite or undefined odds ratio is the text ``"inf"`` / ``"nan"``."""
        doc = asdict(self)
        if not math.isfinite(self.odds_ratio):
            doc["odds_ratio"] = str(self.odds_ratio)
        return doc


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(bad_with: int, good_with: int, bad_without: int, good_without: int) -> float:
    """One-sided Fisher exact p-value: P(X >= bad_with) for X hypergeometric with the table's
    margins (N builds, of which ``bad`` failed, ``with`` had the pair). Matches
    ``scipy.stats.fisher_exact([[bad_with, good_with], [bad_without, good_without]], "greater")``."""
    with_ = bad_with + good_with
    bad = bad_with + bad_without
    n = with_ + bad_without + good_without
    lo, hi = max(0, with_ - (n - bad)), min(with_, bad)
    if bad_with <= lo:
        return 1.0
    log_total = _log_comb(n, with_)
    terms = [math.exp(_log_comb(bad, x) + _log_comb(n - bad, with_ - x) - log_total)
             for x in range(bad_with, hi + 1)]
    return min(1.0, math.fsum(terms))


def odds_ratio(bad_with: int, good_with: int, bad_without: int, good_without: int) -> float:
    num, den = bad_with * good_without, good_with * bad_without
    if den == 0:
        return math.nan if num == 0 else math.inf
    return num / den


def ochiai(bad_with: int, good_with: int, bad_without: int) -> float:
    den = math.sqrt((bad_with + bad_without) * (bad_with + good_with))
    return bad_with / den if den else 0.0


def suspect(layer: str, tactic: str, bad_with: int, good_with: int, bad_without: int, good_without: int) -> Suspect:
    """A :class:`Suspect` from its four counts."""
    counts = (bad_with, good_with, bad_without, good_without)
    return Suspect(layer, tactic, fisher_greater(*counts), odds_ratio(*counts),
                   ochiai(bad_with, good_with, bad_without), *counts)


def sort_key(s: Suspect) -> tuple:
    """Best suspect first: the smallest p-value (the strongest evidence that the pair goes with
    failures); among equal p-values the higher Ochiai score (closer to "in every failing build and
    no passing one"); then by name, so that the order is deterministic."""
    return (s.p_value, -s.ochiai, s.layer, s.tactic)


def rank(builds: Sequence[Build]) -> list[Suspect]:
    """Every (layer, tactic) pair seen in ``builds``, best suspect first (:func:`sort_key`).
    A build without the layer counts as a build without the pair."""
    bad_total = sum(1 for _, failed in builds if failed)
    good_total = len(builds) - bad_total
    bad_with: dict[tuple[str, str], int] = {}
    good_with: dict[tuple[str, str], int] = {}
    for tactics, failed in builds:
        for pair in tactics.items():
            counts = bad_with if failed else good_with
            counts[pair] = counts.get(pair, 0) + 1
    out = []
    for pair in set(bad_with) | set(good_with):
        bw, gw = bad_with.get(pair, 0), good_with.get(pair, 0)
        out.append(suspect(pair[0], pair[1], bw, gw, bad_total - bw, good_total - gw))
    return sorted(out, key=sort_key)


def set_difference(builds: Iterable[Build]) -> list[tuple[str, str]]:
    """Polygraphy's ``inspect diff-tactics`` rule: the pairs seen in some failing build and in no
    passing one, in the order they first appear among the failing builds."""
    builds = list(builds)
    good = {pair for tactics, failed in builds if not failed for pair in tactics.items()}
    seen: dict[tuple[str, str], None] = {}
    for tactics, failed in builds:
        if failed:
            seen.update((pair, None) for pair in tactics.items() if pair not in good)
    return list(seen)


def is_sure(suspects: Sequence[Suspect], pairs: int | None = None, alpha: float = SURE_P, looks: int = 1) -> bool:
    """The top suspect's p-value, times the number of pairs tested (``pairs``, by default every
    suspect: a Bonferroni correction, since one of many innocent pairs can look guilty by chance),
    times the number of times the ranking was looked at (``looks``: a hunt that ranks after every
    build and stops at the first sure look gets that many chances of a false alarm, so Bonferroni
    over the looks too), is below ``alpha`` (:data:`SURE_P`), and the next suspect's p-value is at
    least :data:`SEPARATION` times larger."""
    if not suspects or suspects[0].p_value * (pairs or len(suspects)) * max(1, looks) >= alpha:
        return False
    return len(suspects) < 2 or suspects[1].p_value >= SEPARATION * suspects[0].p_value


def confident(suspects: Sequence[Suspect], n_builds: int, confidence: float) -> bool:
    """``--confidence``'s stop rule, a valid sequential test: looked at after each of ``n_builds``
    builds, the top suspect is sure at ``alpha = 1 - confidence`` corrected for the pairs and for
    every look so far (:func:`is_sure` with ``looks=n_builds``). A hunt whose failures follow no
    tactic stops falsely with a chance below ``1 - confidence``."""
    return is_sure(suspects, alpha=1 - confidence, looks=n_builds)


def sure(suspects: Sequence[Suspect], builds: Sequence[Build], confidence: float | None = None) -> bool:
    """The rule :func:`verdict` says "Sure" by: :func:`confident` with ``confidence``, else
    :func:`is_sure` at :data:`SURE_P`; never when no build failed, or every build did."""
    bad = sum(1 for _, failed in builds if failed)
    if not suspects or bad == 0 or bad == len(builds):
        return False
    return confident(suspects, len(builds), confidence) if confidence is not None else is_sure(suspects)


def verdict(suspects: Sequence[Suspect], builds: Sequence[Build], confidence: float | None = None) -> str:
    """How sure the top suspect is, in plain words, and about how many more builds would make it
    sure at the rates seen so far. With ``confidence`` (a hunt that stopped by ``--confidence``
    looks after each build), "sure" is :func:`confident`'s rule, the one that stopped it."""
    alpha, looks = (SURE_P, 1) if confidence is None else (1 - confidence, len(builds))
    bad = sum(1 for _, failed in builds if failed)
    if not builds or bad == 0:
        return f"No failing build among {len(builds)}: nothing to rank yet. Build more (--until bad)."
    if bad == len(builds):
        return (f"All {bad} builds failed: the failure follows no tactic that varied between them "
                f"(a tactic chosen every time, or not a tactic at all).")
    top = suspects[0]
    name = f"{top.layer} tactic {top.tactic}"
    seen = (f"in {top.bad_with} of {bad} failing builds and {top.good_with} of {len(builds) - bad} passing "
            f"ones, p = {top.p_value:.2g}")
    if len(suspects) > 1 and _same_counts(top, suspects[1]):
        nxt = suspects[1]
        return (f"Not sure: {name} and {nxt.layer} tactic {nxt.tactic} were chosen in the same builds "
                f"({seen}); more builds of the same kind may not tell them apart: force one (bisector confirm).")
    other = (f" It does not explain {top.bad_without} of the {bad} failing builds (they did not choose it): "
             f"another cause fails them too (another flaky layer, or not a tactic)." if top.bad_without else "")
    if is_sure(suspects, alpha=alpha, looks=looks):
        ahead = (f", {suspects[1].p_value / top.p_value:.0f} times less likely by chance than the next suspect"
                 if len(suspects) > 1 and top.p_value > 0 else "")
        return (f"Sure: {name} goes with the failures ({seen}{ahead}). Confirm it by forcing it (bisector confirm)."
                + other)
    more = builds_needed(suspects, len(builds), alpha=alpha, sequential=confidence is not None)
    if more is None:
        return (f"Not sure: the top suspect is {name} ({seen}); at the rates seen so far even "
                f"{MAX_SCALE} times as many builds would not single it out." + other)
    more_bad = round(more * bad / len(builds))
    return (f"Not sure yet: the top suspect is {name} ({seen}). At the rates seen so far about {more} more "
            f"builds (about {more_bad} failing) would make it sure (p < {alpha:g} after "
            f"correcting for the {len(suspects)} pairs{' and each look' if confidence is not None else ''}, "
            f"{SEPARATION:g} times ahead of the next)." + other)


def _same_counts(a: Suspect, b: Suspect) -> bool:
    return (a.bad_with, a.good_with, a.bad_without, a.good_without) == \
        (b.bad_with, b.good_with, b.bad_without, b.good_without)


def builds_needed(suspects: Sequence[Suspect], n_builds: int, alpha: float = SURE_P,
                  sequential: bool = False) -> int | None:
    """About how many more builds would make :func:`is_sure` hold (at ``alpha``; ``sequential``:
    counting each build as a look, as :func:`confident` does), if every count grew in proportion
    (the top two suspects' tables scaled up, rounded); None beyond :data:`MAX_SCALE` times as many."""
    if not suspects or n_builds == 0:
        return None
    top = suspects[:2]
    n = n_builds
    while n < n_builds * MAX_SCALE:
        n += max(1, n // 20)
        scaled = sorted((_scaled(s, n / n_builds) for s in top), key=sort_key)
        if is_sure(scaled, len(suspects), alpha, n if sequential else 1) and (scaled[0].layer, scaled[0].tactic) == (top[0].layer, top[0].tactic):
            return n - n_builds
    return None


def _scaled(s: Suspect, factor: float) -> Suspect:
    return suspect(s.layer, s.tactic, *(round(c * factor) for c in
                                        (s.bad_with, s.good_with, s.bad_without, s.good_without)))
