"""MRICartesian masks and inverses, Inpainting, and the noise models."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from eqdeq_cli.physics import (GaussianNoise, Inpainting, MRICartesian, PoissonGaussianNoise,
                               PoissonNoise)
from eqdeq_cli.physics.masks import line_mask


def _randn(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- MRI ------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["random", "equispaced", "gaussian"])
def test_mri_A_A_dagger_is_identity_on_the_mask(mask):
    complex_op = MRICartesian(img_size=20, channels=2, mask=mask)
    y = _randn((2, 2, 20, 20), 0) * complex_op.mask
    assert torch.allclose(complex_op.A(complex_op.A_dagger(y)), y, atol=1e-12)
    # Real images: the data of any real image is reproduced (A A† is the projection onto range A).
    real_op = MRICartesian(img_size=20, channels=1, mask=mask, seed=5)
    y = real_op.A(_randn((2, 1, 20, 20), 1))
    assert torch.allclose(real_op.A(real_op.A_dagger(y)), y, atol=1e-12)


def test_mri_real_pseudo_inverse_for_asymmetric_mask():
    """For C = 1 and a mask whose mirror image differs, A† is still the pseudo-inverse."""
    op = MRICartesian(img_size=16, channels=1, mask="random", seed=0)
    assert not op._symmetric
    matrix = torch.stack([op.A(e.reshape(1, 1, 16, 16)).reshape(-1) for e in torch.eye(256, dtype=torch.float64)], 1)
    y = _randn((1, 2, 16, 16), 2) * op.mask
    expected = (torch.linalg.pinv(matrix) @ y.reshape(-1)).reshape(1, 1, 16, 16)
    assert torch.allclose(op.A_dagger(y), expected, atol=1e-10)


def test_mri_full_sampling_is_unitary_and_centred():
    op = MRICartesian(img_size=12, channels=2, acceleration=1)
    assert op.mask.min().item() == 1.0
    x = _randn((2, 2, 12, 12), 3)
    assert op.A(x).norm().item() == pytest.approx(x.norm().item(), rel=1e-12)
    assert torch.allclose(op.A_dagger(op.A(x)), x, atol=1e-12)
    const = torch.zeros(1, 2, 12, 12, dtype=torch.float64)
    const[:, 0] = 1.0
    k = op.A(const)
    assert k[0, 0, 6, 6].item() == pytest.approx(12.0) and k.abs().sum().item() == pytest.approx(12.0)


@pytest.mark.parametrize("kind", ["random", "gaussian", "equispaced"])
@pytest.mark.parametrize("width, acceleration, center_fraction", [(320, 4, 0.08), (368, 8, 0.04), (64, 4, 0.08)])
def test_line_masks_reproduce_acceleration_and_centre(kind, width, acceleration, center_fraction):
    mask = line_mask(kind, width, acceleration, center_fraction, seed=3)
    n_centre = round(width * center_fraction)
    start = (width - n_centre + 1) // 2
    assert mask[start:start + n_centre].all() and start <= width // 2 < start + n_centre
    tolerance = 0 if kind != "equispaced" else max(2, round(0.05 * width / acceleration))
    assert abs(int(mask.sum()) - round(width / acceleration)) <= tolerance
    if kind == "equispaced":  # regular spacing outside the centre block
        picked = np.flatnonzero(mask)
        for side in (picked[picked < start], picked[picked >= start + n_centre]):
            assert len(side) >= 2 and np.ptp(np.diff(side)) <= 1


def test_gaussian_mask_concentrates_near_the_centre():
    counts = np.zeros(256)
    for seed in range(40):
        counts += line_mask("gaussian", 256, 4, 0.0, seed)
    near, far = counts[128 - 32:128 + 32].mean(), np.concatenate([counts[:64], counts[192:]]).mean()
    assert near > 4 * far   # measured: 20.1 vs 3.1 lines per column


@pytest.mark.parametrize("kind", ["random", "gaussian", "equispaced"])
def test_masks_deterministic_from_seed(kind):
    a = MRICartesian(img_size=64, mask=kind, seed=7).mask
    assert torch.equal(a, MRICartesian(img_size=64, mask=kind, seed=7).mask)
    others = [MRICartesian(img_size=64, mask=kind, seed=s).mask for s in (8, 9, 10)]
    assert any(not torch.equal(a, o) for o in others)
    assert torch.equal(a, a[:1].expand(64, 64))  # line mask: identical rows


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".h5"])
@pytest.mark.parametrize("columns_only", [False, True])
def test_mask_from_file(tmp_path, suffix, columns_only):
    rng = np.random.default_rng(0)
    full = (rng.random((16, 16)) < 0.3).astype(np.float32)
    array = full[0] if columns_only else full
    path = tmp_path / f"mask{suffix}"
    if suffix == ".npy":
        np.save(path, array.astype(bool))
    elif suffix == ".pt":
        torch.save(torch.from_numpy(array), path)
    else:
        with h5py.File(path, "w") as f:
            f["mask"] = array
    op = MRICartesian(img_size=16, channels=2, mask=str(path))
    expected = np.broadcast_to(full[0], (16, 16)) if columns_only else full
    assert np.array_equal(op.mask.numpy(), expected)


def test_mask_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        MRICartesian(img_size=8, mask=str(tmp_path / "nope.npy"))
    with pytest.raises(ValueError, match="random, equispaced, gaussian"):
        MRICartesian(img_size=8, mask="radial")
    np.save(tmp_path / "wrong.npy", np.ones((8, 9)))
    with pytest.raises(ValueError, match=r"\(8, 9\).*expected \(8, 8\)"):
        MRICartesian(img_size=8, mask=str(tmp_path / "wrong.npy"))
    np.save(tmp_path / "values.npy", np.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="only 0 and 1"):
        MRICartesian(img_size=8, mask=str(tmp_path / "values.npy"))
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = np.ones(8), np.ones(8)
    with pytest.raises(KeyError, match="no dataset 'mask'"):
        MRICartesian(img_size=8, mask=str(tmp_path / "two.h5"))
    (tmp_path / "mask.h5").write_text("1 0 1 0 1 0 1 0\n")
    with pytest.raises(ValueError) as info:
        MRICartesian(img_size=8, mask=str(tmp_path / "mask.h5"))
    assert str(info.value) == f"mask file '{tmp_path / 'mask.h5'}' is not an HDF5 file (no HDF5 signature)"


@pytest.mark.parametrize("kwargs, error", [(dict(channels=3), "channels 1"), (dict(acceleration=0.5), "acceleration"),
                                           (dict(center_fraction=1.5), "center_fraction")])
def test_mri_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        MRICartesian(img_size=8, **kwargs)


# -- inpainting -----------------------------------------------------------------------
def test_inpainting_projection_and_keep_fraction():
    op = Inpainting(img_size=20, channels=3, keep_fraction=0.7, seed=1)
    assert op.mask.sum().item() == 280
    x = _randn((2, 3, 20, 20), 4)
    p = op.A_dagger(op.A(x))
    assert torch.equal(op.A_dagger(op.A(p)), p)                  # idempotent
    assert torch.equal(p[:, :, op.mask.bool()], x[:, :, op.mask.bool()])
    assert p[:, :, ~op.mask.bool()].abs().max().item() == 0.0
    assert torch.equal(op.A(x)[:, 0] == 0, op.A(x)[:, 2] == 0)    # same mask on every channel


def test_inpainting_mask_seeded():
    a = Inpainting(img_size=16, seed=3).mask
    assert torch.equal(a, Inpainting(img_size=16, seed=3).mask)
    assert not torch.equal(a, Inpainting(img_size=16, seed=4).mask)
    with pytest.raises(ValueError, match="keep_fraction"):
        Inpainting(img_size=16, keep_fraction=1.2)


# -- noise ------------------------------------------------------------------------------
def _gen(seed=0):
    return torch.Generator(device="cpu").manual_seed(seed)


def test_gaussian_noise_statistics_and_reproducibility():
    z = torch.full((200_000,), 0.5)
    noise = GaussianNoise(sigma=0.1)
    y = noise(z, generator=_gen())
    n = z.numel()
    assert abs(y.mean().item() - 0.5) < 5 * 0.1 / n**0.5
    assert y.var().item() == pytest.approx(0.01, rel=0.02)
    assert torch.equal(y, noise(z, generator=_gen()))
    assert not torch.equal(y, noise(z, generator=_gen(1)))
    assert noise.sigma == 0.1 and noise.gain == 0.0 and y.dtype == z.dtype


def test_poisson_noise_statistics_and_clamping():
    noise = PoissonNoise(gain=0.01)
    z = torch.full((200_000,), 0.3, dtype=torch.float64)
    y = noise(z, generator=_gen())
    assert y.mean().item() == pytest.approx(0.3, abs=5 * (0.003 / 200_000) ** 0.5)
    assert y.var().item() == pytest.approx(0.01 * 0.3, rel=0.02)
    assert torch.allclose(y / 0.01, (y / 0.01).round())          # integer counts × gain
    assert torch.equal(y, noise(z, generator=_gen()))
    assert torch.equal(noise(torch.full((10,), -1.0), generator=_gen()), torch.zeros(10))
    assert noise.gain == 0.01 and noise.sigma == 0.0


def test_poisson_gaussian_noise_statistics():
    noise = PoissonGaussianNoise(gain=0.02, sigma=0.05)
    z = torch.full((200_000,), 0.4, dtype=torch.float64)
    y = noise(z, generator=_gen(2))
    assert y.mean().item() == pytest.approx(0.4, abs=2e-3)
    assert y.var().item() == pytest.approx(0.02 * 0.4 + 0.05**2, rel=0.02)
    assert torch.equal(y, noise(z, generator=_gen(2)))


def test_noise_through_physics_forward():
    op = Inpainting(img_size=8, noise=GaussianNoise(sigma=0.2))
    x = torch.ones(2, 1, 8, 8)
    y = op(x, generator=_gen(5))
    assert torch.equal(y, op(x, generator=_gen(5)))
    assert (y - op.A(x)).std().item() == pytest.approx(0.2, rel=0.3)


@pytest.mark.parametrize("build, message", [
    (lambda: GaussianNoise(sigma=-0.1), "sigma"),
    (lambda: PoissonNoise(gain=0.0), "gain"),
    (lambda: PoissonGaussianNoise(gain=0.1, sigma=float("nan")), "sigma"),
    (lambda: PoissonGaussianNoise(gain=-1.0, sigma=0.1), "gain"),
])
def test_noise_parameter_validation(build, message):
    with pytest.raises(ValueError, match=message):
        build()
