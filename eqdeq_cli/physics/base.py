"""Base classes for linear measurement operators and noise models.

A physics object models ``y = N(A x)`` for images ``x`` of shape ``(B, C, H, W)``.
Subclasses fill in :meth:`LinearPhysics.A`, :meth:`LinearPhysics.A_adjoint` and,
when a fast approximate inverse exists, :meth:`LinearPhysics.A_dagger`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


class NoiseModel(nn.Module):
    """Noise applied to clean measurements ``A x``.

    Attributes read by the losses (SURE / REI): ``sigma`` (Gaussian standard
    deviation, 0 when absent) and ``gain`` (Poisson gain, 0 when absent).
    """

    sigma: float = 0.0
    gain: float = 0.0

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class NoNoise(NoiseModel):
    """Noiseless measurements: returns its input unchanged."""

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return y


class LinearPhysics(nn.Module):
    r"""A linear forward operator with its exact adjoint and an approximate inverse.

    Shapes: images ``(B, C, H, W)`` with ``(C, H, W) == self.img_shape``; measurements
    have an operator-specific shape ``(B,) + self.meas_shape``.

    Subclasses must implement :meth:`A` and :meth:`A_adjoint` so that
    :math:`\langle A x, y\rangle = \langle x, A^\top y\rangle` to rounding error.
    """

    img_shape: tuple[int, int, int]
    meas_shape: tuple[int, ...]

    def __init__(self, noise: NoiseModel | None = None) -> None:
        super().__init__()
        self.noise = noise if noise is not None else NoNoise()

    # -- the operator -------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """Fast approximate inverse; defaults to the adjoint."""
        return self.A_adjoint(y)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy measurements ``N(A x)``."""
        return self.noise(self.A(x), generator=generator)

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        return self.A_adjoint(self.A(x))

    # -- helpers shared by every operator --------------------------------------
    def check_image(self, x: torch.Tensor) -> None:
        """Raise a clear ``ValueError`` if ``x`` is not a batch of images this operator accepts."""
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.img_shape):
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {', '.join(map(str, self.img_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def check_measurement(self, y: torch.Tensor) -> None:
        if tuple(y.shape[1:]) != tuple(self.meas_shape):
            raise ValueError(
                f"{type(self).__name__} expects measurements of shape (B, {', '.join(map(str, self.meas_shape))}), "
                f"got {tuple(y.shape)}"
            )

    @torch.no_grad()
    def norm(self, n_iter: int = 50, seed: int = 0, dtype: torch.dtype = torch.float64) -> float:
        """Spectral norm ``‖A‖₂`` estimated by power iteration on ``AᵀA``."""
        device = _module_device(self)
        g = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn((1,) + tuple(self.img_shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
        x = x / x.norm()
        lam = 0.0
        for _ in range(n_iter):
            z = self.AtA(x)
            lam = float(z.norm())
            if lam == 0.0:
                return 0.0
            x = z / lam
        return math.sqrt(lam)

    @torch.no_grad()
    def mean_eigenvalue(self, n_probes: int = 8, seed: int = 0) -> float:
        r"""Hutchinson estimate of ``trace(AᵀA) / n`` (n = number of image pixels × channels).

        This is the natural scale of the data term ``‖A x − y‖²`` relative to an
        image-domain term such as the EI loss ``‖x₃ − x₂‖²``.
        """
        device = _module_device(self)
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn((n_probes,) + tuple(self.img_shape), generator=g, dtype=torch.float64)
        z = z.to(device=device, dtype=torch.float32)
        n = z[0].numel()
        return float(self.A(z).pow(2).sum() / (n_probes * n))

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | float,
                  n_iter: int = 20, tol: float = 1e-6) -> torch.Tensor:
        r"""``argmin_x ½‖A x − y‖² + 1/(2γ)‖x − z‖²`` by conjugate gradients on
        ``(AᵀA + I/γ) x = Aᵀy + z/γ``. Subclasses with a closed form override this.
        ``gamma`` is a scalar or a tensor broadcastable to ``z``.
        """
        rhs = self.A_adjoint(y) + z / gamma
        return conjugate_gradient(lambda v: self.AtA(v) + v / gamma, rhs, x0=z, n_iter=n_iter, tol=tol)


def conjugate_gradient(op: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       x0: torch.Tensor | None = None, n_iter: int = 20, tol: float = 1e-6) -> torch.Tensor:
    """Solve ``op(x) = b`` for a symmetric positive-definite ``op``, batched over dim 0.

    Each sample has its own step sizes; iteration stops when every sample's relative
    residual is below ``tol`` or after ``n_iter`` steps. Differentiable by autograd.
    """
    dims = tuple(range(1, b.ndim))
    x = torch.zeros_like(b) if x0 is None else x0
    r = b - op(x)
    p = r
    rs = (r * r).sum(dim=dims, keepdim=True)
    b_norm2 = (b * b).sum(dim=dims, keepdim=True).clamp_min(1e-30)
    for _ in range(n_iter):
        if bool((rs <= tol**2 * b_norm2).all()):
            break
        Ap = op(p)
        alpha = rs / (p * Ap).sum(dim=dims, keepdim=True).clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum(dim=dims, keepdim=True)
        p = r + (rs_new / rs.clamp_min(1e-30)) * p
        rs = rs_new
    return x


def _module_device(module: nn.Module) -> torch.device:
    for t in list(module.buffers()) + list(module.parameters()):
        return t.device
    return torch.device("cpu")
