"""What a comparison returns: per-output, per-sample and all-samples results, each one line as
``summary()`` and strict JSON as ``to_json()`` / ``from_json()``.

Non-finite floats go to JSON as ``"nan"``/``"inf"``/``"-inf"`` (the journal stays strict JSON) and
come back as floats, except in the text fields (``_TEXT_FIELDS``: name, reason, dtypes, ...).
``bisector.compare.comparator`` computes these results; ``bisector.compare.render`` renders them.

>>> c = Comparison([OutputComparison("y", passed=True)], passed=True)
>>> Comparison.from_json(c.to_json()) == c
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bisector.compare.config import DEFAULT_ATOL, DEFAULT_QUANTILE, DEFAULT_RTOL, DEFAULT_STAT

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
    ``worst``: up to ``comparator.WORST_COUNT`` elements, furthest out of tolerance first.
    ``histogram``: absdiff per decade, ``[{"lo", "hi", "count"}]``; zeros as lo = hi = 0,
    infinities as lo = hi = inf, NaN counted in ``abs_nan`` only.
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
        return (f"{self.name}: ok, {k} abs {short_number(self.abs_stats.get(k))} "
                f"rel {short_number(self.rel_stats.get(k))}"
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


def short_number(x: float | None) -> str:
    """``x`` with two significant digits (``"0.25"``, ``"1e+05"``); ``"-"`` for None."""
    return "-" if x is None else f"{x:.2g}"
