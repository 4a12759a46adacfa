"""Anatomy-like and mixed phantoms: determinism, range, an outline inside the unit disc, and the
statistics that set them apart from the flat ellipses (shading, three tissue classes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from eqdeq_cli.data import PhantomData
from eqdeq_cli.data.anatomy import random_anatomy_phantoms
from eqdeq_cli.data.phantoms import random_ellipse_phantoms, random_mixed_phantoms


@pytest.fixture(scope="module")
def phantoms():
    return random_anatomy_phantoms(24, 48, 1, np.random.default_rng(5))


def test_same_seed_same_bytes_other_seed_other_images(phantoms):
    again = random_anatomy_phantoms(24, 48, 1, np.random.default_rng(5))
    assert again.tobytes() == phantoms.tobytes()
    assert not np.array_equal(random_anatomy_phantoms(24, 48, 1, np.random.default_rng(6)), phantoms)


def test_chunked_draws_are_the_draws_of_one_long_stream():
    """More phantoms than one chunk: the first ones do not depend on how many follow."""
    many = random_anatomy_phantoms(70, 16, 1, np.random.default_rng(1))
    few = random_anatomy_phantoms(64, 16, 1, np.random.default_rng(1))
    assert many.shape == (70, 1, 16, 16) and np.array_equal(many[:64], few)


def test_shape_dtype_and_range(phantoms):
    assert phantoms.shape == (24, 1, 48, 48) and phantoms.dtype == np.float32
    assert phantoms.min() == 0.0 and phantoms.max() <= 1.0
    assert (phantoms.reshape(24, -1).max(axis=1) > 0.5).all()  # every phantom uses the range


def test_body_lies_inside_the_unit_disc(phantoms):
    t = (np.arange(48) + 0.5) / 24 - 1
    radius = np.sqrt(t[:, None] ** 2 + t[None, :] ** 2)
    assert phantoms[..., radius > 0.95 + 1 / 48].max() == 0.0  # outline ≤ 0.95, plus its half-pixel edge
    body = phantoms[..., radius < 0.5] > 0.02
    assert body.mean() > 0.9  # the centre is body, not background


def test_intensities_vary_smoothly_unlike_the_ellipses(phantoms):
    """Inside the body, neighbouring pixels almost never have equal values (shading and texture);
    inside the ellipses most of them do (piecewise constant)."""
    def flat_fraction(x):
        inner = (x[..., 1:-1, 1:-1] > 0.02) & (x[..., :-2, 1:-1] > 0.02)
        equal = x[..., 1:-1, 1:-1] == x[..., :-2, 1:-1]
        return equal[inner].mean()

    ellipses = random_ellipse_phantoms(24, 48, 1, np.random.default_rng(5))
    assert flat_fraction(phantoms) < 0.05 and flat_fraction(ellipses) > 0.7  # equal: mostly clipped at 1


def test_every_phantom_holds_dark_and_bright_tissue(phantoms):
    t = (np.arange(48) + 0.5) / 24 - 1
    inner = np.sqrt(t[:, None] ** 2 + t[None, :] ** 2) < 0.55
    values = phantoms[:, 0][:, inner]
    assert ((values < 0.35).mean(axis=1) > 0.05).all() and ((values > 0.45).mean(axis=1) > 0.05).all()


def test_channels_share_the_outline():
    x = random_anatomy_phantoms(4, 32, 2, np.random.default_rng(0))
    outline = [(x[:, c] > 0.02).mean() for c in range(2)]
    assert abs(outline[0] - outline[1]) < 0.02 and not np.array_equal(x[:, 0], x[:, 1])


def test_phantom_data_kind_selects_the_family_and_the_cache_file(tmp_path):
    small = dict(img_size=16, n_train=3, n_val=1, n_test=1, cache_dir=tmp_path)
    ellipses, anatomy = PhantomData(**small), PhantomData(**small, kind="anatomy")
    assert ellipses.cache_path != anatomy.cache_path
    expected = random_anatomy_phantoms(3, 16, 1, np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0,))))
    assert torch.equal(anatomy.split("train").tensors["x"], torch.from_numpy(expected))
    with pytest.raises(ValueError, match=r"^unknown data.kind='organs'; valid kinds are 'ellipses', 'anatomy', 'mixed'$"):
        PhantomData(**small, kind="organs")


@pytest.mark.parametrize("name", ["anatomy", "mixed"])
def test_anatomy_and_mixed_configs_are_the_phantoms_config_with_their_kind(compose_cfg, name):
    cfg = compose_cfg([f"data={name}"])
    base = compose_cfg(["data=phantoms"])
    assert cfg.data.kind == name and base.data.kind == "ellipses"
    assert {k: v for k, v in cfg.data.items() if k != "kind"} == {k: v for k, v in base.data.items() if k != "kind"}
    assert isinstance(instantiate(cfg.data, n_train=1, n_val=1, n_test=1, img_size=16), PhantomData)


def test_default_data_is_the_mixed_phantoms_and_the_presets_keep_the_ellipses(compose_cfg):
    assert compose_cfg([]).data == compose_cfg(["data=mixed"]).data
    for task in ("ct", "mri", "inpainting"):
        assert compose_cfg([f"experiment={task}_ei_implicit"]).data.kind == "ellipses"


@pytest.mark.parametrize("n", [5, 6])
def test_mixed_phantoms_alternate_the_two_families(n):
    seq = np.random.SeedSequence(3)
    mixed = random_mixed_phantoms(n, 16, 2, np.random.default_rng(seq))
    rng = np.random.default_rng(seq)
    ellipses = random_ellipse_phantoms((n + 1) // 2, 16, 2, rng)
    anatomy = random_anatomy_phantoms(n // 2, 16, 2, rng)
    assert mixed.shape == (n, 2, 16, 16) and mixed.dtype == np.float32
    assert np.array_equal(mixed[0::2], ellipses) and np.array_equal(mixed[1::2], anatomy)
    assert mixed.min() >= 0.0 and mixed.max() <= 1.0


def test_mixed_phantom_data_has_its_own_cache_file(tmp_path):
    small = dict(img_size=16, n_train=4, n_val=1, n_test=1, cache_dir=tmp_path)
    mixed = PhantomData(**small, kind="mixed")
    assert mixed.cache_path not in (PhantomData(**small).cache_path, PhantomData(**small, kind="anatomy").cache_path)
    seq = np.random.SeedSequence(0, spawn_key=(0,))
    expected = random_mixed_phantoms(4, 16, 1, np.random.default_rng(seq))
    assert torch.equal(mixed.split("train").tensors["x"], torch.from_numpy(expected))
