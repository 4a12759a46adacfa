"""Symmetry groups: exact inverses, per-sample elements, reproducible sampling, clear errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eqdeq_cli.groups import Group, Reflections, Rotations, Shifts

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "group"

EXACT_GROUPS = {
    "shifts": lambda: Shifts(),
    "shifts_max2": lambda: Shifts(max_shift=2),
    "reflections_both": lambda: Reflections(axes="both"),
    "reflections_h": lambda: Reflections(axes="horizontal", identity=True),
    "reflections_v": lambda: Reflections(axes="vertical", identity=True),
    "rot90": lambda: Rotations(exact=True),
    "rot90_all": lambda: Rotations(exact=True, turns=[0, 1, 2, 3]),
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_image(b: int, h: int, w: int, dtype=torch.float64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=dtype), torch.linspace(-1, 1, w, dtype=dtype), indexing="ij")
    imgs = [torch.exp(-((xx - 0.2 * k) ** 2 + (yy + 0.1 * k) ** 2) / 0.3) + 0.3 * torch.cos(2 * xx + k * yy)
            for k in range(b)]
    return torch.stack(imgs)[:, None]


@pytest.mark.parametrize("name", EXACT_GROUPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_discrete_groups_are_exactly_invertible(name, dtype):
    group = EXACT_GROUPS[name]()
    x = torch.randn(16, 2, 8, 8, generator=gen(1)).to(dtype)
    tx, g = group(x, generator=gen(2))
    assert tx.shape == x.shape and tx.dtype == dtype
    assert torch.equal(group.apply_inverse(tx, g), x)
    assert torch.equal(group.apply(group.apply_inverse(x, g), g), x)


@pytest.mark.parametrize("name", EXACT_GROUPS)
def test_elements_differ_across_batch_and_seed_reproduces(name):
    group = EXACT_GROUPS[name]()
    x = torch.randn(16, 1, 8, 8, generator=gen(1))
    g1 = group.sample(16, generator=gen(5), img_size=(8, 8))
    g2 = group.sample(16, generator=gen(5), img_size=(8, 8))
    g3 = group.sample(16, generator=gen(6), img_size=(8, 8))
    assert torch.equal(g1, g2) and not torch.equal(g1, g3)
    assert g1.shape[0] == 16 and len({tuple(e.reshape(-1).tolist()) for e in g1}) > 1
    tx = group.apply(x, g1)
    # each sample is transformed by its own element: same result as applying them one at a time
    for b in range(16):
        assert torch.equal(tx[b:b + 1], group.apply(x[b:b + 1], g1[b:b + 1]))


def test_continuous_rotation_elements_per_sample_and_range():
    group = Rotations(max_angle=30.0)
    g = group.sample(1000, generator=gen(0))
    assert g.dtype == torch.float64 and g.abs().max() <= 30.0 and g.unique().numel() == 1000
    assert g.min() < -25 and g.max() > 25
    assert torch.equal(g, group.sample(1000, generator=gen(0)))


def test_sampling_does_not_touch_the_global_rng():
    state = torch.get_rng_state()
    for group in (Shifts(), Rotations(), Rotations(exact=True), Reflections()):
        group.sample(4, generator=gen(0), img_size=(8, 8))
    assert torch.equal(state, torch.get_rng_state())


def test_shifts_match_torch_roll_and_cover_the_whole_group():
    x = torch.randn(3, 2, 5, 7, generator=gen(0))
    g = torch.tensor([[1, 2], [-3, 9], [0, 0]])
    out = Shifts().apply(x, g)
    for b in range(3):
        assert torch.equal(out[b], torch.roll(x[b], tuple(g[b].tolist()), dims=(-2, -1)))
    s = Shifts().sample(4000, generator=gen(0), img_size=(5, 7))
    assert set(s[:, 0].tolist()) == set(range(5)) and set(s[:, 1].tolist()) == set(range(7))
    # without the image size: the same elements, reduced modulo (H, W) when applied
    big = Shifts().sample(4000, generator=gen(0))
    assert torch.equal(big % torch.tensor([5, 7]), Shifts().sample(4000, generator=gen(0), img_size=(5, 7)))
    assert torch.equal(Shifts().apply(x, big[:3]), Shifts().apply(x, big[:3] % torch.tensor([5, 7])))
    assert torch.equal(Shifts().apply_inverse(Shifts().apply(x, big[:3]), big[:3]), x)
    s = Shifts(max_shift=2).sample(4000, generator=gen(0))
    assert set(s.flatten().tolist()) == {-2, -1, 0, 1, 2}


def test_reflections_elements():
    x = torch.randn(4, 1, 3, 5, generator=gen(0))
    g = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    out = Reflections().apply(x, g)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    assert torch.equal(out[2], x[2].flip(-2)) and torch.equal(out[3], x[3].flip(-1).flip(-2))
    drawn = lambda group: {tuple(e.tolist()) for e in group.sample(400, generator=gen(0))}  # noqa: E731
    assert drawn(Reflections(axes="both")) == {(True, False), (False, True), (True, True)}
    assert drawn(Reflections(axes="both", identity=True)) == {(False, False), (True, False), (False, True),
                                                              (True, True)}
    assert drawn(Reflections(axes="horizontal")) == {(True, False)}
    assert drawn(Reflections(axes="vertical", identity=True)) == {(False, False), (False, True)}


def test_exact_rotations_match_rot90_and_continuous_rotations_agree():
    x = torch.randn(4, 1, 6, 6, generator=gen(0), dtype=torch.float64)
    k = torch.tensor([0, 1, 2, 3])
    exact = Rotations(exact=True).apply(x, k)
    for b in range(4):
        assert torch.equal(exact[b], torch.rot90(x[b], int(k[b]), dims=(-2, -1)))
    continuous = Rotations().apply(x, 90.0 * k.double())
    torch.testing.assert_close(continuous, exact, atol=1e-12, rtol=0)
    assert set(Rotations(exact=True, turns=[0, 1, 2, 3]).sample(400, generator=gen(0)).tolist()) == {0, 1, 2, 3}
    assert set(Rotations(exact=True, turns=(2, 0)).sample(400, generator=gen(0)).tolist()) == {0, 2}


def test_exact_rotations_draw_the_turns_by_plus_and_minus_90_degrees_by_default():
    draws = Rotations(exact=True).sample(4000, generator=gen(0))
    assert set(draws.tolist()) == {1, 3}
    assert abs(float((draws == 1).double().mean()) - 0.5) < 0.03
    assert "turns=[1, 3]" in repr(Rotations(exact=True))


@pytest.mark.parametrize("turns", [[], [4], [1, 1], [-1], ["1"], [True], 1, "13"])
def test_turns_other_than_distinct_quarter_turns_are_refused(turns):
    with pytest.raises(ValueError, match=r"^Rotations: turns must be distinct quarter turns from 0, 1, 2, 3 "
                                         r"\(multiples of 90°\), got "):
        Rotations(exact=True, turns=turns)


def test_turns_with_continuous_angles_are_refused():
    with pytest.raises(ValueError, match=r"^Rotations: turns chooses among exact quarter turns \(group.exact=true\); "
                                         r"continuous angles \(group.exact=false\) are drawn from "
                                         r"\[-max_angle, max_angle\]: leave turns at null$"):
        Rotations(exact=False, turns=[1, 3])


@pytest.mark.parametrize("size", [(33, 33), (32, 40)])
def test_continuous_rotation_inverts_inside_the_inscribed_disc(size):
    h, w = size
    group = Rotations(max_angle=180.0)
    x = smooth_image(4, h, w)
    g = torch.tensor([17.0, -33.0, 71.5, 135.0], dtype=torch.float64)
    back = group.apply_inverse(group.apply(x, g), g)
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    disc = (yy**2 + xx**2).sqrt() < min(h, w) / 2 - 2
    err = (back - x)[..., disc].abs().max()
    assert err < 0.02
    assert not torch.allclose(group.apply(x, g), x, atol=0.1)  # it did rotate
    # outside the disc the corners were lost (zero padding): a real, expected difference
    assert (back - x)[..., ~disc].abs().max() > 0.1


def test_fourier_rotation_matches_rot90_and_agrees_with_bilinear_on_smooth_images():
    fourier = Rotations(interpolation="fourier")
    x = smooth_image(4, 32, 32)
    k = torch.tensor([0, 1, 2, 3])
    # quarter turns are exact (the shears are by 0)
    torch.testing.assert_close(fourier.apply(x, 90.0 * k.double()), Rotations(exact=True).apply(x, k),
                               atol=1e-12, rtol=0)
    # the same direction and geometry as bilinear resampling: on a smooth image the two
    # agree inside the inscribed disc up to bilinear's interpolation error
    g = torch.tensor([17.0, -33.0, 71.5, 135.0], dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(32) - 15.5, torch.arange(32) - 15.5, indexing="ij")
    disc = (yy**2 + xx**2).sqrt() < 12
    out = fourier.apply(x, g)
    assert (out - Rotations().apply(x, g))[..., disc].abs().max() < 0.02
    assert (out - x)[..., disc].abs().max() > 0.1  # it did rotate
    # a centred Gaussian is invariant
    blob = torch.exp(-(xx**2 + yy**2).double() / 30.0)[None, None].expand(4, 1, 32, 32)
    assert (fourier.apply(blob, g) - blob).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fourier_rotation_keeps_detail_that_bilinear_smooths_away(dtype):
    # a sharp-edged square inside the inscribed disc: the Fourier round trip loses only the
    # ringing cut off at the image border; the bilinear one blurs every edge twice
    x = torch.zeros(3, 1, 32, 32, dtype=dtype)
    x[..., 11:21, 9:19] = 1.0
    g = torch.tensor([23.0, -61.0, 152.0], dtype=torch.float64)
    fourier, bilinear = Rotations(interpolation="fourier"), Rotations()
    err_f = (fourier.apply_inverse(fourier.apply(x, g), g) - x).pow(2).mean()
    err_b = (bilinear.apply_inverse(bilinear.apply(x, g), g) - x).pow(2).mean()
    assert fourier.apply(x, g).dtype == dtype
    assert err_f < 1e-3 and err_b > 10 * err_f
    # a smooth off-centre blob (band-limited up to ~1e-6) comes back to that accuracy
    yy, xx = torch.meshgrid(torch.arange(32) - 15.5, torch.arange(32) - 15.5, indexing="ij")
    blob = torch.stack([torch.exp(-((xx - 3 * k) ** 2 + (yy + 2) ** 2).double() / 8.0) for k in range(3)])
    blob = blob[:, None].to(dtype)
    assert (fourier.apply(blob, g) - blob).abs().max() > 0.5
    assert (fourier.apply_inverse(fourier.apply(blob, g), g) - blob).abs().max() < 1e-5


def test_continuous_rotation_keeps_pixel_units_on_non_square_images():
    # a centred disc is invariant under any rotation, also on a non-square grid
    h, w = 31, 47
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    disc = torch.exp(-(xx**2 + yy**2).double() / 40.0)[None, None]
    out = Rotations().apply(disc, torch.tensor([37.0], dtype=torch.float64))
    assert (out - disc).abs().max() < 0.02


@pytest.mark.parametrize("interpolation", ["bilinear", "fourier"])
def test_rotation_is_differentiable(interpolation):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([10.0, 20.0], dtype=torch.float64)
    group = Rotations(interpolation=interpolation)
    group.apply(x, g).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda t: group.apply(t, g), (x.detach().requires_grad_(),))


def test_invalid_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="max_shift"):
        Shifts(max_shift=0)
    with pytest.raises(ValueError, match="max_angle"):
        Rotations(max_angle=270)
    with pytest.raises(ValueError, match="max_angle must be ≥ 90"):
        Rotations(max_angle=45, exact=True)
    with pytest.raises(ValueError, match="padding"):
        Rotations(padding="wrap")
    with pytest.raises(ValueError, match="square"):
        Rotations(exact=True).apply(torch.zeros(1, 1, 4, 6), torch.tensor([1]))
    with pytest.raises(ValueError, match="interpolation must be one of bilinear, fourier, got 'bicubic'"):
        Rotations(interpolation="bicubic")
    with pytest.raises(ValueError, match="pads with zeros only, got padding='border'"):
        Rotations(interpolation="fourier", padding="border")
    with pytest.raises(ValueError, match="needs square images, got H×W = 4×6"):
        Rotations(interpolation="fourier").apply(torch.zeros(1, 1, 4, 6), torch.tensor([10.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="expects angles in degrees"):
        Rotations(interpolation="fourier").apply(torch.zeros(1, 1, 4, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match="axes"):
        Reflections(axes="diagonal")
    with pytest.raises(ValueError, match="batch of 3"):
        Shifts().apply(torch.zeros(3, 1, 4, 4), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Reflections().apply(torch.zeros(4, 4), torch.zeros(4, 2, dtype=torch.bool))
    with pytest.raises(TypeError):
        Shifts(max_shfit=3)


@pytest.mark.parametrize("name,cls", [("shifts", Shifts), ("rotations", Rotations), ("reflections", Reflections)])
def test_configs_instantiate(name, cls):
    group = instantiate(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert isinstance(group, cls) and isinstance(group, Group)
    x = torch.randn(2, 1, 8, 8)
    tx, g = group(x, generator=gen(0))
    assert tx.shape == x.shape and g.shape[0] == 2


def test_group_elements_move_to_the_image_device():
    g = Rotations().sample(3, generator=gen(0), device="meta")
    assert g.device.type == "meta"
    assert math.isfinite(float(Rotations().sample(1, generator=gen(0))[0]))


def test_the_rotation_config_draws_plus_and_minus_90_degrees_and_takes_turns_from_the_command(compose_cfg):
    from hydra.utils import instantiate

    assert set(instantiate(compose_cfg([]).group).sample(400, generator=gen(0)).tolist()) == {1, 3}
    chosen = instantiate(compose_cfg(["group.turns=[0,1,2,3]"]).group)
    assert set(chosen.sample(400, generator=gen(0)).tolist()) == {0, 1, 2, 3}
    continuous = instantiate(compose_cfg(["group.exact=false"]).group)
    assert continuous.sample(3, generator=gen(0)).is_floating_point()
