"""bisector.compare.comparator (with its config and results modules) and bisector.compare.render on real arrays, checked against hand-computed values and
against Polygraphy's own comparator."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from bisector.compare.comparator import ZERO_EPSILON, compare_outputs, compare_samples
from bisector.compare.config import CompareConfig, parse_tolerances
from bisector.compare.results import Comparison, OutputComparison, SamplesComparison
from bisector.compare.render import render_comparison
from bisector.errors import UserError


def one(target, reference, **config) -> OutputComparison:
    comparison = compare_outputs({"o": np.asarray(target)}, {"o": np.asarray(reference)}, CompareConfig(**config))
    assert comparison.passed == comparison.outputs[0].passed
    return comparison.outputs[0]


# ---------------------------------------------------------------- defaults and elemwise
def test_defaults_are_polygraphys():
    c = CompareConfig()
    assert (c.rtol, c.atol, c.check_error_stat, c.error_quantile, c.validate) == (1e-5, 1e-5, "elemwise", 0.99, False)


def test_elemwise_hand_computed():
    out = one([1.0, 2.0, 3.0], [1.0, 2.00001, 3.5], atol=1e-4)
    assert not out.passed
    assert out.mismatched == 1 and out.size == 3
    assert out.abs_stats["max"] == pytest.approx(0.5)
    assert out.rel_stats["max"] == pytest.approx(0.5 / 3.5)
    assert out.abs_stats["mean"] == pytest.approx((0 + 1e-5 + 0.5) / 3)
    assert out.abs_stats["median"] == pytest.approx(1e-5)
    assert out.max_abs_index == [2] and out.max_abs_rel == pytest.approx(0.5 / 3.5)
    assert out.min_atol == pytest.approx(0.5) and out.min_rtol == pytest.approx(0.5 / 3.5)
    assert [e.index for e in out.worst][0] == [2]
    assert out.worst[0].mismatched and out.worst[0].target == 3.0 and out.worst[0].reference == 3.5


def test_elemwise_element_fails_only_if_both_exceed():
    assert one([1000.001], [1000.0]).passed  # abs 1e-3 > atol, but rel 1e-6 <= rtol
    assert one([1e-7], [2e-7]).passed  # rel 0.5 > rtol, but abs 1e-7 <= atol
    assert not one([1000.001, 1e-7], [1000.0, 2e-7], atol=1e-5, rtol=1e-7).passed


def test_stat_modes_fail_only_if_both_statistics_exceed():
    t, r = [1000.001, 1e-7], [1000.0, 2e-7]
    assert one(t, r).passed  # elemwise: each element passes one of the checks
    out = one(t, r, check_error_stat="max")  # max abs 1e-3 > atol and max rel 0.5 > rtol
    assert not out.passed and out.summary().startswith("o: max abs 0.001 > atol 1e-05 and max rel 0.5 > rtol")
    assert one([1000.001, 1.0], [1000.0, 1.0], check_error_stat="max").passed  # max rel 1e-6 <= rtol


def test_mean_median_quantile_hand_computed():
    t, r = [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]  # abs [0, 0, 0, 1]; rel [0, 0, 0, 1/eps]
    assert one(t, r, check_error_stat="mean", atol=0.25).passed  # mean abs 0.25 <= atol
    assert not one(t, r, check_error_stat="mean", atol=0.2).passed
    median = one(t, r, check_error_stat="median", atol=0.0, rtol=0.0)
    assert median.passed and median.abs_stats["median"] == 0.0
    quantile = one(t, r, check_error_stat="quantile", atol=0.9)  # np.quantile(abs, 0.99) = 0.97
    assert quantile.abs_stats["quantile"] == pytest.approx(0.97) and not quantile.passed
    assert quantile.min_atol == pytest.approx(0.97) and quantile.min_atol_given_rtol == pytest.approx(0.97)
    assert one(t, r, check_error_stat="quantile", atol=0.97).passed
    assert one(t, r, check_error_stat="quantile", error_quantile=0.5, atol=0.0).passed
    assert one(t, r, check_error_stat="mean", atol=0.2).rel_stats["mean"] == pytest.approx(0.25 / ZERO_EPSILON)


def test_zeros_in_reference_use_epsilon():
    out = one([1e-20], [0.0])
    assert out.rel_stats["max"] == pytest.approx(1e-20 / ZERO_EPSILON)
    assert out.passed  # rel 4.5e-5 > rtol, but abs <= atol
    assert not one([1e-3], [0.0]).passed
    assert one([0.0, 0.0], [0.0, 0.0], atol=0.0, rtol=0.0).passed


@pytest.mark.parametrize("stat", ["elemwise", "max", "mean", "median", "quantile"])
def test_nan_on_either_side_fails(stat):
    for t, r in (([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [1.0, np.nan, 3.0]),
                 ([1.0, np.nan], [1.0, np.nan])):  # NaN == NaN does not count as a match
        out = one(t, r, check_error_stat=stat, atol=1e9, rtol=1e9)
        assert not out.passed and out.abs_nan == 1
        assert out.min_atol == math.inf and out.worst[0].index == [1]
    out = one([1.0, np.nan, 3.0], [1.0, 2.0, 3.1])
    assert out.abs_stats["max"] == pytest.approx(0.1)  # statistics leave the NaN out
    assert out.target_nan == 1 and out.reference_nan == 0
    assert out.summary().startswith("o: NaN difference at [1] (1 in all); 2/3 elements mismatched")


def test_infinities():
    assert not one([np.inf], [np.inf]).passed  # inf - inf is NaN, as in Polygraphy
    assert one([np.inf], [np.inf], infinities_compare_equal=True).passed
    out = one([np.inf, 1.0], [1.0, 1.0])
    assert not out.passed and out.abs_stats["max"] == math.inf and out.histogram[-1] == {"lo": math.inf, "hi": math.inf, "count": 1}


def test_validate_fails_on_nan_or_inf_in_target_only():
    config = dict(infinities_compare_equal=True)
    assert one([np.inf, 1.0], [np.inf, 1.0], **config).passed
    out = one([np.inf, 1.0], [np.inf, 1.0], validate=True, **config)
    assert not out.passed and "target has 0 NaN and 1 Inf" in out.reason and "--validate" in out.reason
    assert one([1.0], [1.0], validate=True).passed


def test_per_output_tolerances_and_stats():
    t = {"a": np.array([1.0, 2.0]), "b": np.array([1.0, 2.0])}
    r = {"a": np.array([1.0, 2.1]), "b": np.array([1.0, 2.1])}
    config = CompareConfig.from_flags(atol=["1e-5", "a:0.2"], rtol=["1e-5"])
    c = compare_outputs(t, r, config)
    assert [o.passed for o in c.outputs] == [True, False] and c.failed_outputs == ["b"]
    assert c.output("a").atol == 0.2 and c.output("b").atol == 1e-5
    config = CompareConfig.from_flags(atol=["0.06"], check_error_stat=["median", "b:max"])
    c = compare_outputs(t, r, config)  # median abs 0.05 passes; b's max abs 0.1 does not
    assert c.output("a").passed and not c.output("b").passed and c.output("b").stat == "max"


def test_shape_mismatch_fails():
    for shapes in (((2, 3), (3, 2)), ((1, 3), (3,))):
        out = one(np.zeros(shapes[0]), np.zeros(shapes[1]))
        assert not out.passed and out.shape_mismatch
        assert str(shapes[0]) in out.reason and str(shapes[1]) in out.reason
        assert out.target_shape == list(shapes[0]) and out.abs_stats == {}


def test_missing_outputs_fail_with_reason():
    c = compare_outputs({"a": np.ones(2), "t_only": np.ones(1)}, {"a": np.ones(2), "r_only": np.ones(3, np.float16)})
    assert not c.passed and [o.name for o in c.outputs] == ["a", "t_only", "r_only"]
    assert c.output("t_only").missing == "reference" and c.output("t_only").reason == "missing in the reference"
    r_only = c.output("r_only")
    assert r_only.missing == "target" and r_only.reference_shape == [3] and r_only.reference_dtype == "float16"
    assert c.summary() == "FAIL 2/3 output(s): t_only: missing in the reference"


def test_dtypes_bool_int_float16_and_empty():
    assert not one(np.array([True, False]), np.array([True, True])).passed
    assert one(np.array([True, False]), np.array([True, False]), atol=0.0, rtol=0.0).passed
    out = one(np.array([3, 0], np.int64), np.array([1, 0], np.int64))
    assert out.abs_stats["max"] == 2.0 and out.rel_stats["max"] == 2.0 and out.worst[0].target == 3
    out = one(np.array([1.0, 2.0], np.float16), np.array([1.0, 2.001], np.float32), atol=1e-2)
    assert out.passed and out.target_dtype == "float16"
    empty = one(np.zeros((0, 3)), np.zeros((0, 3)))
    assert empty.passed and empty.size == 0 and empty.worst == [] and empty.histogram == []


def test_worst_elements_have_multi_dim_indices():
    r = np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 1
    t = r.copy()
    t[1, 2, 3] += 5.0  # rel 5/24
    t[0, 0, 1] += 1.0  # rel 1/2: further out of tolerance relative to its size
    out = one(t, r, atol=1e-3, rtol=1e-3)
    assert [e.index for e in out.worst] == [[0, 0, 1], [1, 2, 3]]
    assert out.worst[1].target == 29.0 and out.worst[1].reference == 24.0 and out.worst[1].abs == 5.0
    assert out.max_abs_index == [1, 2, 3]


def test_worst_ranks_by_excess_over_tolerance_not_raw_abs():
    # The largest abs error passes (rel 1e-7); the smaller one fails. The failing one comes first.
    out = one([1e6 + 0.1, 1.001], [1e6, 1.0], atol=1e-5, rtol=1e-5)
    assert out.worst[0].index == [1] and out.worst[0].mismatched and not out.worst[1].mismatched


def test_histogram_decades():
    t = np.array([1.0, 1.0, 1.0 + 3e-6, 1.0 + 5e-6, 1.002, np.inf, np.nan])
    out = one(t, np.ones(7))
    bins = [(b["lo"], b["hi"], b["count"]) for b in out.histogram]
    assert bins[0] == (0.0, 0.0, 2)
    assert [(lo, c) for lo, _, c in bins[1:-1]] == [(pytest.approx(1e-6), 2), (pytest.approx(1e-5), 0),
                                                   (pytest.approx(1e-4), 0), (pytest.approx(1e-3), 1)]
    assert bins[-1] == (math.inf, math.inf, 1) and out.abs_nan == 1
    assert sum(c for _, _, c in bins) + out.abs_nan == out.size
    wide = one(np.array([1e-30, 1e-3, 10.0]), np.zeros(3)).histogram  # 32 decades: clamped to 12
    assert len(wide) == 12 and wide[0]["lo"] == 0.0 and wide[0]["count"] == 1 and wide[-1]["hi"] == 100.0


def test_min_tolerances_hand_computed():
    t, r = [1.1, 10.5], [1.0, 10.0]  # abs [0.1, 0.5]; rel [0.1, 0.05]
    out = one(t, r, rtol=0.07)
    assert out.min_atol == pytest.approx(0.5) and out.min_rtol == pytest.approx(0.1)
    assert out.min_atol_given_rtol == pytest.approx(0.1)  # only element 0 fails rel
    assert out.min_rtol_given_atol == pytest.approx(0.1)  # atol 1e-5: both fail abs
    assert one(t, r, rtol=0.07, atol=0.1 + 1e-12).passed and not one(t, r, rtol=0.07, atol=0.099).passed


arrays = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20)


@settings(max_examples=80, deadline=None)
@given(arrays, st.integers(0, 2**31), st.sampled_from(["elemwise", "max", "mean", "median", "quantile"]),
       st.sampled_from([0.0, 1e-5, 1e-2]))
def test_min_tolerances_are_tight(values, seed, stat, other):
    """Setting a tolerance to the reported minimum passes; anything clearly below fails."""
    r = np.array(values)
    t = r + np.random.default_rng(seed).normal(scale=1e-2, size=r.shape)
    out = one(t, r, check_error_stat=stat, rtol=other)
    needed = out.min_atol_given_rtol
    assert one(t, r, check_error_stat=stat, rtol=other, atol=needed).passed
    if needed > 1e-9:
        assert not one(t, r, check_error_stat=stat, rtol=other, atol=needed * 0.999).passed
    assert one(t, r, check_error_stat=stat, rtol=0.0, atol=out.min_atol).passed
    assert one(t, r, check_error_stat=stat, atol=0.0, rtol=out.min_rtol).passed


# ---------------------------------------------------------------- samples, summaries, JSON
def test_compare_samples_fails_if_any_sample_fails():
    good, bad = {"o": np.ones(3)}, {"o": np.array([1.0, 1.0, 2.0])}
    passing = compare_samples([good, good], [good, good])
    assert passing.passed and passing.summary() == "PASS 2 sample(s) within tolerance"
    failing = compare_samples([good, bad, bad], [good, good, good])
    assert not failing.passed and [c.passed for c in failing.samples] == [True, False, False]
    assert failing.summary().startswith("FAIL sample 1: 1/1 output(s): o: max abs 1 at [2]")
    assert failing.summary().endswith("(2/3 samples failed)")
    short = compare_samples([good], [good, good])
    assert not short.passed and short.reason == "target has 1 sample(s), reference has 2"


def test_summary_is_one_line_in_the_documented_format():
    r = np.zeros((4, 10), np.float32)
    t = r.copy()
    t[0, 7] = 32.0
    t[1, :2] = 1e-3
    line = one(t, r).summary()
    assert "\n" not in line
    assert re.fullmatch(r"o: max abs 32 at \[0, 7\] \(rel 1\.4e\+17\) > atol 1e-05/rtol 1e-05; 3/40 elements mismatched", line)
    assert one(r, r).summary() == "o: ok, max abs 0 rel 0 within atol 1e-05/rtol 1e-05"


def test_json_round_trip_is_strict_json():
    t = {"a": np.array([[1.0, np.nan], [np.inf, 4.0]]), "nan": np.array([1, 2]), "b": np.ones(2, bool)}
    r = {"a": np.array([[1.0, 2.0], [3.0, 0.0]]), "nan": np.array([1, 3]), "c": np.ones(1)}
    samples = compare_samples([t, t], [r, t])
    text = json.dumps(samples.to_json(), allow_nan=False)
    back = SamplesComparison.from_json(json.loads(text))
    assert back.to_json() == samples.to_json() and back.summary() == samples.summary()
    out = back.samples[0].output("a")
    assert math.isnan(out.worst[0].abs) and out.min_atol == math.inf and back.samples[0].output("nan").name == "nan"
    assert Comparison.from_json(samples.samples[0].to_json()).to_json() == samples.samples[0].to_json()
    config = CompareConfig.from_flags(atol=["1e-3", "a:1"], check_error_stat="max", validate=True)
    assert CompareConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


# ---------------------------------------------------------------- parsing and config errors
def test_parse_tolerances():
    assert parse_tolerances(["1e-3", "out0:1e-2"]) == (1e-3, {"out0": 1e-2})
    assert parse_tolerances(None) == (1e-5, {})
    assert parse_tolerances(["input:0:0.5"], default=0.1) == (0.1, {"input:0": 0.5})
    for bad in (["abc"], ["out0:x"], ["-1"], ["o:-0.5"]):
        with pytest.raises(UserError):
            parse_tolerances(bad)


def test_config_rejects_bad_values():
    with pytest.raises(UserError, match="check_error_stat"):
        CompareConfig(check_error_stat="average")
    with pytest.raises(UserError, match="check_error_stat"):
        CompareConfig.from_flags(check_error_stat=["o:nope"])
    with pytest.raises(UserError):
        CompareConfig(error_quantile=1.5)
    with pytest.raises(UserError):
        CompareConfig(atol=-1.0)


# ---------------------------------------------------------------- agreement with Polygraphy
def polygraphy_verdicts(target, reference, **kwargs) -> dict[str, object]:
    from polygraphy.comparator import CompareFunc, IterationResult
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    with pytest.warns(DeprecationWarning):
        func = CompareFunc.simple(**kwargs)
    return func(IterationResult(target, runner_name="target"), IterationResult(reference, runner_name="ref"))


def borderline(out: OutputComparison) -> bool:
    """True when a statistic sits within float32 rounding of its tolerance."""
    pairs = [(out.abs_stats[out.stat_key], out.atol), (out.rel_stats[out.stat_key], out.rtol)]
    pairs += [(e.abs, out.atol) for e in out.worst] + [(e.rel, out.rtol) for e in out.worst]
    return any(math.isfinite(v) and abs(v - tol) <= 1e-3 * tol for v, tol in pairs)


@pytest.mark.parametrize("stat", ["elemwise", "max", "mean", "median", "quantile"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_agrees_with_polygraphy(stat, dtype):
    rng = np.random.default_rng(17)
    checked = disagreements = 0
    for case in range(40):
        shape = tuple(rng.integers(1, 6, size=rng.integers(1, 4)))
        reference = rng.normal(size=shape).astype(dtype)
        reference.flat[0] = 0 if case % 3 == 0 else reference.flat[0]  # zeros in the reference
        noise = rng.normal(scale=10.0 ** rng.uniform(-7, -1), size=shape)
        target = (reference + noise).astype(dtype)
        if case % 7 == 0:
            target.flat[-1] = np.nan
        atol, rtol = 10.0 ** rng.uniform(-6, -1), 10.0 ** rng.uniform(-6, -1)
        ours = one(target, reference, atol=atol, rtol=rtol, check_error_stat=stat)
        if borderline(ours):
            continue
        theirs = polygraphy_verdicts({"o": target}, {"o": reference}, atol=atol, rtol=rtol, check_error_stat=stat)["o"]
        checked += 1
        disagreements += ours.passed != bool(theirs)
        if not math.isnan(theirs.max_absdiff):
            assert ours.abs_stats["max"] == pytest.approx(float(theirs.max_absdiff), rel=1e-3)
            assert ours.abs_stats["mean"] == pytest.approx(float(theirs.mean_absdiff), rel=1e-3)
            assert ours.rel_stats["median"] == pytest.approx(float(theirs.median_reldiff), rel=1e-3)
    assert checked >= 30 and disagreements == 0


def test_agrees_with_polygraphy_on_per_output_tolerances():
    t = {"a": np.array([1.0, 2.0]), "b": np.array([1.0, 2.0])}
    r = {"a": np.array([1.0, 2.1]), "b": np.array([1.0, 2.1])}
    theirs = polygraphy_verdicts(t, r, atol={"": 1e-5, "a": 0.2}, rtol=1e-5)
    ours = compare_outputs(t, r, CompareConfig.from_flags(atol=["1e-5", "a:0.2"]))
    assert {k: bool(v) for k, v in theirs.items()} == {o.name: o.passed for o in ours.outputs}


# ---------------------------------------------------------------- display
def render(obj) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(render_comparison(obj))
    return console.export_text()


def test_render_shows_verdicts_statistics_histogram_and_worst_elements():
    r = np.ones((2, 5), np.float32)
    t = r.copy()
    t[1, 3] = 9.0
    text = render(compare_outputs({"bad": t, "good": r}, {"bad": r, "good": r, "gone": r}))
    for expected in ("FAIL bad", "PASS good: ok, max abs 0", "FAIL gone", "missing in the target", "worst elements",
                     "[1, 3]", "1/10", "min to pass", "0 (exact)", "[1e+00, 1e+01)", "█"):
        assert expected in text, expected
    samples = render(compare_samples([{"o": r}, {"o": t}], [{"o": r}, {"o": r}]))
    assert "sample 1" in samples and "sample 0: all 1 output(s) passed" in samples
    assert "PASS" in render(compare_samples([{"o": r}], [{"o": r}]))
    assert "FAIL" in render(one([np.nan], [1.0], check_error_stat="mean"))
    mismatch = render(Comparison.from_json(compare_outputs({"o": np.ones((2, 3))}, {"o": np.ones(6)}).to_json()))
    assert "shape (2, 3) differs from the reference's (6,)" in mismatch and "float64[2, 3]" in mismatch
