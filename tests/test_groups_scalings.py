"""Scalings: where the shrunk image lands, what it keeps, its inverse, and its errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eqdeq_cli.analysis import identifiability
from eqdeq_cli.groups import Group, Rotations, Scalings
from eqdeq_cli.groups.base import disc_mask
from eqdeq_cli.physics import CTRadon, MRICartesian

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "group" / "scalings.yaml"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_image(b: int, size: int) -> torch.Tensor:
    """Smooth bumps on a zero background, inside the inscribed disc."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                            torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    imgs = [torch.exp(-((xx - 0.15 * k) ** 2 + (yy + 0.1 * k) ** 2) / 0.08) for k in range(b)]
    return torch.stack(imgs)[:, None]


def test_elements_are_reproducible_and_in_range():
    group = Scalings(factors=[0.5, 0.75], max_angle=30.0)
    state = torch.get_rng_state()
    g = group.sample(2000, generator=gen(0))
    assert torch.equal(state, torch.get_rng_state())
    assert g.shape == (2000, 4) and g.dtype == torch.float64
    assert torch.equal(g, group.sample(2000, generator=gen(0)))
    assert set(g[:, 0].tolist()) == {0.5, 0.75}
    assert float(g[:, 1:3].norm(dim=1).max()) <= 1.0 and float(g[:, 1:3].norm(dim=1).mean()) > 0.6
    assert float(g[:, 3].abs().max()) <= 30.0 and float(g[:, 3].min()) < -25 and float(g[:, 3].max()) > 25
    assert float(Scalings(max_angle=0).sample(50, generator=gen(1))[:, 3].abs().max()) == 0.0


@pytest.mark.parametrize("size", [32, 33])
def test_a_constant_image_becomes_a_window_of_the_scaled_size_inside_the_inscribed_disc(size):
    group = Scalings(factors=[0.5, 0.75], max_angle=0)
    x = torch.full((64, 1, size, size), 0.7, dtype=torch.float64)
    g = group.sample(64, generator=gen(2))
    y = group.apply(x, g)
    r = size / 2
    for yi, (s, oy, ox, _) in zip(y, g.tolist()):
        side = round(s * size)
        inside = yi[0] != 0
        assert int(inside.sum()) == side * side
        assert torch.allclose(yi[0][inside], torch.tensor(0.7, dtype=torch.float64))
        rows, cols = inside.nonzero().double().mean(0) - (size - 1) / 2
        # the window's centre is (1 - s) R (o_y, o_x) from the image centre, up to rounding
        assert abs(rows - (1 - s) * r * oy) <= 0.5 + 1e-9 and abs(cols - (1 - s) * r * ox) <= 0.5 + 1e-9
        # so the shrunk inscribed disc stays in the inscribed disc (up to the rounding)
        assert math.hypot(rows, cols) + s * r <= r + 0.75


def test_the_shrunk_image_keeps_its_mass_scaled_by_the_area_and_inverts_to_a_low_pass_image():
    x = smooth_image(4, 64)
    g = torch.tensor([[0.5, 0.3, -0.2, 0.0], [0.75, 0.0, 0.0, 0.0], [0.75, -0.6, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]],
                     dtype=torch.float64)
    group = Scalings(max_angle=0)
    y = group.apply(x, g)
    ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert torch.allclose(ratio, torch.tensor([32 ** 2, 48 ** 2, 48 ** 2, 64 ** 2], dtype=torch.float64) / 64 ** 2,
                          rtol=0.01)
    assert torch.equal(y[3], x[3])  # the factor 1 at the centre is the identity
    back = group.apply_inverse(y, g)
    rel = (back - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert float(rel[1:3].max()) < 0.03 and float(rel[0]) < 0.08  # only what shrinking blurred is lost


def test_energy_gain_is_the_mean_squared_norm_ratio_of_the_draws():
    x = smooth_image(4, 64).repeat(64, 1, 1, 1)
    for group in (Scalings(max_angle=0), Scalings(factors=[0.3, 0.6, 0.9])):
        y = group(x, generator=gen(6))[0]
        ratio = float((y.pow(2).sum((1, 2, 3)) / x.pow(2).sum((1, 2, 3))).mean())
        assert ratio == pytest.approx(group.energy_gain(), rel=0.05)
    assert Scalings().energy_gain() == pytest.approx((0.25 + 0.5625) / 2)
    assert Rotations().energy_gain() == 1.0


def test_max_angle_composes_the_scaling_with_a_fourier_rotation():
    x = smooth_image(3, 32)
    g = Scalings(max_angle=180.0).sample(3, generator=gen(3))
    scaled = Scalings(max_angle=0).apply(x, g)
    rotated = Rotations(interpolation="fourier").apply(scaled, g[:, 3].contiguous())
    group = Scalings(max_angle=180.0)
    assert torch.allclose(group.apply(x, g), rotated, atol=1e-12)
    back = group.apply_inverse(group.apply(x, g), g)
    disc = disc_mask(32, 32, dtype=torch.float64)
    assert float(((back - x) * disc).norm() / (x * disc).norm()) < 0.1
    assert group.field_of_view(32, 32) is not None and Scalings(max_angle=0).field_of_view(32, 32) is None


def test_scalings_are_differentiable():
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[0.5, 0.2, 0.1, 20.0], [0.75, -0.5, 0.3, -70.0]], dtype=torch.float64)
    for group in (Scalings(max_angle=0), Scalings(max_angle=90.0)):
        assert torch.autograd.gradcheck(lambda t: group.apply(t, g), (x,))


@pytest.mark.parametrize("physics", [CTRadon(img_size=16, n_views=6), MRICartesian(img_size=16, channels=2)],
                         ids=["ct", "mri"])
def test_scalings_move_the_nullspace_of_ct_and_mri(physics):
    report = identifiability(physics, Scalings(max_angle=0), generator=gen(4))
    assert report["identifiable"] and report["reliable"] and report["rho_mean"] > 2 * report["threshold"]


def test_the_config_instantiates_the_group_it_documents():
    group = instantiate(OmegaConf.load(CONFIG))
    assert isinstance(group, Scalings) and isinstance(group, Group)
    assert group.factors == (0.5, 0.75) and group.max_angle == 180.0
    tx, g = group(torch.randn(2, 1, 8, 8), generator=gen(5))
    assert tx.shape == (2, 1, 8, 8) and g.shape == (2, 4)


def test_invalid_arguments_give_clear_errors():
    assert Scalings(factors=[np.float32(0.5), np.float64(0.75)], max_angle=np.float32(90)).factors == (0.5, 0.75)
    for factors in ([], [0.5, 1.5], [0.0], "0.5", [True], [float("nan")]):
        with pytest.raises(ValueError, match=r"factors must be a non-empty list of scale factors in \(0, 1\]"):
            Scalings(factors=factors)
    for angle in (-1, 200, "90"):
        with pytest.raises(ValueError, match=r"max_angle must be a number of degrees in \[0, 180\]"):
            Scalings(max_angle=angle)
    with pytest.raises(ValueError, match=r"factor 0.05 shrinks a 8×8 image below one pixel; use factors of at least "
                                         r"0.0625 \(0.5 / 8 pixels\)"):
        # the element drawn is 0.5: a factor in the list that is too small fails before it is drawn
        Scalings(factors=[0.5, 0.05]).apply(torch.zeros(1, 1, 8, 8), torch.tensor([[0.5, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"elements of shape \(B, 4\)"):
        Scalings(max_angle=0).apply(torch.zeros(2, 1, 8, 8), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="rotates square images only, got H×W = 8×6; set max_angle=0"):
        Scalings(max_angle=10).apply(torch.zeros(1, 1, 8, 6), torch.tensor([[0.5, 0.0, 0.0, 5.0]]))
    with pytest.raises(ValueError, match="batch of 3"):
        Scalings().apply(torch.zeros(3, 1, 8, 8), torch.zeros(2, 4))
