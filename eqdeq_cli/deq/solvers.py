r"""Fixed-point solvers: plain (damped) iteration and Anderson acceleration.

Both find ``z`` with ``f(z) = z`` for a map ``f`` acting on a batch ``z`` of shape
``(B, ...)``; every sample is an independent problem. The stopping rule is the
relative residual of each sample ``b``

.. math::  r_b(z) = \frac{\lVert f(z)_b - z_b\rVert_2}{\lVert f(z)_b\rVert_2},

and a solve stops when every ``r_b <= tol`` or after ``max_iter`` evaluations of ``f``.
The returned iterate is, for each sample, the evaluated iterate with the smallest
residual, so ``stats.residual`` is exactly the residual of the returned ``z``.

Iterates that run away cannot pass for solutions. A map without a fixed point (say
``f(z) = z + d``) drives the relative residual towards zero as ``‖z‖`` grows, and in
floating point ``z + d == z`` once ``‖z‖`` is large enough. So the norm in the denominator
is capped at ``100 s_b``, where ``s_b = max(‖z₀_b‖, ‖f(z₀)_b‖)`` is the scale of the
start, and an iterate whose ``‖f(z)_b‖`` exceeds ``10⁶ s_b`` counts as diverged: its
residual is reported as NaN and the solve stops as on any non-finite residual.

Mixed precision: under :func:`torch.autocast` the map is still evaluated under the
caller's autocast settings (the network may run in bfloat16), but its output is cast to
the dtype of ``z0`` and everything the solver computes itself (residuals, inner products,
the Anderson mixing) runs with autocast off, in the dtype of ``z0`` (the small Anderson
systems in float64). Tolerances far below bfloat16's precision then stay reachable for
maps whose own output is accurate enough.

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

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..utils.checks import check_int, check_real
from ..utils.precision import autocast_enabled

Map = Callable[[torch.Tensor], torch.Tensor]

# Denominator floor of the relative residual: a zero map output with a zero step
# (e.g. a backward solve with a zero incoming gradient) counts as converged.
_TINY = 1e-30
# The residual's denominator is at most this many times the scale of the start, so an
# iterate that grows without bound cannot make its relative residual small.
_SCALE_CAP = 100.0
# An iterate this many times larger than the scale of the start has diverged.
_DIVERGED = 1e6


@dataclass
class SolverStats:
    """What a solve did.

    Attributes:
        iterations: number of evaluations of ``f``.
        residual: ``(B,)`` relative residual of the returned iterate, per sample.
        converged: ``(B,)`` bool, ``residual <= tol`` per sample.
        nonfinite: ``True`` when a non-finite residual was met, or an iterate diverged
            (see the module's notes); the solve then stopped and returned the best finite
            iterate seen.
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
        self.scale: torch.Tensor | None = None  # (B,) s_b = max(‖z₀‖, ‖f(z₀)‖), set by the first update
        self.history: list[float] = []
        self.nonfinite = False
        self._step: torch.Tensor | None = None  # buffer for f(z) − z

    def update(self, z: torch.Tensor, fz: torch.Tensor, step: torch.Tensor | None = None) -> bool:
        """Record the iterate ``z`` with map value ``fz``; returns True when the solve should stop.
        ``step``: ``fz − z`` when the caller has it already (flattened per sample). Allocates
        nothing of the iterate's size: the difference goes to a buffer, the best iterate is
        updated in place."""
        b = z.shape[0]
        if step is None:
            if self._step is None:
                self._step = torch.empty_like(z)
            step = torch.sub(fz, z, out=self._step)
        diff = step.reshape(b, -1).norm(dim=1).double()
        fz_norm = fz.reshape(b, -1).norm(dim=1).double()
        if self.scale is None:
            self.scale = torch.maximum(z.reshape(b, -1).norm(dim=1).double(), fz_norm)
        res = diff / torch.minimum(fz_norm, _SCALE_CAP * self.scale).clamp_min(_TINY)
        res = res.masked_fill(diff == 0, 0.0)
        # Iterates that overflowed (inf - inf, or equal infinities) or ran away are not a solution.
        ok = torch.isfinite(fz_norm) & (fz_norm <= _DIVERGED * self.scale)
        res = res.masked_fill(~ok, math.nan)
        better = res < self.best_res  # False for NaN, so non-finite iterates never become best
        torch.where(better, res, self.best_res, out=self.best_res)
        torch.where(better.view((b,) + (1,) * (z.ndim - 1)), z, self.best, out=self.best)
        # One host synchronisation per iteration for both the history and the stopping test.
        cur_max, best_max = torch.stack((res, self.best_res)).amax(dim=1).tolist()
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


def _precise(f: Map, z0: torch.Tensor) -> tuple[Map, contextlib.AbstractContextManager]:
    """``f`` evaluated under the caller's autocast state with its output cast to ``z0``'s
    dtype, and a context that turns autocast off for the solver's own arithmetic."""
    device = z0.device.type
    if not autocast_enabled(device):
        return f, contextlib.nullcontext()
    amp_dtype = torch.get_autocast_dtype(device)

    def f_amp(z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device, dtype=amp_dtype):
            return f(z).to(z0.dtype)

    return f_amp, torch.autocast(device, enabled=False)


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
    f, precise = _precise(f, z0)
    with precise:
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
    solved in float64, batched over samples. A sample whose system is singular or gives
    non-finite weights (possible with a tiny ``lam``, or when residuals repeat exactly)
    takes the plain step ``x_{k+1} = f(x_k)`` at that iteration instead of failing the
    solve. The histories of ``f(x_i)`` and ``g_i`` live in buffers allocated once per
    solve, as do the residual and the best iterate; the loop allocates only per-iteration
    temporaries of size ``(B, n)`` (and the map's own output).

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
    f, precise = _precise(f, z0)
    with precise:
        return _anderson(f, z0, max_iter, tol, min(m, max_iter), lam, beta)


def _anderson(f: Map, z0: torch.Tensor, max_iter: int, tol: float, m: int, lam: float,
              beta: float) -> tuple[torch.Tensor, SolverStats]:
    b = z0.shape[0]
    d = z0[0].numel()
    F = z0.new_zeros((b, m, d))   # f(x_i)
    G = z0.new_zeros((b, m, d))   # g_i = f(x_i) − x_i
    x_buf = z0.new_empty((b, d))  # the next iterate, overwritten each iteration
    f64 = {"dtype": torch.float64, "device": z0.device}
    gram = torch.zeros((b, m, m), **f64)
    eye = torch.eye(m, **f64)
    ones = torch.ones((b, m, 1), **f64)
    plain = torch.eye(m, **f64)  # row j: the weights of the step x = f(x_j)
    tracker = _Tracker(z0, tol)

    x = z0.reshape(b, d)
    for k in range(max_iter):
        fx = f(x.view_as(z0)).reshape(b, d)
        j = k % m
        n = min(k + 1, m)
        torch.sub(fx, x, out=G[:, j])
        if tracker.update(x.view_as(z0), fx.view_as(z0), G[:, j]):
            break
        F[:, j] = fx
        row = torch.bmm(G[:, :n], G[:, j].unsqueeze(2)).squeeze(2).double()  # (B, n): <g_i, g_j>
        gram[:, j, :n] = row
        gram[:, :n, j] = row
        H = gram[:, :n, :n]
        scale = torch.diagonal(H, dim1=1, dim2=2).mean(1).clamp_min(_TINY)
        H = torch.addcmul(H, (lam * scale).view(b, 1, 1), eye[:n, :n])
        a, info = torch.linalg.solve_ex(H, ones[:, :n])
        alpha = a / a.sum(dim=1, keepdim=True)                               # (B, n, 1)
        ok = (info == 0).view(b, 1, 1) & torch.isfinite(alpha).all(dim=1, keepdim=True)
        alpha = torch.where(ok, alpha, plain[j, :n].view(1, n, 1))
        alpha = alpha.to(z0.dtype).transpose(1, 2)                           # (B, 1, n)
        x = torch.bmm(alpha, F[:, :n], out=x_buf.unsqueeze(1)).squeeze(1)
        if beta != 1.0:  # β Σα f(x_i) + (1 − β) Σα x_i = Σα f(x_i) − (1 − β) Σα g_i
            x = x - (1.0 - beta) * torch.bmm(alpha, G[:, :n]).squeeze(1)
    return tracker.result()
