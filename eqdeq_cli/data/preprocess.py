"""Image preprocessing shared by the readers: normalisation, centre crop, area resize, checks.

All functions take batches ``(N, C, H, W)`` (or ``(N, H, W)`` where noted) and return
new tensors; none of them modifies its input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORMALIZE_MODES: tuple[str, ...] = ("none", "minmax", "max")


def check_normalize(mode: str) -> str:
    """Return ``mode`` if it is a known normalisation, else raise a ``ValueError`` listing them."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"unknown normalize={mode!r}; valid values are {', '.join(map(repr, NORMALIZE_MODES))}")
    return mode


def normalize(x: torch.Tensor, mode: str, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    r"""Normalise ``x`` over ``dims`` (default: all but the first, i.e. per sample).

    * ``"none"``: unchanged.
    * ``"minmax"``: :math:`(x - \min x) / (\max x - \min x)`, into [0, 1]; a constant
      sample becomes 0.
    * ``"max"``: :math:`x / \max |x|`, so the largest magnitude is 1; an all-zero sample
      stays 0.
    """
    check_normalize(mode)
    if mode == "none":
        return x
    dims = tuple(range(1, x.ndim)) if dims is None else dims
    if mode == "max":
        scale = x.abs().amax(dim=dims, keepdim=True)
        return x / torch.where(scale > 0, scale, torch.ones_like(scale))
    lo = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - lo
    return (x - lo) / torch.where(span > 0, span, torch.ones_like(span))


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size × size`` window of the last two dimensions (``(…, H, W)``).

    Offsets follow the fastMRI convention ``(H - size) // 2``. Raises ``ValueError`` if the
    image is smaller than ``size``.
    """
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"cannot centre-crop {size}x{size} from images of size {h}x{w}; "
                         f"choose a crop size <= {min(h, w)}")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def area_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample ``(N, C, H, W)`` to ``size × size`` by area averaging (each output pixel
    is the mean of the input pixels it covers); identity when already that size."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="area")


def complex_to_channels(x: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Real and imaginary parts of a complex tensor, stacked as two channels at ``channel_dim``."""
    return torch.stack([x.real, x.imag], dim=channel_dim)


def check_finite(x: torch.Tensor, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if ``x`` holds NaN or infinite values."""
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.reshape(bad.shape[0], -1).any(dim=1).nonzero()[0])
        raise ValueError(f"{where} holds {int(bad.sum())} non-finite values (NaN or inf), the first in sample "
                         f"{first}; every value must be finite")


#: How far images may stray outside ``[0, data_range]`` (a fraction of it): resampling and
#: interpolation overshoot a little, a different scale does not.
RANGE_TOLERANCE = 0.01
#: The smallest peak accepted, as a fraction of ``data_range``: a peak 10 times below the
#: range inflates every PSNR by 20 dB.
MIN_PEAK_FRACTION = 0.1


def check_value_range(x: torch.Tensor, data_range: float, where: str, *, signed: bool = False,
                      fix: str = "data.normalize: max") -> None:
    r"""Raise ``ValueError`` unless images ``x`` ``(N, C, H, W)`` lie on the scale ``[0, data_range]``.

    PSNR and SSIM take ``data_range`` as the images' range, reconstructions are clamped to
    ``[0, data_range]``, and noise levels are relative to it (see the noise models), so
    images on another scale give numbers that are wrong by a constant, not noisy: uint16
    data in [0, 4095] scored −63 dB, fastMRI volumes without normalisation (peak ~1e-4)
    80 dB too high. Refused: a value above ``data_range·(1 + RANGE_TOLERANCE)``, a peak
    ``max |x|`` below ``data_range·MIN_PEAK_FRACTION``, and (unless ``signed``: real and
    imaginary parts of complex images) a value below ``−data_range·RANGE_TOLERANCE``.
    The one-line message names ``where``, the range found, and the two remedies: ``fix``
    (how this reader rescales its images) or ``evaluation.data_range``.
    """
    lo, hi = float(x.amin()), float(x.amax())
    peak = max(abs(lo), abs(hi))
    tol = RANGE_TOLERANCE * data_range
    if hi <= data_range + tol and peak >= MIN_PEAK_FRACTION * data_range and (signed or lo >= -tol):
        return
    remedy = f"set {fix}" if fix else "rescale the images when writing the file"
    raise ValueError(f"{where} holds values in [{lo:.4g}, {hi:.4g}] but evaluation.data_range={data_range:g} "
                     f"(PSNR/SSIM, the clamp of reconstructions and the noise level assume images in "
                     f"[0, {data_range:g}]); {remedy}, or set evaluation.data_range to the data's range "
                     f"(e.g. {peak:.4g})")
