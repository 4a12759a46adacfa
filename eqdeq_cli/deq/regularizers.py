r"""Regularisers of a DEQ's equilibrium, added to the training loss beside the solver.

A regulariser is built from the ``regularizer`` config group (``eqdeq train
regularizer=jacobian``) and called by the trainer once per training step with the fixed
points that step's DEQ calls reached (:meth:`~eqdeq_cli.deq.DEQ.pop_equilibria`). It
returns an unweighted scalar; the trainer adds ``weight ×`` that value to the loss and logs
it as ``loss_<name>``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..analysis._linalg import Linearization, bnorm, bnormalize, randn_like
from ..losses.base import sq_norm
from ..utils.checks import check_int, check_real
from ..utils.draws import randn_on_cpu
from .maps import MapContext

__all__ = ["JacobianPenalty", "SpectralPenalty"]


class JacobianPenalty(nn.Module):
    r"""Jacobian regularisation: a Hutchinson estimate of ``‖J‖_F² / n`` at the fixed point.

    Bai, Koltun and Kolter, "Stabilizing Equilibrium Models by Jacobian Regularization"
    (ICML 2021). With ``J = ∂T/∂z`` the Jacobian of the fixed-point map at ``z*`` and
    ``ε ~ N(0, I)``, ``E‖εᵀJ‖² = ‖J‖_F²``. The value is

    .. math::  R = \frac{1}{K\,P\,B} \sum_{k,p,b} \frac{\|\varepsilon_{kpb}^\top J_{kb}\|^2}{n}

    over the step's ``K`` DEQ calls (two for an EI loss), ``P = probes`` draws and the ``B``
    samples of each call, with ``n = C·H·W``. Its gradient reaches the map's parameters
    through a double backward pass (one extra map evaluation and vector–Jacobian product per
    call and probe). ``‖J‖_F² / n`` is the mean squared singular value of ``J``: pushing it
    down pulls the spectrum, and with it ``‖J‖₂`` (the ``lipschitz`` the trainer logs),
    below 1, so the forward and backward solves converge in fewer iterations. It bounds
    nothing: a large weight trades reconstruction quality for contraction.

    Args:
        weight: the factor of ``R`` in the training loss (> 0). The losses of this project
            are per-pixel means (of order 1e-4 to 1e-2 in training) while ``R`` starts near 1
            for a residual denoiser, so useful weights are small (1e-4 to 1e-3).
        probes: Gaussian draws ``ε`` per sample (≥ 1).

    Raises:
        ValueError: a weight that is not a positive number, or probes below 1.
    """

    name = "jac"

    def __init__(self, *, weight: float = 1e-4, probes: int = 1) -> None:
        super().__init__()
        self.weight = check_real("regularizer: weight", weight, low=0.0)
        self.probes = check_int("regularizer: probes", probes, 1)

    def forward(self, fmap: nn.Module, equilibria: Sequence[tuple[torch.Tensor, MapContext]],
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``R`` (a scalar tensor attached to the map's parameters) for the fixed points
        ``equilibria`` (``(z*, ctx)`` pairs, ``z*`` of shape ``(B, C, H, W)``) of ``fmap``.
        ``generator``: a CPU generator for the probes.

        Raises:
            ValueError: no fixed point to evaluate."""
        if not equilibria:
            raise ValueError("JacobianPenalty: no fixed point was recorded in this step "
                             "(the DEQ must be called in training mode with grad=implicit or grad=jfb)")
        terms = []
        for z_star, ctx in equilibria:
            z = z_star.detach().requires_grad_()
            fz = fmap(z, ctx)
            n = z[0].numel()
            for _ in range(self.probes):
                eps = randn_on_cpu(z.shape, generator, dtype=fz.dtype, device=fz.device, draw_dtype=torch.float32)
                (jt_eps,) = torch.autograd.grad(fz, z, eps, create_graph=True)
                terms.append(sq_norm(jt_eps.float()) / n)
        return torch.cat(terms).mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, probes={self.probes}"


class SpectralPenalty(nn.Module):
    r"""A hinge on the spectral norm of ``∂T/∂z`` at the fixed point, pushing it below ``target``.

    The Jacobian spectral-norm penalty of Pesquet, Repetti, Terris and Wiaux, "Learning
    maximally monotone operators for image recovery" (SIAM J. Imaging Sci. 14, 2021), applied
    to the DEQ's map at its equilibria. For each sample, ``iters`` power iterations on ``JᵀJ``
    (no graph) give a unit vector ``v`` near the top right singular vector; then

    .. math::  R = \frac{1}{K B} \sum_{k,b} \max(\|J_{kb} v_{kb}\| - \text{target},\ 0)^2

    over the step's ``K`` DEQ calls and ``B`` samples, with ``J v`` computed differentiably (a
    double backward pass) so the gradient reaches the map's parameters. Unlike a Frobenius
    penalty it acts only on samples whose map does not contract enough and, there, only along
    the direction that limits the solver; maps already below ``target`` are left alone
    (``R = 0``). ``‖J v‖ ≤ ‖J‖₂``, so a short power iteration under-estimates the norm and the
    penalty can miss a sample: more ``iters`` is more faithful and costs one Jacobian–vector
    and one vector–Jacobian product each.

    Args:
        weight: the factor of ``R`` in the training loss (> 0).
        target: the spectral norm above which the penalty acts (in (0, 1]).
        iters: power iterations per call (≥ 1).

    Raises:
        ValueError: a weight that is not positive, a target outside (0, 1], iters below 1.
    """

    name = "lip"

    def __init__(self, *, weight: float = 1.0, target: float = 0.95, iters: int = 4) -> None:
        super().__init__()
        self.weight = check_real("regularizer: weight", weight, low=0.0)
        self.target = check_real("regularizer: target", target, low=0.0, high=1.0)
        self.iters = check_int("regularizer: iters", iters, 1)

    def norms(self, fmap: nn.Module, z_star: torch.Tensor, ctx: MapContext,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """``‖J_b v_b‖`` per sample, shape ``(B,)``, attached to the map's parameters."""
        lin = Linearization(lambda z: fmap(z, ctx), z_star.detach())
        v, _ = bnormalize(randn_like(z_star, generator))
        for _ in range(self.iters):
            v, _ = bnormalize(lin.vjp(lin.jvp(v)))
        return bnorm(lin.jvp(v, differentiable=True).float())

    def forward(self, fmap: nn.Module, equilibria: Sequence[tuple[torch.Tensor, MapContext]],
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``R`` (a scalar tensor attached to the map's parameters) for the fixed points
        ``equilibria`` (``(z*, ctx)`` pairs, ``z*`` of shape ``(B, C, H, W)``) of ``fmap``.
        ``generator``: a CPU generator for the power iterations' starting vectors.

        Raises:
            ValueError: no fixed point to evaluate."""
        if not equilibria:
            raise ValueError("SpectralPenalty: no fixed point was recorded in this step "
                             "(the DEQ must be called in training mode with grad=implicit or grad=jfb)")
        sigma = torch.cat([self.norms(fmap, z, ctx, generator) for z, ctx in equilibria])
        return torch.relu(sigma - self.target).pow(2).mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, target={self.target:g}, iters={self.iters}"
