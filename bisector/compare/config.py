"""How outputs are compared: ``CompareConfig`` and the parsing of Polygraphy-style flag values.

Defaults are Polygraphy's (``polygraphy run``): rtol = atol = 1e-5, stat ``elemwise``, quantile
0.99, no ``validate``. Tolerances and stat can be set per output (``--atol 1e-5 out0:1e-4``); the
last ``:`` splits off the output name, so names may hold ``:``. ``bisector.compare.comparator`` applies a
config.

>>> c = CompareConfig.from_flags(atol=["1e-3", "out0:1e-2"], check_error_stat="max")
>>> c.for_output("out0"), c.for_output("out1")
((0.01, 1e-05, 'max'), (0.001, 1e-05, 'max'))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from bisector.errors import UserError

STATS = ("elemwise", "max", "mean", "median", "quantile")
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5
DEFAULT_STAT = "elemwise"
DEFAULT_QUANTILE = 0.99


def _parse_named(args: Sequence[str] | None, flag: str, convert) -> tuple[Any, dict[str, Any]]:
    """``["1e-3", "out0:1e-2"]`` -> ``(1e-3, {"out0": 1e-2})``; the last ``:`` splits off the name."""
    default, per_output = None, {}
    for arg in args or []:
        name, colon, value = str(arg).rpartition(":")
        if colon and not name.strip():
            raise UserError(f"{flag} {arg!r}: no output name before ':'", hint=f"use {flag} VALUE [NAME:VALUE ...]")
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
                raise UserError(f"unknown `check_error_stat` {stat!r}; choose one of {', '.join(STATS)}")
        for tol in [self.rtol, self.atol, *self.rtol_per_output.values(), *self.atol_per_output.values()]:
            if not tol >= 0:
                raise UserError(f"tolerance {tol} must be >= 0")
        if not 0 <= self.error_quantile <= 1:
            raise UserError(f"`error_quantile` {self.error_quantile} must be in [0, 1]")

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
