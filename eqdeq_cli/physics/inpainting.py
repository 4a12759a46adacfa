"""Inpainting: a fixed random pixel mask."""
from __future__ import annotations

import torch

from .base import LinearPhysics, NoiseModel


class Inpainting(LinearPhysics):
    r"""Pixel masking :math:`y = M \odot x` with a 0/1 mask ``M`` of shape ``(H, W)``.

    ``M`` keeps exactly ``round(keep_fraction · H · W)`` pixels, chosen by a random
    permutation from ``seed``; the same mask applies to every channel and sample.
    Measurements have the image's shape (zero at dropped pixels). ``A`` is an orthogonal
    projection: ``Aᵀ = A``, ``A_dagger = A_adjoint``, ``‖A‖ = 1`` (if any pixel is kept).

    Example:
        >>> op = Inpainting(img_size=8, keep_fraction=0.5)
        >>> int(op.mask.sum())
        32
    """

    def __init__(self, *, img_size: int = 64, channels: int = 1, keep_fraction: float = 0.7,
                 seed: int = 0, noise: NoiseModel | None = None) -> None:
        super().__init__(noise)
        if not 0.0 <= float(keep_fraction) <= 1.0:
            raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction!r}")
        if int(img_size) < 1 or int(channels) < 1:
            raise ValueError(f"img_size and channels must be ≥ 1, got img_size={img_size!r}, channels={channels!r}")
        n = int(img_size)
        self.img_size, self.channels, self.keep_fraction = n, int(channels), float(keep_fraction)
        self.img_shape = (self.channels, n, n)
        self.meas_shape = self.img_shape
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        kept = torch.randperm(n * n, generator=g)[: int(round(self.keep_fraction * n * n))]
        mask = torch.zeros(n * n)
        mask[kept] = 1.0
        self.register_buffer("mask", mask.reshape(n, n))

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        return self.mask.to(device=like.device, dtype=like.dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        return x * self._mask(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_measurement(y)
        return y * self._mask(y)

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        return self.A_adjoint(y)

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | float,
                  n_iter: int = 20, tol: float = 1e-6) -> torch.Tensor:
        r"""Closed form :math:`x = (M\odot y + z/\gamma) / (M + 1/\gamma)` (pixel-wise)."""
        self.check_image(z)
        mask = self._mask(z)
        return (self.A_adjoint(y) + z / gamma) / (mask + 1.0 / gamma)

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, channels={self.channels}, keep_fraction={self.keep_fraction}"
