"""The default task has a real nullspace: fewer measurements than pixels, as in the EI paper."""
from __future__ import annotations

import math

import pytest
from hydra.utils import instantiate


def test_default_ct_measures_about_055_per_pixel(compose_cfg):
    """`eqdeq train` as shipped: 25 views × ceil(√2·64) = 91 bins for 64² pixels = 0.555, the EI
    paper's sparse-view CT ratio (50 views at 128²: 50 · 182 / 128² = 0.555)."""
    cfg = compose_cfg([])
    op = instantiate(cfg.physics)
    pixels = math.prod(op.img_shape)
    measurements = math.prod(op.meas_shape)
    assert (op.img_shape, op.meas_shape) == ((1, 64, 64), (1, 25, 91))
    assert measurements / pixels == pytest.approx(0.555, abs=0.01)
    paper = 50 * math.ceil(math.sqrt(2) * 128) / 128**2
    assert measurements / pixels == pytest.approx(paper, rel=0.01)


@pytest.mark.parametrize("preset", ["ct_ei_implicit", "ct_ei_jfb", "ct_ei_unrolled", "ct_mc", "ct_supervised"])
def test_ct_presets_keep_the_default_views(compose_cfg, preset):
    assert compose_cfg([f"experiment={preset}"]).physics.n_views == compose_cfg([]).physics.n_views == 25
