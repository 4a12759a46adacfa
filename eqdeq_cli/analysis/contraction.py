r"""Contraction of a fixed-point map at its solution, and observed solver convergence.

A fixed-point map ``T`` converges linearly near ``z*`` with rate at most
``‖J‖₂``, ``J = ∂T/∂z`` at ``z*`` (a local Lipschitz constant); asymptotically the
rate of plain iteration is the spectral radius ``ρ(J) ≤ ‖J‖₂``. Comparing the
estimate with the rate a solver actually achieved tells whether slow solves come from
a weakly contractive map (``‖J‖ ≈ 1``) or from the solver.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Callable

import torch

from ._linalg import Linearization, bnorm, bnormalize, randn_like

Fn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["spectral_norm_per_sample", "lipschitz_estimate", "convergence_rate"]


def spectral_norm_per_sample(fmap_z: Fn, z: torch.Tensor, n_iter: int = 20,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    r"""``‖J_i‖₂`` for each sample's Jacobian ``J_i = ∂T/∂z_i`` at ``z``, shape ``(B,)``.

    Power iteration on ``JᵀJ``: ``v ← JᵀJ v / ‖JᵀJ v‖``, then ``‖J v‖``; one
    Jacobian–vector and one vector–Jacobian product per iteration. The estimate
    increases towards ``‖J‖₂`` from below, with error shrinking like
    ``(σ₂/σ₁)^{2k}``.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    lin = Linearization(fmap_z, z)
    v, _ = bnormalize(randn_like(z, generator))
    for _ in range(n_iter):
        v, _ = bnormalize(lin.vjp(lin.jvp(v)))
    return bnorm(lin.jvp(v)).detach()


def lipschitz_estimate(fmap_z: Fn, z: torch.Tensor, n_iter: int = 20,
                       generator: torch.Generator | None = None) -> float:
    r"""Local Lipschitz constant of the fixed-point map ``z ↦ T(z)`` at ``z`` (the solution).

    The map acts on each sample separately, so its Jacobian on the batch is block
    diagonal and its norm is the largest per-sample ``‖J_i‖₂``
    (:func:`spectral_norm_per_sample`); that maximum is returned. Below 1 means
    ``T`` is locally contractive. For a DEQ map:
    ``ctx = fmap.prepare(y); lipschitz_estimate(lambda z: fmap(z, ctx), z_star)``.
    """
    return float(spectral_norm_per_sample(fmap_z, z, n_iter=n_iter, generator=generator).max())


def convergence_rate(history: Iterable[float], skip: int = 0) -> float:
    r"""Observed linear convergence rate from a residual history ``r_0, r_1, …, r_K``.

    The geometric mean of successive ratios,
    ``(∏_{k} r_{k+1}/r_k)^{1/K} = (r_K / r_0)^{1/K}``, over the entries after the first
    ``skip`` (to leave out a transient). Below 1 means the residual shrinks by that factor
    per iteration on average. Returns ``0.0`` if the residual reached exactly zero and
    ``nan`` when fewer than two usable entries remain or the first is zero or not finite.
    """
    r = [float(v) for v in history][skip:]
    if len(r) < 2 or not math.isfinite(r[0]) or r[0] <= 0 or not math.isfinite(r[-1]):
        return math.nan
    if r[-1] <= 0:
        return 0.0
    return (r[-1] / r[0]) ** (1.0 / (len(r) - 1))
