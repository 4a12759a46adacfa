"""Image-quality and measurement-consistency metrics, per sample, in pure torch.

Every function takes batches ``(B, C, H, W)`` (measurement helpers accept any
``(B, ...)``) and returns a tensor of shape ``(B,)`` on the input's device, so the
caller decides how to reduce (mean over a test set, per-sample CSV rows, ...).

The metrics are computed on the values they are given: nothing is clamped here.
:func:`compared_images` applies the evaluation protocol first (magnitudes of complex
images, reconstruction clamped to ``[0, data_range]``), and evaluation reports PSNR capped
at :data:`PSNR_CAP_DB`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "gaussian_window", "relative_error", "measurement_psnr", "magnitude",
           "compared_images", "PSNR_CAP_DB"]

#: Largest PSNR evaluation reports, in dB. A perfect sample scores ``+inf``, which would make
#: the mean over a split ``+inf`` whatever the other samples score; and beyond about 120 dB
#: (RMS error 1e-6 of the range) the number measures float32 rounding, not the reconstruction
#: (16-bit quantisation of the data alone is 107 dB). Capped samples count at this value.
PSNR_CAP_DB = 120.0


def _check_pair(x_hat: torch.Tensor, x: torch.Tensor, name: str) -> None:
    if x_hat.shape != x.shape:
        raise ValueError(f"{name}: x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected a batch (B, ...), got shape {tuple(x.shape)}")


def _per_sample_sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0, max_db: float | None = None) -> torch.Tensor:
    r"""Peak signal-to-noise ratio in dB, per sample.

    .. math:: \mathrm{PSNR} = 10 \log_{10} \frac{R^2}{\frac1n \lVert \hat x - x \rVert_2^2}

    with ``R = data_range`` and ``n`` the number of values per sample (``C·H·W``).
    Shapes: ``x_hat``, ``x`` of shape ``(B, ...)``; returns ``(B,)``. A perfect
    reconstruction gives ``+inf``, or ``max_db`` when given (values above it are capped;
    evaluation passes :data:`PSNR_CAP_DB`). Computed in at least float32 precision.
    """
    _check_pair(x_hat, x, "psnr")
    if data_range <= 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range}")
    diff = (x_hat - x).to(torch.promote_types(x.dtype, torch.float32))
    mse = diff.pow(2).reshape(diff.shape[0], -1).mean(dim=1)
    out = 10.0 * torch.log10(data_range**2 / mse)
    return out if max_db is None else out.clamp_max(max_db)


def magnitude(x: torch.Tensor) -> torch.Tensor:
    r"""Magnitude :math:`\sqrt{\Re^2 + \Im^2}` of complex images stored as 2 channels.

    Shapes: ``(B, 2, H, W)`` (real, imaginary) → ``(B, 1, H, W)``. Raises ``ValueError``
    for another channel count.
    """
    if x.ndim != 4 or x.shape[1] != 2:
        raise ValueError(f"magnitude: expected complex images (B, 2, H, W), got shape {tuple(x.shape)}")
    return torch.linalg.vector_norm(x, dim=1, keepdim=True)


def compared_images(x_hat: torch.Tensor, x: torch.Tensor, data_range: float, *,
                    complex_images: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair of images that PSNR and SSIM compare under the evaluation protocol.

    Complex images (``complex_images``: 2 channels, real and imaginary parts) are compared
    as magnitude images, as fastMRI evaluates them (Zbontar et al. 2018): a global phase
    is not an error, and signed real and imaginary parts have no ``[0, R]`` range. Then
    the reconstruction is clamped to ``[0, data_range]``; the reference is left as it is.

    Shapes: ``(B, C, H, W)`` each; returns ``(B, C, H, W)``, or ``(B, 1, H, W)`` for
    complex images.
    """
    _check_pair(x_hat, x, "compared_images")
    if complex_images:
        x_hat, x = magnitude(x_hat), magnitude(x)
    return x_hat.clamp(0, data_range), x


def gaussian_window(window_size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``window_size`` taps (odd), as ``scipy.ndimage`` builds it."""
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = window_size // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def ssim(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0, window_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    r"""Structural similarity (Wang et al. 2004) with a Gaussian window, per sample.

    Local statistics use a separable Gaussian window ``w`` (``window_size`` taps,
    standard deviation ``sigma`` pixels) and population (not sample) covariances:

    .. math::
        \mu_x = w * x,\quad \sigma_x^2 = w * x^2 - \mu_x^2,\quad
        \sigma_{xy} = w * (x y) - \mu_x \mu_y,

        S = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
                 {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
        \quad C_1 = (k_1 R)^2,\ C_2 = (k_2 R)^2.

    The SSIM is the mean of ``S`` over the positions where the window fits inside the
    image (a border of ``window_size // 2`` pixels is ignored), then the mean over
    channels. With the defaults this equals
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=R, channel_axis=0)`` on each sample.
    ``window_size=7`` gives a smaller window (the Gaussian truncated at ±3 pixels).

    Shapes: ``(B, C, H, W)`` with ``H, W ≥ window_size``; returns ``(B,)``.
    Statistics are accumulated in float64 on CPU and at least float32 elsewhere.
    """
    _check_pair(x_hat, x, "ssim")
    if x.ndim != 4:
        raise ValueError(f"ssim: expected images (B, C, H, W), got shape {tuple(x.shape)}")
    if data_range <= 0:
        raise ValueError(f"ssim: data_range must be > 0, got {data_range}")
    B, C, H, W = x.shape
    if H < window_size or W < window_size:
        raise ValueError(f"ssim: images of size {H}×{W} are smaller than the window ({window_size}); "
                         f"use window_size ≤ {min(H, W)} (odd)")
    dtype = torch.float64 if x.device.type == "cpu" else torch.promote_types(x.dtype, torch.float32)
    a = x_hat.to(dtype).reshape(B * C, 1, H, W)
    b = x.to(dtype).reshape(B * C, 1, H, W)
    w = gaussian_window(window_size, sigma, dtype=dtype, device=x.device)
    wh, wv = w.view(1, 1, 1, -1), w.view(1, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # "valid" separable convolution
        return F.conv2d(F.conv2d(t, wh), wv)

    stats = blur(torch.cat([a, b, a * a, b * b, a * b], dim=1).reshape(-1, 1, H, W))
    stats = stats.reshape(B * C, 5, H - window_size + 1, W - window_size + 1)
    mu_a, mu_b, e_aa, e_bb, e_ab = stats.unbind(dim=1)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    per_channel = s_map.reshape(B, C, -1).mean(dim=2)
    return per_channel.mean(dim=1).to(torch.promote_types(x.dtype, torch.float32))


def relative_error(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""Relative error per sample, ``‖a − b‖₂ / ‖b‖₂`` (``b`` is the reference).

    Shapes: ``(B, ...)`` each; returns ``(B,)``. ``eps`` guards a zero reference.
    Used for measurement consistency ``‖A x̂ − y‖ / ‖y‖`` when no ground truth exists.
    """
    _check_pair(a, b, "relative_error")
    num = _per_sample_sum((a - b).abs().pow(2)).sqrt()
    den = _per_sample_sum(b.abs().pow(2)).sqrt()
    return num / den.clamp_min(eps)


def measurement_psnr(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""PSNR of re-simulated measurements against observed ones, per sample, in dB.

    .. math:: 10 \log_{10} \frac{\max_i |y_i|^2}{\frac1m \lVert \hat y - y \rVert_2^2}

    The peak is taken per sample from the observed ``y`` (measurements have no fixed
    range). Typical use without ground truth: ``measurement_psnr(physics.A(x_hat), y)``.
    Note that with noisy ``y`` a perfect reconstruction scores the measurement SNR,
    not ``+inf``: higher than that means fitting the noise.
    Shapes: ``(B, ...)`` each; returns ``(B,)``.
    """
    _check_pair(y_hat, y, "measurement_psnr")
    diff = (y_hat - y).abs().pow(2).reshape(y.shape[0], -1).mean(dim=1)
    peak = y.abs().reshape(y.shape[0], -1).amax(dim=1).pow(2)
    return 10.0 * torch.log10(peak / diff)

