"""``utils/checks``: the strict numeric checks shared by solvers, maps, losses, groups and settings."""
from __future__ import annotations

import math

import pytest

from eqdeq_cli.utils.checks import check_int, check_real


@pytest.mark.parametrize("value", [True, 2.0, 0, "3"])
def test_check_int_rejects_bools_floats_and_small_values(value):
    with pytest.raises(ValueError, match=f"n must be an integer >= 1, got {value!r}"):
        check_int("n", value, 1)


def test_check_real_without_upper_bound_does_not_offer_infinity():
    assert check_real("tau", 2, low=0.0) == 2.0
    for bad in (0.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match=r"tau must be a finite real number > 0.0, got"):
            check_real("tau", bad, low=0.0)
    with pytest.raises(ValueError, match=r"beta must be a real number in \(0.0, 1.0\], got 2"):
        check_real("beta", 2, low=0.0, high=1.0)
