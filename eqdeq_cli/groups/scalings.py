r"""Downscalings of images about a random centre, optionally followed by a rotation."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..utils.checks import as_list, is_finite_real
from .base import Group, check_images, disc_mask, randint
from .rotations import _fourier_rotate


class Scalings(Group):
    r"""Downscalings by a factor ``s ≤ 1`` about a random centre, one element per sample
    (the scale transforms of scale-equivariant imaging: Scanvic, Davies, Abry, Tachella,
    "Self-supervised learning for image super-resolution and deblurring", arXiv:2312.11232).

    ``T_g x`` shrinks ``x`` (``H × W``) to ``round(s H) × round(s W)`` pixels (bilinear with
    antialiasing, so the smaller image is a low-pass version, not an aliased one) and places it
    on a zero image. Its centre is moved from the image centre by ``(1 − s) R (o_y, o_x)``,
    ``R = min(H, W)/2`` and ``(o_y, o_x)`` uniform in the unit disc, so whatever lay in the disc
    inscribed in the image stays in it (a CT scan measures that disc). With ``max_angle > 0``
    the result is then rotated about the image centre by an angle uniform in
    ``[-max_angle, max_angle]`` degrees, resampled in Fourier space as
    ``Rotations(interpolation="fourier")``.

    Why it helps an equivariant-imaging loss: shrinking an image moves its fine detail to lower
    spatial frequencies, which a sparse-view scan or an undersampled Fourier mask measures more
    densely, so the transformed reconstructions show the loss detail that ``A`` hides.

    Elements ``g`` are ``(B, 4)`` float64 rows ``(s, o_y, o_x, angle in degrees)``.
    Downscaling loses detail, so these transforms are not a group in the strict sense:
    :meth:`apply_inverse` (rotate back, crop the window, upscale bilinearly) recovers only the
    low-pass image.

    Args:
        factors: the scale factors drawn (uniformly), each in ``(0, 1]``.
        max_angle: largest rotation angle in degrees, in ``[0, 180]``; 0: no rotation.

    Both defaults are those of ``configs/group/scalings.yaml``.

    Raises:
        ValueError: an empty ``factors``, a factor outside ``(0, 1]``, an angle outside
            ``[0, 180]``; when applied, a factor (drawn or not) that shrinks the image below one pixel,
            a non-square image with ``max_angle > 0``, or elements that are not ``(B, 4)``.
    """

    def __init__(self, *, factors: Sequence[float] = (0.5, 0.75), max_angle: float = 180.0) -> None:
        values = as_list(factors)
        if not values or any(not is_finite_real(f) or not 0 < f <= 1 for f in values):
            raise ValueError(f"Scalings: factors must be a non-empty list of scale factors in (0, 1], got {factors!r}")
        if not is_finite_real(max_angle) or not 0 <= max_angle <= 180:
            raise ValueError(f"Scalings: max_angle must be a number of degrees in [0, 180] (0: no rotation), "
                             f"got {max_angle!r}")
        self.factors = tuple(float(f) for f in values)
        self.max_angle = float(max_angle)

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None,
               img_size: tuple[int, int] | None = None) -> torch.Tensor:
        idx = randint(0, len(self.factors), (batch_size,), generator, None)
        s = torch.tensor(self.factors, dtype=torch.float64)[idx]
        radius = torch.rand(batch_size, generator=generator, dtype=torch.float64).sqrt()
        phase = 2 * math.pi * torch.rand(batch_size, generator=generator, dtype=torch.float64)
        angle = (2 * torch.rand(batch_size, generator=generator, dtype=torch.float64) - 1) * self.max_angle
        g = torch.stack([s, radius * torch.sin(phase), radius * torch.cos(phase), angle], dim=1)
        return g.to(device or "cpu")

    def energy_gain(self) -> float:
        """The mean of ``s²`` over ``factors``: shrinking by ``s`` keeps the values and
        multiplies the area by ``s²``."""
        return sum(f * f for f in self.factors) / len(self.factors)

    def field_of_view(self, height: int, width: int, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """Rotated elements move the corners out of the image: the inscribed disc stays."""
        return disc_mask(height, width, device=device, dtype=dtype) if self.max_angle > 0 else None

    def apply(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        windows = self._windows(x, g)
        h, w = x.shape[-2:]
        out = []
        for i, (top, left, hh, ww) in enumerate(windows):
            small = F.interpolate(x[i:i + 1], size=(hh, ww), mode="bilinear", antialias=True, align_corners=False)
            out.append(F.pad(small, (left, w - ww - left, top, h - hh - top)))
        y = torch.cat(out)
        return self._rotate(y, g, inverse=False)

    def apply_inverse(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        windows = self._windows(x, g)
        x = self._rotate(x, g, inverse=True)
        h, w = x.shape[-2:]
        out = [F.interpolate(x[i:i + 1, :, top:top + hh, left:left + ww], size=(h, w), mode="bilinear",
                             align_corners=False)
               for i, (top, left, hh, ww) in enumerate(windows)]
        return torch.cat(out)

    def _windows(self, x: torch.Tensor, g: torch.Tensor) -> list[tuple[int, int, int, int]]:
        """``(top, left, height, width)`` of each sample's shrunk image."""
        check_images("Scalings", x, g)
        if g.ndim != 2 or g.shape[1] != 4:
            raise ValueError(f"Scalings expects elements of shape (B, 4) = (factor, o_y, o_x, angle), "
                             f"got {tuple(g.shape)}")
        h, w = x.shape[-2:]
        smallest = min(self.factors)
        if round(smallest * h) < 1 or round(smallest * w) < 1:
            # checked for every factor, not only the drawn ones, so a bad list fails on first use
            raise ValueError(f"Scalings: factor {smallest:g} shrinks a {h}×{w} image below one pixel; "
                             f"use factors of at least {0.5 / min(h, w):.3g} (0.5 / {min(h, w)} pixels)")
        radius = min(h, w) / 2
        windows = []
        for s, oy, ox, _ in g.detach().to("cpu", torch.float64).tolist():
            hh, ww = max(round(s * h), 1), max(round(s * w), 1)
            top = round((h - hh) / 2 + (1 - s) * radius * oy)
            left = round((w - ww) / 2 + (1 - s) * radius * ox)
            windows.append((min(max(top, 0), h - hh), min(max(left, 0), w - ww), hh, ww))
        return windows

    def _rotate(self, x: torch.Tensor, g: torch.Tensor, *, inverse: bool) -> torch.Tensor:
        if self.max_angle == 0:
            return x
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"Scalings with max_angle > 0 rotates square images only, got H×W = "
                             f"{x.shape[-2]}×{x.shape[-1]}; set max_angle=0")
        return _fourier_rotate(x, g[:, 3].to(torch.float64), inverse=inverse)

    def __repr__(self) -> str:
        return f"Scalings(factors={list(self.factors)}, max_angle={self.max_angle})"
