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

from ..utils.checks import check_int, check_real
from .maps import MapContext

__all__ = ["JacobianPenalty"]


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
                eps = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(device=fz.device,
                                                                                       dtype=fz.dtype)
                (jt_eps,) = torch.autograd.grad(fz, z, eps, create_graph=True)
                terms.append(jt_eps.float().reshape(z.shape[0], -1).pow(2).sum(dim=1) / n)
        return torch.cat(terms).mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, probes={self.probes}"
