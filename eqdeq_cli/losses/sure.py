r"""Unbiased estimates of the measurement-domain error ``‖A f(y) − A x‖²`` (robust EI).

With ``h(y) = A f(y)``, ``z = A x`` the clean measurements and ``m`` measurement
elements, the noise model of ``physics.noise`` picks the estimator:

* Gaussian ``y = z + σε`` (SURE)::

      ‖h(y) − y‖² − mσ² + 2σ² div h(y)

* Poisson ``y = γ·Poisson(z/γ)`` (PURE)::

      ‖h(y) − y‖² − γ 1ᵀy + 2γ Σᵢ yᵢ ∂ᵢhᵢ(y)

* Poisson-Gaussian ``y = γ·Poisson(z/γ) + σε`` (PG-URE)::

      ‖h(y) − y‖² − γ 1ᵀy − mσ² + 2 Σᵢ (γyᵢ + σ²) ∂ᵢhᵢ(y) − 2γσ² Σᵢ ∂ᵢ²hᵢ(y)

SURE is exactly unbiased; PURE and PG-URE are unbiased to first order in ``γ`` (exactly
for linear ``h``). The derivatives are Monte-Carlo finite differences with probes
``b ~ N(0, I)`` (``E[b bᵀ] = I``) and step ``τ`` (measurement units)::

      Σᵢ wᵢ ∂ᵢhᵢ   ≈ (w ⊙ b)ᵀ (h(y + τb) − h(y)) / τ               (Gaussian, Poisson)
      Σᵢ wᵢ ∂ᵢhᵢ   ≈ (w ⊙ b)ᵀ (h(y + τb) − h(y − τb)) / (2τ)        (Poisson-Gaussian)
      Σᵢ ∂ᵢ²hᵢ     ≈ ½ (b ⊙ b − 1)ᵀ (h(y + τb) + h(y − τb) − 2h(y)) / τ²

(``E[(bᵢ² − 1) bⱼ bₖ] = 2δᵢⱼₖ``). Each probe costs one extra call of ``f`` (two for
Poisson-Gaussian), differentiated like the first. Values are divided by ``n = C·H·W``.
"""
from __future__ import annotations

import torch

from ..groups import Group
from ..physics import LinearPhysics
from ..utils.checks import check_int, check_real
from ..utils.draws import randn_like
from .base import LossTerm, Reconstructor, dot, image_elements, sq_norm

class SURELoss(LossTerm):
    r"""Stein's unbiased risk estimate of ``‖A x₁ − A x‖² / n``; replaces MC for noisy data.

    Args:
        weight: weight in the composite loss.
        tau: finite-difference step in measurement units (for float32 reconstructions keep
            it well above 1e-4 of the measurements' scale).
        n_probes: Monte-Carlo probes averaged for the divergence (each adds calls of ``f``).

    The estimator follows ``physics.noise``: :class:`~eqdeq_cli.physics.GaussianNoise` →
    SURE (``sigma``), :class:`~eqdeq_cli.physics.PoissonNoise` → PURE (``gain``),
    :class:`~eqdeq_cli.physics.PoissonGaussianNoise` → PG-URE (``gain``, ``sigma``);
    noiseless measurements reduce it to MC. The noise model says which applies
    (:meth:`~eqdeq_cli.physics.NoiseModel.risk_parameters`); others raise ``ValueError``.
    """

    def __init__(self, *, weight: float = 1.0, tau: float = 1e-3, n_probes: int = 1) -> None:
        super().__init__(weight)
        check_real("SURELoss: tau", tau, low=0.0)
        check_int("SURELoss: n_probes", n_probes, 1)
        self.tau = float(tau)
        self.n_probes = n_probes

    def per_sample(self, *, y: torch.Tensor, x1: torch.Tensor, f: Reconstructor, physics: LinearPhysics,
                   group: Group | None, x: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
        gain, sigma = physics.noise.risk_parameters()
        gain, sigma2 = float(gain), float(sigma) ** 2
        h = physics.A(x1)
        m = y[0].numel()
        risk = sq_norm(h - y) - m * sigma2
        if gain > 0:
            risk = risk - gain * y.reshape(y.shape[0], -1).sum(dim=1)
        if sigma2 > 0 or gain > 0:
            risk = risk + 2 * self._derivative_terms(y, h, f, physics, sigma2, gain, generator)
        return risk / image_elements(x1)

    def _derivative_terms(self, y: torch.Tensor, h: torch.Tensor, f: Reconstructor, physics: LinearPhysics,
                          sigma2: float, gain: float, generator: torch.Generator | None) -> torch.Tensor:
        """Monte-Carlo ``Σᵢ wᵢ ∂ᵢhᵢ − γσ² Σᵢ ∂ᵢ²hᵢ`` with ``w = γy + σ²``, per sample."""
        tau = self.tau
        weights = gain * y + sigma2
        total = torch.zeros(y.shape[0], dtype=h.dtype, device=h.device)
        for _ in range(self.n_probes):
            b = randn_like(y, generator)
            h_plus = physics.A(f(y + tau * b))
            if gain > 0 and sigma2 > 0:
                h_minus = physics.A(f(y - tau * b))
                total = total + dot(weights * b, h_plus - h_minus) / (2 * tau)
                second = 0.5 * dot(b * b - 1, h_plus + h_minus - 2 * h) / tau**2
                total = total - gain * sigma2 * second
            else:
                total = total + dot(weights * b, h_plus - h) / tau
        return total / self.n_probes

    def extra_repr(self) -> str:
        return f"weight={self.weight!r}, tau={self.tau}, n_probes={self.n_probes}"
