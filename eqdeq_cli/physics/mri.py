"""Single-coil Cartesian MRI: masked, centred, orthonormal 2-D Fourier transform."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import LinearPhysics, NoiseModel
from .masks import MASK_TYPES, line_mask, load_mask


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D DFT over the last two dimensions (DC at index ``n // 2``)."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (also its adjoint)."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, norm="ortho"), dim=(-2, -1))


def point_reflect(k: torch.Tensor) -> torch.Tensor:
    """``k[-ω]`` for centred k-space ``k[ω]`` (frequency negation on the last two dimensions)."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    k = torch.roll(torch.flip(k, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return torch.fft.fftshift(k, dim=(-2, -1))


class MRICartesian(LinearPhysics):
    r"""Cartesian MRI: :math:`y = M \odot F x`, ``F`` the centred orthonormal 2-D DFT.

    Images ``(B, C, H, W)`` with ``C = 2`` (real, imaginary parts of a complex image) or
    ``C = 1`` (a real image, imaginary part zero). Measurements ``(B, 2, H, W)``: real and
    imaginary parts of the masked k-space, zero off the mask.

    * ``C = 2``: :math:`A^\top y = F^H (M \odot y)`; :meth:`A_dagger` is the zero-filled
      inverse FFT (the pseudo-inverse, since ``F`` is unitary and ``M`` a 0/1 mask).
    * ``C = 1``: ``A`` maps real images to complex data, so
      :math:`A^\top y = \operatorname{Re} F^H (M \odot y)` and
      :math:`A^\top A = F^H \operatorname{diag}(M_s) F` with
      :math:`M_s(\omega) = (M(\omega) + M(-\omega))/2`. :meth:`A_dagger` is the real part of
      the zero-filled inverse FFT, corrected by :math:`M_s^{+}` on frequencies whose mirror
      is not sampled, i.e. the pseudo-inverse (equal to the plain zero-filled real part for
      point-symmetric masks).

    ``mask`` is ``"random"``, ``"equispaced"``, ``"gaussian"`` (line masks over columns, see
    :mod:`~eqdeq_cli.physics.masks`) or a path to a ``.npy``/``.pt``/``.h5`` file holding an
    ``(H, W)`` or ``(W,)`` 0/1 mask. The mask is the buffer ``self.mask`` of shape ``(H, W)``.
    ``‖A‖ = 1`` whenever the mask samples at least one frequency.
    """

    def __init__(self, *, img_size: int = 64, channels: int = 1, mask: str = "random",
                 acceleration: float = 4, center_fraction: float = 0.08, seed: int = 0,
                 noise: NoiseModel | None = None) -> None:
        super().__init__(noise)
        if channels not in (1, 2):
            raise ValueError(f"MRICartesian needs channels 1 (real image) or 2 (real, imaginary), got {channels!r}")
        if int(img_size) < 2:
            raise ValueError(f"img_size must be an integer ≥ 2, got {img_size!r}")
        n = int(img_size)
        self.img_size, self.channels = n, int(channels)
        self.complex_images = self.channels == 2
        self.img_shape = (self.channels, n, n)
        self.meas_shape = (2, n, n)
        if str(mask) in MASK_TYPES:
            columns = line_mask(str(mask), n, float(acceleration), float(center_fraction), int(seed))
            array = np.broadcast_to(columns[None, :].astype(np.float64), (n, n))
        else:
            array = load_mask(Path(str(mask)), n, n)
        self.mask_source = str(mask)
        mask_t = torch.tensor(np.ascontiguousarray(array), dtype=torch.float32)
        self.register_buffer("mask", mask_t)
        sym = 0.5 * (mask_t + point_reflect(mask_t))
        self._symmetric = bool(torch.equal(sym, mask_t))
        self.register_buffer("_mask_sym", sym)
        pinv = torch.where(sym > 0, 1.0 / sym.clamp_min(0.5), torch.zeros_like(sym))
        self.register_buffer("_mask_sym_pinv", pinv)

    @property
    def acceleration(self) -> float:
        """Realised acceleration ``H·W / (number of sampled k-space points)``."""
        return float(self.mask.numel() / self.mask.sum().clamp_min(1))

    # -- complex <-> channel helpers ------------------------------------------
    def _to_complex(self, x: torch.Tensor) -> torch.Tensor:
        imag = x[:, 1:2] if x.shape[1] == 2 else torch.zeros_like(x[:, :1])
        return torch.complex(x[:, :1], imag)

    def _to_image(self, z: torch.Tensor) -> torch.Tensor:
        return z.real if self.channels == 1 else torch.cat([z.real, z.imag], dim=1)

    def _mask(self, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
        return getattr(self, name).to(device=like.device, dtype=like.dtype)

    # -- the operator -------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Masked k-space ``(B, 2, H, W)`` (real, imaginary) of images ``(B, C, H, W)``."""
        self.check_image(x)
        k = fft2c(self._to_complex(x)) * self._mask(x)
        return torch.cat([k.real, k.imag], dim=1)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        r""":math:`F^H(M \odot y)` (``C = 2``) or its real part (``C = 1``)."""
        self.check_measurement(y)
        k = torch.complex(y[:, :1], y[:, 1:2]) * self._mask(y)
        return self._to_image(ifft2c(k))

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-filled inverse FFT (the pseudo-inverse; see the class docstring for ``C = 1``)."""
        x = self.A_adjoint(y)
        if self.channels == 2 or self._symmetric:
            return x
        return ifft2c(fft2c(self._to_complex(x)) * self._mask(y, "_mask_sym_pinv")).real

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | float,
                  n_iter: int = 20, tol: float = 1e-6) -> torch.Tensor:
        r"""Closed form: :math:`x = F^H\big[F(A^\top y + z/\gamma) / (M_e + 1/\gamma)\big]`.

        ``M_e = M`` for ``C = 2`` and ``M_s`` for ``C = 1`` (then the real part is taken).
        ``gamma`` must be a scalar or a per-sample tensor broadcastable to ``(B, 1, 1, 1)``;
        other shapes fall back to conjugate gradients.
        """
        if torch.is_tensor(gamma) and gamma.ndim > 0 and any(s != 1 for s in gamma.shape[1:]):
            return super().prox_data(z, y, gamma, n_iter=n_iter, tol=tol)
        self.check_image(z)
        rhs = self.A_adjoint(y) + z / gamma
        mask = self._mask(z, "mask" if self.channels == 2 else "_mask_sym")
        k = fft2c(self._to_complex(rhs)) / (mask + 1.0 / gamma)
        return self._to_image(ifft2c(k))

    def extra_repr(self) -> str:
        return (f"img_size={self.img_size}, channels={self.channels}, mask={self.mask_source!r}, "
                f"acceleration={self.acceleration:.3g}")
