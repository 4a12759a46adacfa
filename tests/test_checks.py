"""``utils/checks``: the strict numeric checks shared by solvers, maps, losses, groups and settings."""
from __future__ import annotations

import math

import pytest

from omegaconf import OmegaConf

from eqdeq_cli.utils.checks import as_list, check_int, check_real


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


def test_as_list_reads_lists_tuples_and_list_configs_but_not_strings_or_scalars():
    assert as_list([0, 1]) == [0, 1] and as_list((0.5,)) == [0.5]
    assert as_list(OmegaConf.create({"v": [0, 1]}).v) == [0, 1]
    for value in ("0,1", b"01", 0.5, None):
        assert as_list(value) is None
