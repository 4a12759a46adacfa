"""Metrics agree with reference implementations and with their definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eqdeq_cli.engine.metrics import measurement_psnr, psnr, relative_error, ssim

structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity


def _phantom(n: int, gen: torch.Generator) -> torch.Tensor:
    """A disc with two inner ellipses on an n×n grid, values in [0, 1]."""
    t = torch.linspace(-1, 1, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    img = 0.8 * ((xx / 0.8) ** 2 + (yy / 0.7) ** 2 <= 1).double()
    for _ in range(2):
        c = torch.rand(2, generator=gen, dtype=torch.float64) * 0.6 - 0.3
        a, b = (torch.rand(2, generator=gen, dtype=torch.float64) * 0.25 + 0.05).tolist()
        img = img - 0.4 * (((xx - c[0]) / a) ** 2 + ((yy - c[1]) / b) ** 2 <= 1).double()
    return img.clamp(0, 1)


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float, win_size: int | None = None) -> float:
    return float(structural_similarity(
        a.double().numpy(), b.double().numpy(), data_range=data_range, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, channel_axis=0, win_size=win_size))


def test_psnr_matches_definition_per_sample():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=gen)
    noise = torch.randn(3, 1, 8, 8, generator=gen) * torch.tensor([0.01, 0.1, 0.3]).view(3, 1, 1, 1)
    out = psnr(x + noise, x, data_range=2.0)
    assert out.shape == (3,)
    expected = [10 * math.log10(4.0 / float(n.pow(2).mean())) for n in noise]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-4)
    assert out[0] > out[1] > out[2]
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_does_not_clamp():
    x = torch.zeros(1, 1, 4, 4)
    assert torch.allclose(psnr(x + 2.0, x), torch.tensor([10 * math.log10(1 / 4.0)]))


@pytest.mark.parametrize("data_range", [1.0, 2.5])
def test_ssim_matches_skimage_on_random_and_phantom_images(data_range):
    gen = torch.Generator().manual_seed(1)
    clean = torch.stack([_phantom(40, gen) for _ in range(2)]).unsqueeze(1) * data_range
    rand = torch.rand(2, 1, 40, 40, generator=gen, dtype=torch.float64) * data_range
    x = torch.cat([clean, rand])
    x_hat = x + 0.1 * data_range * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    x_hat[1] = x[1]  # one perfect reconstruction
    ours = ssim(x_hat.float(), x.float(), data_range=data_range)
    ref = torch.tensor([_skimage_ssim(x_hat[i], x[i], data_range) for i in range(4)])
    assert ours.shape == (4,)
    assert torch.allclose(ours.double(), ref.double(), atol=1e-3), (ours, ref)
    assert ours[1] == pytest.approx(1.0, abs=1e-6)
    assert (ours[[0, 2, 3]] < 0.95).all()


def test_ssim_multichannel_is_channel_mean_and_small_window_matches_skimage():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 24, 20, generator=gen, dtype=torch.float64)
    x_hat = x + 0.2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ref11 = torch.tensor([_skimage_ssim(x_hat[i], x[i], 1.0) for i in range(2)], dtype=torch.float64)
    assert torch.allclose(ssim(x_hat, x), ref11, atol=1e-6)
    per_channel = torch.stack([ssim(x_hat[:, c:c + 1], x[:, c:c + 1]) for c in range(3)], dim=1)
    assert torch.allclose(ssim(x_hat, x), per_channel.mean(dim=1), atol=1e-12)
    # skimage truncates its Gaussian at 3.5 sigma: sigma 0.8 gives a 7-tap window
    ref7 = [float(structural_similarity(x_hat[i].numpy(), x[i].numpy(), data_range=1.0, gaussian_weights=True,
                                        sigma=0.8, use_sample_covariance=False, channel_axis=0)) for i in range(2)]
    assert torch.allclose(ssim(x_hat, x, window_size=7, sigma=0.8), torch.tensor(ref7, dtype=torch.float64), atol=1e-6)


def test_ssim_rejects_small_images_and_shape_mismatch():
    with pytest.raises(ValueError, match="smaller than the window"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 15))


def test_relative_error_and_measurement_psnr():
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(2, 30, generator=gen)
    y_hat = y.clone()
    y_hat[0] += 0.1 * y[0]
    rel = relative_error(y_hat, y)
    assert torch.allclose(rel, torch.tensor([0.1, 0.0]), atol=1e-6)
    mp = measurement_psnr(y_hat, y)
    expected = 10 * math.log10(float(y[0].abs().max() ** 2) / float((0.1 * y[0]).pow(2).mean()))
    assert mp[0].item() == pytest.approx(expected, rel=1e-5)
    assert torch.isinf(mp[1])
    yc = torch.randn(2, 5, generator=gen, dtype=torch.complex64)
    assert torch.allclose(relative_error(2 * yc, yc), torch.ones(2))


def test_metrics_keep_device_and_batch():
    x = torch.rand(2, 2, 16, 16, dtype=torch.float64)
    for out in (psnr(x * 0.9, x), ssim(x * 0.9, x)):
        assert out.shape == (2,) and out.device == x.device and np.isfinite(out.numpy()).all()
