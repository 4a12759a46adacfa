r"""Fixed-point solvers: plain (damped) iteration and Anderson acceleration.

Both find ``z`` with ``f(z) = z`` for a map ``f`` acting on a batch ``z`` of shape
``(B, ...)``; every sample is an independent problem. The stopping rule is the
relative residual of each sample ``b``

.. math::  r_b(z) = \frac{\lVert f(z)_b - z_b\rVert_2}{\lVert f(z)_b\rVert_2},

and a solve stops when every ``r_b <= tol`` or after ``max_iter`` evaluations of ``f``.
The returned iterate is, for each sample, the evaluated iterate with the smallest
residual, so ``stats.residual`` is exactly the residual of the returned ``z``.

The solvers run under :func:`torch.no_grad` (they never build an autograd graph), so
they serve the forward solve ``z = T(z; y)`` and the backward solve
``v = Jᵀ v + g`` alike (vector–Jacobian products by :func:`torch.autograd.grad`
still work inside). They take keyword options only; an unknown option raises
``TypeError`` and an invalid value ``ValueError``.

Example:
    >>> W = 0.5 * torch.eye(3, dtype=torch.float64)
    >>> z, stats = anderson_solve(lambda z: z @ W + 1.0, torch.zeros(2, 3, dtype=torch.float64), tol=1e-10)
    >>> bool(stats.converged.all()), round(float(z[0, 0]), 6)
    (True, 2.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..utils.checks import check_int, check_real

Map = Callable[[torch.Tensor], torch.Tensor]

# Denominator floor of the relative residual: a zero map output with a zero step
# (e.g. a backward solve with a zero incoming gradient) counts as converged.
_TINY = 1e-30


@dataclass
class SolverStats:
    """What a solve did.

    Attributes:
        iterations: number of evaluations of ``f``.
        residual: ``(B,)`` relative residual of the returned iterate, per sample.
        converged: ``(B,)`` bool, ``residual <= tol`` per sample.
        nonfinite: ``True`` when a non-finite residual was met; the solve then stopped
            and returned the best finite iterate seen.
        history: the largest residual over the batch at each evaluation.
    """

    iterations: int
    residual: torch.Tensor
    converged: torch.Tensor
    nonfinite: bool = False
    history: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Plain numbers for logging: iterations, max / mean residual, converged fraction."""
        return {
            "iterations": float(self.iterations),
            "residual_max": float(self.residual.max()),
            "residual_mean": float(self.residual.mean()),
            "converged": float(self.converged.float().mean()),
            "nonfinite": float(self.nonfinite),
        }


def _check_common(f: Map, z0: torch.Tensor, max_iter: int, tol: float) -> None:
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not isinstance(z0, torch.Tensor) or z0.ndim < 1 or z0.shape[0] < 1:
        raise ValueError("z0 must be a tensor with a non-empty batch dimension 0")
    check_int("max_iter", max_iter, 1)
    # tol = 0 is allowed: the solve then runs exactly max_iter evaluations (unless an
    # exact fixed point is met), which benchmarks use to fix the iteration count.
    check_real("tol", tol, low=0.0, low_inclusive=True)


class _Tracker:
    """Keeps, per sample, the best iterate and its residual; decides when to stop."""

    def __init__(self, z0: torch.Tensor, tol: float) -> None:
        self.tol = tol
        self.best = z0.clone()
        self.best_res = torch.full((z0.shape[0],), math.inf, dtype=torch.float64, device=z0.device)
        self.history: list[float] = []
        self.nonfinite = False

    def update(self, z: torch.Tensor, fz: torch.Tensor) -> bool:
        """Record the iterate ``z`` with map value ``fz``; returns True when the solve should stop."""
        b = z.shape[0]
        diff = (fz - z).reshape(b, -1).norm(dim=1).double()
        fz_norm = fz.reshape(b, -1).norm(dim=1).double()
        res = diff / fz_norm.clamp_min(_TINY)
        res = torch.where(diff == 0, torch.zeros_like(res), res)
        # Iterates that overflowed (inf - inf, or equal infinities) are not a solution.
        res = torch.where(torch.isfinite(fz_norm), res, torch.full_like(res, math.nan))
        better = res < self.best_res  # False for NaN, so non-finite iterates never become best
        self.best_res = torch.where(better, res, self.best_res)
        self.best = torch.where(better.view((b,) + (1,) * (z.ndim - 1)), z, self.best)
        # One host synchronisation per iteration for both the history and the stopping test.
        cur_max, best_max = torch.stack((res.max(), self.best_res.max())).tolist()
        self.history.append(cur_max)
        if not math.isfinite(cur_max):
            self.nonfinite = True
            return True
        return best_max <= self.tol

    def result(self) -> tuple[torch.Tensor, SolverStats]:
        residual = self.best_res
        converged = residual <= self.tol
        return self.best, SolverStats(iterations=len(self.history), residual=residual,
                                      converged=converged, nonfinite=self.nonfinite,
                                      history=self.history)


@torch.no_grad()
def fixed_point_solve(f: Map, z0: torch.Tensor, *, max_iter: int = 50, tol: float = 1e-4,
                      damping: float = 1.0) -> tuple[torch.Tensor, SolverStats]:
    r"""Damped fixed-point iteration ``z_{k+1} = (1 − η) z_k + η f(z_k)``.

    Args:
        f: the map, ``(B, ...) -> (B, ...)``.
        z0: starting point ``(B, ...)``.
        max_iter: maximum number of evaluations of ``f`` (≥ 1).
        tol: relative-residual tolerance (≥ 0; 0 runs exactly ``max_iter`` evaluations).
        damping: ``η`` in (0, 1]; 1 is plain iteration.

    Returns:
        ``(z, stats)``: per sample the iterate with the smallest residual, and its stats.
    """
    _check_common(f, z0, max_iter, tol)
    check_real("damping", damping, low=0.0, high=1.0)
    tracker = _Tracker(z0, tol)
    z = z0
    for _ in range(max_iter):
        fz = f(z)
        if tracker.update(z, fz):
            break
        z = fz if damping == 1.0 else torch.lerp(z, fz, damping)
    return tracker.result()


@torch.no_grad()
def anderson_solve(f: Map, z0: torch.Tensor, *, max_iter: int = 50, tol: float = 1e-4, m: int = 5,
                   lam: float = 1e-4, beta: float = 1.0) -> tuple[torch.Tensor, SolverStats]:
    r"""Anderson acceleration (type II) with history ``m``.

    With the last ``n = min(k, m)`` iterates ``x_i`` and residuals ``g_i = f(x_i) − x_i``
    stacked as the columns of ``G`` (per sample), the mixing weights solve

    .. math::  \min_\alpha \lVert G\alpha\rVert^2 + \lambda s \lVert\alpha\rVert^2
               \quad\text{s.t.}\quad \textstyle\sum_i \alpha_i = 1,

    i.e. ``α ∝ (GᵀG + λ s I)⁻¹ 1``, where ``s = tr(GᵀG)/n`` makes ``λ`` relative to the
    scale of the residuals (the same setting then works for images and for the tiny
    vectors of a backward solve). The next iterate is
    ``x_{k+1} = β Σ α_i f(x_i) + (1 − β) Σ α_i x_i``. The ``(n × n)`` Gram matrix is
    updated by one row per iteration in a preallocated buffer and the small systems are
    solved in float64 with :func:`torch.linalg.solve`, batched over samples.

    Args:
        f: the map, ``(B, ...) -> (B, ...)``.
        z0: starting point ``(B, ...)``.
        max_iter: maximum number of evaluations of ``f`` (≥ 1).
        tol: relative-residual tolerance (≥ 0; 0 runs exactly ``max_iter`` evaluations).
        m: history size (≥ 1; 1 is plain iteration).
        lam: relative Tikhonov regularisation of the least-squares problem (> 0).
        beta: mixing parameter in (0, 1].

    Returns:
        ``(z, stats)``: per sample the iterate with the smallest residual, and its stats.
    """
    _check_common(f, z0, max_iter, tol)
    check_int("m", m, 1)
    check_real("lam", lam, low=0.0)
    check_real("beta", beta, low=0.0, high=1.0)

    b = z0.shape[0]
    d = z0[0].numel()
    m = min(m, max_iter)
    X = z0.new_zeros((b, m, d))
    F = z0.new_zeros((b, m, d))
    gram = torch.zeros((b, m, m), dtype=torch.float64, device=z0.device)
    eye = torch.eye(m, dtype=torch.float64, device=z0.device)
    tracker = _Tracker(z0, tol)

    x = z0.reshape(b, d)
    for k in range(max_iter):
        fx = f(x.view_as(z0)).reshape(b, d)
        if tracker.update(x.view_as(z0), fx.view_as(z0)):
            break
        j = k % m
        X[:, j] = x
        F[:, j] = fx
        n = min(k + 1, m)
        G = F[:, :n] - X[:, :n]                                  # (B, n, d)
        row = torch.bmm(G, G[:, j].unsqueeze(2)).squeeze(2)       # (B, n): <g_i, g_j>
        gram[:, j, :n] = row.double()
        gram[:, :n, j] = row.double()
        H = gram[:, :n, :n]
        scale = (torch.diagonal(H, dim1=1, dim2=2).sum(1) / n).clamp_min(_TINY)
        H = H + (lam * scale).view(b, 1, 1) * eye[:n, :n]
        a = torch.linalg.solve(H, torch.ones((b, n, 1), dtype=torch.float64, device=z0.device))
        alpha = (a / a.sum(dim=1, keepdim=True)).to(z0.dtype).transpose(1, 2)  # (B, 1, n)
        x = torch.bmm(alpha, F[:, :n]).squeeze(1)
        if beta != 1.0:
            x = beta * x + (1.0 - beta) * torch.bmm(alpha, X[:, :n]).squeeze(1)
    return tracker.result()
