"""Compare a target run's outputs with a reference run's, with Polygraphy's semantics and defaults.

For each output, with target ``a`` and reference ``b`` (both upcast to float64)::

    absdiff = |a - b|
    reldiff = absdiff / |b|, where zeros in b are replaced by 2.22e-16

- ``elemwise`` (default): an element fails if (absdiff > atol or NaN) and (reldiff > rtol or NaN);
  the output fails if any element fails.
- ``max`` / ``mean`` / ``median`` / ``quantile``: the statistic of absdiff and of reldiff is taken;
  the output fails only if *both* exceed their tolerance. As in Polygraphy, a NaN difference makes
  its side fail (the reported statistics leave NaN out and count it separately).

Defaults (``config.CompareConfig``): rtol = atol = 1e-5, stat ``elemwise``, quantile
0.99, no ``validate``; tolerances and stat can be set per output (``--atol 1e-5 out0:1e-4``). A
shape mismatch fails; an output missing on either side fails; with ``validate``, a NaN or Inf in
the target fails. Unlike Polygraphy, names must match exactly and values are compared in float64
(Polygraphy keeps float32). Results (``results``) go to JSON with ``to_json()``
(non-finite floats as ``"nan"``/``"inf"``/``"-inf"``) and back with ``from_json``.

>>> c = compare_outputs({"y": np.array([1.0, 2.5])}, {"y": np.array([1.0, 2.0])})
>>> c.passed, c.outputs[0].summary()
(False, 'y: max abs 0.5 at [1] (rel 0.25) > atol 1e-05/rtol 1e-05; 1/2 elements mismatched')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from bisector.compare.config import CompareConfig
from bisector.compare.results import Comparison, Element, OutputComparison, SamplesComparison, short_number

ZERO_EPSILON = 2.220446049250313e-16  # what Polygraphy adds to zeros in the reference
WORST_COUNT = 5  # elements kept per output, most out-of-tolerance first
HIST_MAX_BINS = 12  # decades of absdiff kept; smaller errors share the first bin
STAT_NAMES = ("max", "mean", "median", "quantile")


# ---------------------------------------------------------------- comparing
def compare_outputs(target: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                    config: CompareConfig | None = None, sample: int | None = None) -> Comparison:
    """Compare every output of ``target`` with the same-named output of ``reference``.

    Outputs are reported in target order, then reference-only ones; a missing one fails.
    """
    config = config or CompareConfig()
    names = list(target) + [n for n in reference if n not in target]
    outputs = []
    for name in names:
        atol, rtol, stat = config.for_output(name)
        base = dict(name=name, stat=stat, atol=atol, rtol=rtol, quantile=config.error_quantile)
        if name not in target or name not in reference:
            side, other, arr = (("target", "reference", reference) if name not in target
                                else ("reference", "target", target))
            outputs.append(OutputComparison(passed=False, missing=side, reason=f"missing in the {side}", **base, **{
                f"{other}_shape": list(np.shape(arr[name])), f"{other}_dtype": str(np.asarray(arr[name]).dtype)}))
        else:
            outputs.append(_compare_arrays(np.asarray(target[name]), np.asarray(reference[name]), config, base))
    return Comparison(outputs, all(o.passed for o in outputs), sample)


def compare_samples(targets: Sequence[Mapping[str, np.ndarray]], references: Sequence[Mapping[str, np.ndarray]],
                    config: CompareConfig | None = None) -> SamplesComparison:
    """Compare sample ``i`` of ``targets`` with sample ``i`` of ``references``; any failure fails."""
    samples = [compare_outputs(t, r, config, sample=i) for i, (t, r) in enumerate(zip(targets, references))]
    reason = None
    if len(targets) != len(references):
        reason = f"target has {len(targets)} sample(s), reference has {len(references)}"
    return SamplesComparison(samples, reason is None and all(c.passed for c in samples), reason)


def _nonfinite(arr: np.ndarray) -> tuple[int, int]:
    inexact = arr.dtype.kind in "fc"
    return (int(np.isnan(arr).sum()), int(np.isinf(arr).sum())) if inexact else (0, 0)


def _failed(value: float, tol: float) -> bool:
    return math.isnan(value) or value > tol


def _compare_arrays(t: np.ndarray, r: np.ndarray, config: CompareConfig, base: dict) -> OutputComparison:
    out = OutputComparison(passed=False, target_shape=list(t.shape), reference_shape=list(r.shape),
                           target_dtype=str(t.dtype), reference_dtype=str(r.dtype), **base)
    out.target_nan, out.target_inf = _nonfinite(t)
    out.reference_nan, out.reference_inf = _nonfinite(r)
    if t.shape != r.shape:
        out.shape_mismatch = True
        out.reason = f"shape {tuple(t.shape)} differs from the reference's {tuple(r.shape)}"
        return out
    atol, rtol, stat, q = out.atol, out.rtol, out.stat, out.quantile
    numeric = all(a.dtype.kind in "biufc" for a in (t, r))  # else (strings): equal or not
    with np.errstate(all="ignore"):
        tf, rf = (a.astype(np.result_type(a.dtype, np.float64)) if numeric else a for a in (t, r))
        absdiff = np.abs(tf - rf) if numeric else (t != r).astype(np.float64)
        if config.infinities_compare_equal and numeric:
            absdiff[np.isinf(tf) & (tf == rf)] = 0.0
        denom = np.where(rf == 0, ZERO_EPSILON, np.abs(rf)) if numeric else np.ones_like(absdiff)
        reldiff = absdiff / denom
        out.size = int(absdiff.size)
        fail_abs, fail_rel = (absdiff > atol) | np.isnan(absdiff), (reldiff > rtol) | np.isnan(reldiff)
        mismatch = fail_abs & fail_rel
        out.mismatched = int(mismatch.sum())
        for diff, stats, nan_field in ((absdiff, out.abs_stats, "abs_nan"), (reldiff, out.rel_stats, "rel_nan")):
            nan = np.isnan(diff)
            setattr(out, nan_field, int(nan.sum()))
            valid = diff[~nan] if getattr(out, nan_field) else diff
            values = [valid.max(), valid.mean(), *np.quantile(valid, [0.5, q])] if valid.size else [math.nan] * 4
            for key, value in zip(STAT_NAMES, values):  # NaN from non-NaN data is inf - inf: really inf
                stats[key] = float(np.nan_to_num(value, nan=np.inf, posinf=np.inf)) if out.size else 0.0
        if out.size > out.abs_nan:
            flat = int(np.argmax(np.where(np.isnan(absdiff), -1.0, absdiff)))
            out.max_abs_index = [int(i) for i in np.unravel_index(flat, absdiff.shape)]
            out.max_abs_rel = float(reldiff.flat[flat])
        a_stat, r_stat = out.abs_stats[out.stat_key], out.rel_stats[out.stat_key]
        out.min_atol = math.inf if out.abs_nan else a_stat
        out.min_rtol = math.inf if out.rel_nan else r_stat
        a_fails, r_fails = out.abs_nan or _failed(a_stat, atol), out.rel_nan or _failed(r_stat, rtol)
        if stat == "elemwise":
            out.passed = out.mismatched == 0
            out.min_atol_given_rtol = float(np.where(np.isnan(absdiff), np.inf, absdiff)[fail_rel].max(initial=0.0))
            out.min_rtol_given_atol = float(np.where(np.isnan(reldiff), np.inf, reldiff)[fail_abs].max(initial=0.0))
        else:
            out.passed = not (a_fails and r_fails)
            out.min_atol_given_rtol = out.min_atol if r_fails else 0.0
            out.min_rtol_given_atol = out.min_rtol if a_fails else 0.0
        out.worst = _worst(t, r, absdiff, reldiff, mismatch, atol, rtol)
        out.histogram = _histogram(absdiff)
    reasons = [] if out.passed else [_failure_text(out)]
    if config.validate and (out.target_nan or out.target_inf):
        out.passed = False
        reasons.append(f"target has {out.target_nan} NaN and {out.target_inf} Inf value(s) (--validate)")
    out.reason = "; ".join(reasons) or None
    return out


def _failure_text(out: OutputComparison) -> str:
    over = f"{out.mismatched}/{out.size} elements mismatched"
    if out.stat != "elemwise":
        sides = [f"{nan} NaN {kind} difference(s)" if nan
                 else f"{out.stat} {kind} {short_number(stats[out.stat])} > {name} {tol:g}"
                 for kind, stats, nan, name, tol in (("abs", out.abs_stats, out.abs_nan, "atol", out.atol),
                                                     ("rel", out.rel_stats, out.rel_nan, "rtol", out.rtol))]
        return f"{sides[0]} and {sides[1]}; {over}"
    if out.abs_nan:
        return f"NaN difference at {out.worst[0].index} ({out.abs_nan} in all); {over}"
    return (f"max abs {short_number(out.abs_stats['max'])} at {out.max_abs_index} "
            f"(rel {short_number(out.max_abs_rel)}) > atol {out.atol:g}/rtol {out.rtol:g}; {over}")


def _worst(t, r, absdiff, reldiff, mismatch, atol: float, rtol: float) -> list[Element]:
    """The ``WORST_COUNT`` elements furthest out of tolerance: ranked by min(abs/atol, rel/rtol),
    the factor by which an element exceeds the elemwise rule (> 1 fails), NaN first, ties broken
    by abs error. A few passes of ``max`` rather than a sort: outputs can be large."""
    a, rel = absdiff.ravel(), reldiff.ravel()
    over_abs = a / atol if atol else np.where(a == 0, 0.0, np.inf)
    over_rel = rel / rtol if rtol else np.where(rel == 0, 0.0, np.inf)
    key = np.minimum(over_abs, over_rel)
    key[np.isnan(key)] = np.inf
    picked: list[int] = []
    while len(picked) < WORST_COUNT and key.size and (best := key.max()) > 0:
        ties = np.flatnonzero(key == best)
        i = int(ties[np.argmax(np.where(np.isnan(a[ties]), np.inf, a[ties]))])
        picked.append(i)
        key[i] = -1.0
    return [Element(index=[int(j) for j in np.unravel_index(i, absdiff.shape)],
                    target=t.ravel()[i].item(), reference=r.ravel()[i].item(),
                    abs=float(a[i]), rel=float(rel[i]), mismatched=bool(mismatch.ravel()[i]))
            for i in picked]


def _histogram(absdiff: np.ndarray) -> list[dict[str, float]]:
    """absdiff counted per decade [10^k, 10^(k+1)); at most HIST_MAX_BINS decades (the first one
    then starts at 0), zeros and infinities in bins of their own, NaN left out (see ``abs_nan``)."""
    a = absdiff.ravel()
    bins: list[dict[str, float]] = []
    zeros, infs = int((a == 0).sum()), int(np.isinf(a).sum())
    if zeros:
        bins.append({"lo": 0.0, "hi": 0.0, "count": zeros})
    nz = a[np.isfinite(a) & (a > 0)]
    if nz.size:
        hi_exp = math.floor(math.log10(nz.max())) + 1
        lo_exp = max(math.floor(math.log10(nz.min())), hi_exp - HIST_MAX_BINS)
        edges = 10.0 ** np.arange(lo_exp, hi_exp + 1)
        edges[0] = 0.0 if nz.min() < edges[0] else edges[0]  # the first bin holds all smaller errors
        idx = np.clip(np.searchsorted(edges, nz, side="right") - 1, 0, len(edges) - 2)
        counts = np.bincount(idx, minlength=len(edges) - 1)
        bins += [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(c)} for i, c in enumerate(counts)]
    if infs:
        bins.append({"lo": math.inf, "hi": math.inf, "count": infs})
    return bins
