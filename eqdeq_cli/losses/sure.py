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

In the norm of a symmetric measurement weight ``P`` (CT's ramp filter; ``preconditioner``),
Gaussian noise only, Stein's lemma gives the same kind of estimate of ``‖A f(y) − A x‖²_P``::

      ‖h(y) − y‖²_P − σ² trace(P) + 2σ² div(P h)(y),   div(P h) ≈ (P b)ᵀ (h(y + τb) − h(y)) / τ

scaled by ``c = trace(AᵀA) / trace(AᵀPA)`` like the weighted MC term.
"""
from __future__ import annotations

import torch

from ..groups import Group
from ..physics import LinearPhysics
from ..utils.checks import check_int, check_real
from ..utils.draws import randn_like
from .base import Reconstructor, WeightedDataTerm, dot, image_elements, sq_norm

#: The refusal of the weighted norm with Poisson noise (there is no weighted PURE).
WEIGHTED_POISSON = ("SURELoss: the ramp-weighted norm (loss.terms.sure.preconditioner, 'auto' on CT) is available "
                    "for Gaussian noise only, not PURE or PG-URE (Poisson noise): set "
                    "loss.terms.sure.preconditioner=none and map.preconditioner=none")


class SURELoss(WeightedDataTerm):
    r"""Stein's unbiased risk estimate of ``‖A x₁ − A x‖² / n``; replaces MC for noisy data.

    Args:
        weight: weight in the composite loss.
        tau: finite-difference step in measurement units (for float32 reconstructions keep
            it well above 1e-4 of the measurements' scale).
        n_probes: Monte-Carlo probes averaged for the divergence (each adds calls of ``f``).
        preconditioner: ``"none"``, ``"ramp"`` or ``"auto"`` (``ramp`` on CT): estimate the
            error in the norm of the physics' measurement weight ``P``, as the weighted
            :class:`~eqdeq_cli.losses.MCLoss` measures the residual, to pair with a
            ramp-preconditioned map (Gaussian or no noise only).

    The estimator follows ``physics.noise``: :class:`~eqdeq_cli.physics.GaussianNoise` →
    SURE (``sigma``), :class:`~eqdeq_cli.physics.PoissonNoise` → PURE (``gain``),
    :class:`~eqdeq_cli.physics.PoissonGaussianNoise` → PG-URE (``gain``, ``sigma``);
    noiseless measurements reduce it to MC. The noise model says which applies
    (:meth:`~eqdeq_cli.physics.NoiseModel.risk_parameters`); others raise ``ValueError``.

    Raises:
        ValueError: a bad ``tau``, ``n_probes`` or ``preconditioner``; in :meth:`check` (at the
            trainer's start-up) or on first use, ``ramp`` with a physics without a measurement
            weight, or the weighted norm with Poisson noise.
    """

    key = "loss.terms.sure.preconditioner"

    def __init__(self, *, weight: float = 1.0, tau: float = 1e-3, n_probes: int = 1,
                 preconditioner: str = "none") -> None:
        super().__init__(weight, preconditioner)
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
        if self.weighted(physics):
            if gain > 0:
                raise ValueError(WEIGHTED_POISSON)
            r = h - y
            risk = dot(r, physics.precondition(r)) - sigma2 * physics.precondition_trace()
            if sigma2 > 0:
                risk = risk + 2 * sigma2 * self._divergence(y, h, f, physics, physics.precondition, generator)
            return self.weight_scale(physics) * risk / image_elements(x1)
        m = y[0].numel()
        risk = sq_norm(h - y) - m * sigma2
        if gain > 0:
            risk = risk - gain * y.reshape(y.shape[0], -1).sum(dim=1)
        if sigma2 > 0 or gain > 0:
            risk = risk + 2 * self._derivative_terms(y, h, f, physics, sigma2, gain, generator)
        return risk / image_elements(x1)

    def check(self, physics: LinearPhysics) -> None:
        """Raises ``ValueError`` for the weighted norm with Poisson noise (no weighted PURE), or
        ``ramp`` with a physics without a measurement weight."""
        if self.weighted(physics) and float(physics.noise.risk_parameters()[0]) > 0:
            raise ValueError(WEIGHTED_POISSON)

    def _divergence(self, y: torch.Tensor, h: torch.Tensor, f: Reconstructor, physics: LinearPhysics,
                    weigh, generator: torch.Generator | None) -> torch.Tensor:
        """Monte-Carlo ``Σᵢ ∂ᵢ(W h)ᵢ`` for a symmetric ``W`` (``weigh``), per sample."""
        total = torch.zeros(y.shape[0], dtype=h.dtype, device=h.device)
        for _ in range(self.n_probes):
            b = randn_like(y, generator)
            total = total + dot(weigh(b), physics.A(f(y + self.tau * b)) - h) / self.tau
        return total / self.n_probes

    def _derivative_terms(self, y: torch.Tensor, h: torch.Tensor, f: Reconstructor, physics: LinearPhysics,
                          sigma2: float, gain: float, generator: torch.Generator | None) -> torch.Tensor:
        """Monte-Carlo ``Σᵢ wᵢ ∂ᵢhᵢ − γσ² Σᵢ ∂ᵢ²hᵢ`` with ``w = γy + σ²``, per sample."""
        weights = gain * y + sigma2
        if not (gain > 0 and sigma2 > 0):
            return self._divergence(y, h, f, physics, lambda b: weights * b, generator)
        tau = self.tau
        total = torch.zeros(y.shape[0], dtype=h.dtype, device=h.device)
        for _ in range(self.n_probes):
            b = randn_like(y, generator)
            h_plus = physics.A(f(y + tau * b))
            h_minus = physics.A(f(y - tau * b))
            total = total + dot(weights * b, h_plus - h_minus) / (2 * tau)
            second = 0.5 * dot(b * b - 1, h_plus + h_minus - 2 * h) / tau**2
            total = total - gain * sigma2 * second
        return total / self.n_probes

    def extra_repr(self) -> str:
        return (f"weight={self.weight!r}, tau={self.tau}, n_probes={self.n_probes}, "
                f"preconditioner={self.preconditioner!r}")
