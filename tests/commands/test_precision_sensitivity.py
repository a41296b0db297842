"""The sensitivity search order: stand-outs first, error bands, topological order within a band.

``sensitivity_order`` is tested on measured-looking errors (real ``NodeError`` values), the
accumulated-error fixture through the real sensitivity pass, and the reason for the bands on a
plain predicate that, like that fixture, passes only when enough *contiguous* nodes are kept.
"""

from __future__ import annotations

import math
import random

import pytest

from bisector.checks.base import Verdict
from bisector.commands.precision_sensitivity import (
    BAND_FACTOR, UNIT_ROUNDOFF, NodeError, error_band, noise_floor, sensitivity_order,
)
from bisector.strategies.precision import PrecisionStrategy
from fixtures import fixture_path
from tests.strategies import drive

U16 = UNIT_ROUNDOFF["fp16"]


def errors_of(values: dict[int, float], likely: set[int] = frozenset()) -> tuple[dict[str, NodeError], list[str]]:
    """``NodeError`` per position ``i`` (named ``n<i>``), with the given own errors."""
    names = [f"n{i}" for i in range(max(values) + 1)]
    errors = {names[i]: NodeError(names[i], "Add", i, e, f"{names[i]}_out", e, 0 if math.isfinite(e) else 1, 1.0,
                                  likely=i in likely or not math.isfinite(e))
              for i, e in values.items()}
    return errors, names


def test_error_band_is_zero_up_to_band_factor_times_the_floor():
    floor = 1e-3
    assert error_band(0.0, floor) == error_band(floor, floor) == error_band(3.9 * floor, floor) == 0
    assert error_band(BAND_FACTOR * 1.01 * floor, floor) == 1
    assert error_band(BAND_FACTOR ** 2 * 1.01 * floor, floor) == 2
    assert error_band(math.inf, floor) == error_band(math.nan, floor) == math.inf


def test_noise_floor_is_the_median_but_at_least_the_unit_roundoff():
    errors, _ = errors_of({0: 1e-5, 1: 2e-5, 2: math.inf})
    assert noise_floor(errors, "fp16") == U16
    errors, _ = errors_of({0: 1e-2, 1: 2e-2, 2: 3e-2})
    assert noise_floor(errors, "fp16") == 2e-2


def test_near_equal_errors_keep_the_topological_order():
    rng = random.Random(0)
    values = {i: rng.uniform(2e-4, 4e-4) for i in range(69)}  # accumulated_error's spread
    errors, names = errors_of(values)
    items = list(range(69))
    rng.shuffle(items)
    order, likely = sensitivity_order(items, errors, names, "fp16")
    assert order == list(range(69)) and likely == 0


def test_stand_outs_first_then_bands_topological_within_each():
    # floor = fp16's unit roundoff (the median 3e-4 is below it)
    values = {0: 3e-4, 1: 5 * U16, 2: 2e-4, 3: math.inf, 4: 100 * U16, 5: 10 * U16, 6: 3e-4, 7: math.nan,
              8: 2.5e-4}
    errors, names = errors_of(values, likely={4})
    order, likely = sensitivity_order(list(range(9)), errors, names, "fp16")
    assert likely == 3
    assert order[:3] == [3, 7, 4]  # the stand-outs: inf/NaN (topological), then the flagged node
    assert order[3:5] == [1, 5]  # band 1 (4x to 16x the floor)
    assert order[5:] == [0, 2, 6, 8]  # band 0, where ranking by error would only shuffle


def test_unmeasured_nodes_come_last_in_topological_order():
    errors, names = errors_of({1: 3e-4, 2: 3e-4, 3: 20 * U16})
    names += ["n4"]  # 0 and 4 were not measured
    order, likely = sensitivity_order([4, 3, 2, 1, 0], errors, names, "fp16")
    assert order == [3, 1, 2, 0, 4] and likely == 0


def test_accumulated_error_fixture_is_searched_in_topological_order(tmp_path):
    from bisector.commands.precision import PrecisionOptions, setup

    st = setup(PrecisionOptions(model=fixture_path("accumulated_error"), precision="fp16", write_inputs=False),
               tmp_path)
    assert st.strategy.items == st.lowerable and st.strategy.likely == 0
    assert all(e.error < U16 for e in st.errors.values())  # nothing above fp16's unit roundoff


def longest_kept_run_at_least(n_kept: int):
    """GOOD iff some run of ``n_kept`` consecutive positions is kept: small increments survive only
    along a contiguous fp32 run, as on the accumulated-error fixture."""
    def pred(keep):
        run = best = 0
        for i in range(max(keep, default=-1) + 1):
            run = run + 1 if i in keep else 0
            best = max(best, run)
        return Verdict.GOOD if best >= n_kept else Verdict.BAD
    return pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shuffled_order_costs_more_than_topological_order_when_contiguity_matters(seed):
    n = 64
    shuffled = list(range(n))
    random.Random(seed).shuffle(shuffled)
    topo = drive(PrecisionStrategy(list(range(n))), longest_kept_run_at_least(24))
    mixed = drive(PrecisionStrategy(shuffled), longest_kept_run_at_least(24))
    assert len(topo.result["keep"]) == 24 and topo.result["one_minimal"] is True
    assert topo.checks < mixed.checks
