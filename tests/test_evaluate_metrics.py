"""Evaluation follows the field's protocol: complex images are compared as magnitudes and a
perfect sample cannot make a split's mean PSNR infinite."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from eqdeq_cli.data import TensorDictDataset
from eqdeq_cli.deq import DEQ, ProxGradMap, fixed_point_solve
from eqdeq_cli.engine.evaluate import evaluate
from eqdeq_cli.engine.metrics import PSNR_CAP_DB, compared_images, psnr
from eqdeq_cli.physics import MRICartesian


def _complex_phantom(n: int, phase_deg: float) -> torch.Tensor:
    """A disc of magnitudes in [0, 1] with one global phase, as 2 channels (real, imaginary)."""
    t = torch.linspace(-1, 1, n)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    mag = 0.9 * (xx**2 + (yy / 0.8) ** 2 <= 0.7).float() + 0.1
    phase = math.radians(phase_deg)
    return torch.stack([mag * math.cos(phase), mag * math.sin(phase)])[None]


def _full_mask(tmp_path, n: int) -> str:
    path = tmp_path / "full.npy"
    np.save(path, np.ones(n))
    return str(path)


@pytest.mark.parametrize("phase_deg", [0.0, 135.0, 180.0])
def test_fully_sampled_complex_image_scores_the_cap_at_any_global_phase(tmp_path, phase_deg):
    n = 16
    physics = MRICartesian(img_size=n, channels=2, mask=_full_mask(tmp_path, n))
    assert physics.complex_images
    x = _complex_phantom(n, phase_deg)
    y = physics.A(x)
    assert torch.allclose(physics.A_dagger(y), x, atol=1e-6)
    deq = DEQ(ProxGradMap(nn.Identity(), physics), grad="jfb",
              forward_solver=functools.partial(fixed_point_solve, max_iter=3, tol=1e-6))
    data = TensorDictDataset({"x": x, "y": y})
    m = evaluate(deq, data, batch_size=1, data_range=1.0, device=torch.device("cpu"), n_images=0).metrics
    assert m["psnr_init"] == pytest.approx(PSNR_CAP_DB)
    assert m["psnr"] == pytest.approx(PSNR_CAP_DB)
    assert m["ssim_init"] == pytest.approx(1.0, abs=1e-5)
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)


def test_complex_images_are_compared_as_magnitudes():
    x = _complex_phantom(8, 135.0)
    noisy = x * 1.1  # magnitude error 10 % of the magnitude, phase unchanged
    a, b = compared_images(noisy, x, 1.0, complex_images=True)
    assert a.shape == b.shape == (1, 1, 8, 8)
    mag = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    assert torch.allclose(b, mag)
    assert torch.allclose(a, (1.1 * mag).clamp(0, 1))
    # the real-valued protocol clamps each channel: signed parts are destroyed
    a_real, _ = compared_images(x, x, 1.0)
    assert (a_real >= 0).all() and not torch.allclose(a_real, x)


def test_a_perfect_sample_is_capped_not_infinite():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x_hat = x.clone()
    x_hat[1] += 0.1
    out = psnr(x_hat, x, 1.0, max_db=PSNR_CAP_DB)
    assert out[0] == PSNR_CAP_DB
    assert out[1] == pytest.approx(20.0, abs=1e-4)
    assert float(out.mean()) == pytest.approx((PSNR_CAP_DB + 20.0) / 2, abs=1e-4)
