"""Compare a target run's outputs with a reference run's, with Polygraphy's semantics and defaults.

For each output, with target ``a`` and reference ``b`` (both upcast to float64)::

    absdiff = |a - b|
    reldiff = absdiff / |b|, where zeros in b are replaced by 2.22e-16

- ``elemwise`` (default): an element fails if (absdiff > atol or NaN) and (reldiff > rtol or NaN);
  the output fails if any element fails.
- ``max`` / ``mean`` / ``median`` / ``quantile``: the statistic of absdiff and of reldiff is taken;
  the output fails only if *both* exceed their tolerance. As in Polygraphy, a NaN difference makes
  its side fail (the reported statistics leave NaN out and count it separately).

Defaults: rtol = atol = 1e-5, stat ``elemwise``, quantile 0.99, no ``validate``; tolerances and
stat can be set per output (``--atol 1e-5 out0:1e-4``). A shape mismatch fails; an output missing
on either side fails; with ``validate``, a NaN or Inf in the target fails. Unlike Polygraphy, names
must match exactly and values are compared in float64 (Polygraphy keeps float32). Results go to
JSON with ``to_json()`` (non-finite floats as ``"nan"``/``"inf"``/``"-inf"``) and back with ``from_json``.

>>> c = compare_outputs({"y": np.array([1.0, 2.5])}, {"y": np.array([1.0, 2.0])})
>>> c.passed, c.outputs[0].summary()
(False, 'y: max abs 0.5 at [1] (rel 0.25) > atol 1e-05/rtol 1e-05; 1/2 elements mismatched')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from bisector.errors import UserError

STATS = ("elemwise", "max", "mean", "median", "quantile")
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5
DEFAULT_STAT = "elemwise"
DEFAULT_QUANTILE = 0.99
ZERO_EPSILON = 2.220446049250313e-16  # what Polygraphy adds to zeros in the reference
WORST_COUNT = 5  # elements kept per output, most out-of-tolerance first
HIST_MAX_BINS = 12  # decades of absdiff kept; smaller errors share the first bin
STAT_NAMES = ("max", "mean", "median", "quantile")


# ---------------------------------------------------------------- configuration
def _parse_named(args: Sequence[str] | None, flag: str, convert) -> tuple[Any, dict[str, Any]]:
    """``["1e-3", "out0:1e-2"]`` -> ``(1e-3, {"out0": 1e-2})``; the last ``:`` splits off the name."""
    default, per_output = None, {}
    for arg in args or []:
        name, _, value = str(arg).rpartition(":")
        try:
            parsed = convert(value.strip())
        except ValueError:
            raise UserError(f"{flag} {arg!r}: {value.strip()!r} is not a number",
                            hint=f"use {flag} VALUE [NAME:VALUE ...]") from None
        if name:
            per_output[name] = parsed
        else:
            default = parsed
    return default, per_output


def parse_tolerances(args: Sequence[str] | None, default: float = DEFAULT_ATOL) -> tuple[float, dict[str, float]]:
    """Parse ``--atol``/``--rtol`` values: ``["1e-3", "out0:1e-2"]`` -> ``(1e-3, {"out0": 1e-2})``.

    A value without a name sets the default (``default`` if none does, 1e-5). UserError on a bad
    or negative value.
    """
    value, per_output = _parse_named(args, "--atol/--rtol", float)
    for tol in [value, *per_output.values()]:
        if tol is not None and not tol >= 0:
            raise UserError(f"tolerance {tol} must be >= 0")
    return (default if value is None else value), per_output


@dataclass(frozen=True)
class CompareConfig:
    """How outputs are compared. Defaults are Polygraphy's (``polygraphy run``).

    rtol, atol: default tolerances (1e-5 each); ``rtol_per_output``/``atol_per_output`` override
    them by output name. check_error_stat: one of ``STATS`` (default ``"elemwise"``), overridden per
    output by ``stat_per_output``. error_quantile: for ``"quantile"`` (0.99). validate: NaN or Inf
    in the target fails (False). infinities_compare_equal: equal infinities have absdiff 0 rather
    than NaN (False).
    """

    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    rtol_per_output: Mapping[str, float] = field(default_factory=dict)
    atol_per_output: Mapping[str, float] = field(default_factory=dict)
    check_error_stat: str = DEFAULT_STAT
    stat_per_output: Mapping[str, str] = field(default_factory=dict)
    error_quantile: float = DEFAULT_QUANTILE
    validate: bool = False
    infinities_compare_equal: bool = False

    def __post_init__(self):
        for stat in [self.check_error_stat, *self.stat_per_output.values()]:
            if stat not in STATS:
                raise UserError(f"unknown --check-error-stat {stat!r}; choose one of {', '.join(STATS)}")
        for tol in [self.rtol, self.atol, *self.rtol_per_output.values(), *self.atol_per_output.values()]:
            if not tol >= 0:
                raise UserError(f"tolerance {tol} must be >= 0")
        if not 0 <= self.error_quantile <= 1:
            raise UserError(f"--error-quantile {self.error_quantile} must be in [0, 1]")

    @classmethod
    def from_flags(cls, atol: Sequence[str] | None = None, rtol: Sequence[str] | None = None,
                   check_error_stat: Sequence[str] | str | None = None,
                   error_quantile: float | None = None, validate: bool = False,
                   infinities_compare_equal: bool = False) -> CompareConfig:
        """Build from Polygraphy-style flag values (``atol=["1e-5", "out0:1e-4"]``, ...)."""
        a, a_out = parse_tolerances(atol, DEFAULT_ATOL)
        r, r_out = parse_tolerances(rtol, DEFAULT_RTOL)
        stats = [check_error_stat] if isinstance(check_error_stat, str) else check_error_stat
        s, s_out = _parse_named(stats, "--check-error-stat", str)
        q = DEFAULT_QUANTILE if error_quantile is None else float(error_quantile)
        return cls(rtol=r, atol=a, rtol_per_output=r_out, atol_per_output=a_out,
                   check_error_stat=s or DEFAULT_STAT, stat_per_output=s_out, error_quantile=q,
                   validate=validate, infinities_compare_equal=infinities_compare_equal)

    def for_output(self, name: str) -> tuple[float, float, str]:
        """``(atol, rtol, stat)`` for one output."""
        return (self.atol_per_output.get(name, self.atol), self.rtol_per_output.get(name, self.rtol),
                self.stat_per_output.get(name, self.check_error_stat))

    def to_json(self) -> dict[str, Any]:
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v) for f in fields(self)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CompareConfig:
        return cls(**obj)


# ---------------------------------------------------------------- results
_TEXT_FIELDS = {"name", "reason", "stat", "missing", "target_dtype", "reference_dtype"}


def _enc(x: Any) -> Any:
    """Non-finite floats become ``"nan"``/``"inf"``/``"-inf"`` so the journal stays strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _enc(v) for k, v in x.items()}
    return [_enc(v) for v in x] if isinstance(x, (list, tuple)) else x


def _dec(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: v if k in _TEXT_FIELDS else _dec(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_dec(v) for v in x]
    return float(x) if x in ("nan", "inf", "-inf") else x


class _Json:
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (strict JSON: non-finite floats as strings)."""
        return _enc(asdict(self))


@dataclass
class Element:
    """One compared element: its multi-dim index, both values, and its errors."""

    index: list[int]
    target: float | int | bool
    reference: float | int | bool
    abs: float
    rel: float
    mismatched: bool


@dataclass
class OutputComparison(_Json):
    """The comparison of one output. Statistics are empty/None when it could not be compared.

    ``abs_stats``/``rel_stats``: ``{"max", "mean", "median", "quantile"}`` of absdiff/reldiff over
    the non-NaN differences (``abs_nan``/``rel_nan`` count the others; NaN if all are).
    ``mismatched``: elements failing the elemwise rule.
    ``min_atol``/``min_rtol``: the smallest atol (rtol) that passes under ``stat`` if it alone
    decided (Polygraphy's "minimum required tolerance"; inf if a NaN makes it impossible).
    ``min_atol_given_rtol``/``min_rtol_given_atol``: the same with the other tolerance as set.
    ``worst``: up to WORST_COUNT elements, furthest out of tolerance first. ``histogram``: absdiff
    per decade, ``[{"lo", "hi", "count"}]``; zeros as lo = hi = 0, infinities as lo = hi = inf,
    NaN counted in ``abs_nan`` only.
    """

    name: str
    passed: bool
    reason: str | None = None  # why it failed, one line; None when passed
    stat: str = DEFAULT_STAT
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    quantile: float = DEFAULT_QUANTILE
    missing: str | None = None  # "target" or "reference"
    target_shape: list[int] | None = None
    reference_shape: list[int] | None = None
    target_dtype: str | None = None
    reference_dtype: str | None = None
    shape_mismatch: bool = False
    size: int = 0
    mismatched: int = 0
    abs_stats: dict[str, float] = field(default_factory=dict)
    rel_stats: dict[str, float] = field(default_factory=dict)
    max_abs_index: list[int] | None = None  # NaN left out
    max_abs_rel: float | None = None  # reldiff at max_abs_index
    min_atol: float | None = None
    min_rtol: float | None = None
    min_atol_given_rtol: float | None = None
    min_rtol_given_atol: float | None = None
    abs_nan: int = 0
    rel_nan: int = 0
    target_nan: int = 0
    target_inf: int = 0
    reference_nan: int = 0
    reference_inf: int = 0
    worst: list[Element] = field(default_factory=list)
    histogram: list[dict[str, float]] = field(default_factory=list)

    @property
    def stat_key(self) -> str:
        """The statistic the verdict rests on (``max`` for elemwise)."""
        return "max" if self.stat == "elemwise" else self.stat

    def summary(self) -> str:
        """One line, e.g. ``out: max abs 32 at [0, 7] (rel 0.41) > atol 1e-05/rtol 1e-05; 12/40 ...``."""
        if self.reason:
            return f"{self.name}: {self.reason}"
        k = self.stat_key
        return (f"{self.name}: ok, {k} abs {_g(self.abs_stats.get(k))} rel {_g(self.rel_stats.get(k))}"
                f" within atol {self.atol:g}/rtol {self.rtol:g}")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> OutputComparison:
        obj = _dec(dict(obj))
        return cls(**{**obj, "worst": [Element(**e) for e in obj.get("worst", [])]})


@dataclass
class Comparison(_Json):
    """All outputs of one sample. ``passed`` iff every output passed."""

    outputs: list[OutputComparison]
    passed: bool
    sample: int | None = None

    @property
    def failed_outputs(self) -> list[str]:
        return [o.name for o in self.outputs if not o.passed]

    def output(self, name: str) -> OutputComparison:
        return next(o for o in self.outputs if o.name == name)

    def summary(self) -> str:
        """One line naming the first failing output: ``FAIL 1/3 output(s): out: max abs ...``."""
        where = f"sample {self.sample}: " if self.sample is not None else ""
        if self.passed:
            return f"PASS {where}{len(self.outputs)} output(s) within tolerance"
        failed = [o for o in self.outputs if not o.passed]
        return f"FAIL {where}{len(failed)}/{len(self.outputs)} output(s): {failed[0].summary()}"

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Comparison:
        return cls([OutputComparison.from_json(o) for o in obj["outputs"]], obj["passed"], obj.get("sample"))


@dataclass
class SamplesComparison(_Json):
    """Several samples. ``passed`` iff the sample counts agree and every sample passed."""

    samples: list[Comparison]
    passed: bool
    reason: str | None = None  # set when the sample counts differ

    def summary(self) -> str:
        failed = [c for c in self.samples if not c.passed]
        if self.reason or not failed:
            return f"FAIL {self.reason}" if self.reason else f"PASS {len(self.samples)} sample(s) within tolerance"
        return f"{failed[0].summary()} ({len(failed)}/{len(self.samples)} samples failed)"

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SamplesComparison:
        return cls([Comparison.from_json(c) for c in obj["samples"]], obj["passed"], obj.get("reason"))


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


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
        sides = [f"{nan} NaN {kind} difference(s)" if nan else f"{out.stat} {kind} {_g(stats[out.stat])} > {name} {tol:g}"
                 for kind, stats, nan, name, tol in (("abs", out.abs_stats, out.abs_nan, "atol", out.atol),
                                                     ("rel", out.rel_stats, out.rel_nan, "rtol", out.rtol))]
        return f"{sides[0]} and {sides[1]}; {over}"
    if out.abs_nan:
        return f"NaN difference at {out.worst[0].index} ({out.abs_nan} in all); {over}"
    return (f"max abs {_g(out.abs_stats['max'])} at {out.max_abs_index} (rel {_g(out.max_abs_rel)}) > "
            f"atol {out.atol:g}/rtol {out.rtol:g}; {over}")


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
