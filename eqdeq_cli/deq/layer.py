r"""The DEQ layer: ``x = T_θ(x; y)`` solved by a fixed-point solver, with three ways of
forming gradients.

* ``implicit``: solve ``z* = T(z*; y)`` without autograd, take one tracked step
  ``x = T(z*; y)`` and, in the backward pass, replace the incoming gradient ``g`` by
  the solution of ``v = Jᵀv + g`` (``J = ∂T/∂z`` at ``z*``), found by the backward
  solver with vector–Jacobian products. Then ``v`` flows through the tracked step to
  ``θ`` **and** to ``y``, which gives the exact gradient of the equilibrium
  ``dL/dθ = (∂T/∂θ)ᵀ (I − Jᵀ)⁻¹ g`` (likewise for ``y``). Memory does not depend on
  the number of iterations.
* ``jfb``: the same tracked step, with ``v = g`` (Jacobian-free backpropagation).
* ``unrolled``: ``unroll_steps`` tracked iterations from ``A†y``; memory grows with them.

A call is an ordinary differentiable function of ``y`` and ``θ`` whose backward is
local to it, so losses calling the layer several times (one call's output feeding the
next call's input, as in equivariant imaging) backpropagate with plain autograd.
Double backward (``create_graph=True``) through the implicit mode is not supported.

In training mode the forward solve uses ``forward_solver``; in eval mode it uses
``eval_solver`` for the implicit and JFB modes (the model *is* the fixed point; the mode
only says how training differentiates it). An unrolled model is a network of
``unroll_steps`` iterations, trained and evaluated as such: its map is not trained to
have a useful fixed point, so solving it to convergence would evaluate another model.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .maps import MapContext
from .solvers import SolverStats

log = logging.getLogger(__name__)

Solver = Callable[..., tuple[torch.Tensor, SolverStats]]
GRAD_MODES = ("implicit", "jfb", "unrolled")
_STATS_KEPT = 64


@dataclass
class DEQStats:
    """Statistics of one call: the forward solve and any backward solves it caused.

    ``backward`` is filled when (and each time) the implicit backward runs.
    """

    forward: SolverStats
    backward: list[SolverStats] = field(default_factory=list)
    mode: str = "implicit"


class _ImplicitGradient(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass maps ``g`` to ``v = Jᵀv + g``."""

    @staticmethod
    def forward(ctx, fz: torch.Tensor, z_leaf: torch.Tensor, solver: Solver,  # type: ignore[override]
                record: list) -> torch.Tensor:
        ctx.fz, ctx.z_leaf, ctx.solver, ctx.record = fz, z_leaf, solver, record
        return fz.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        fz, z_leaf = ctx.fz, ctx.z_leaf

        def vjp_map(v: torch.Tensor) -> torch.Tensor:
            (jtv,) = torch.autograd.grad(fz, z_leaf, v, retain_graph=True)
            return jtv + g

        v, stats = ctx.solver(vjp_map, g)
        ctx.record.append(stats)
        if stats.nonfinite:
            log.warning("implicit backward solve met a non-finite residual after %d iterations",
                        stats.iterations)
        return v, None, None, None


def _unroll_stats(z_prev: torch.Tensor, z: torch.Tensor, steps: int, tol: float) -> SolverStats:
    b = z.shape[0]
    with torch.no_grad():
        diff = (z - z_prev).reshape(b, -1).norm(dim=1).double()
        res = diff / z.reshape(b, -1).norm(dim=1).double().clamp_min(1e-30)
        res = torch.where(diff == 0, torch.zeros_like(res), res)
    worst = float(res.max())
    return SolverStats(iterations=steps, residual=res, converged=res <= tol,
                       nonfinite=not torch.isfinite(res).all().item(), history=[worst])


class DEQ(nn.Module):
    """Deep equilibrium reconstructor ``y ↦ x`` with ``x = T_θ(x; y)``.

    Args:
        fmap: a fixed-point map with ``prepare(y) -> ctx``, ``init(y)`` and ``fmap(z, ctx)``
            (see :mod:`eqdeq_cli.deq.maps`).
        grad: ``"implicit"``, ``"jfb"`` or ``"unrolled"``.
        forward_solver: ``solver(f, z0) -> (z, SolverStats)`` for training-mode solves,
            e.g. ``functools.partial(anderson_solve, max_iter=20, tol=1e-3)``.
        backward_solver: solver of ``v = Jᵀv + g`` (implicit mode); defaults to
            ``forward_solver``.
        eval_solver: solver in eval mode; defaults to ``forward_solver``.
        unroll_steps: tracked iterations of the unrolled mode (≥ 1).
        warm_start: start each solve from the previous call's solution when the batch
            shape, dtype and device match. Caveat: this only helps when consecutive calls
            see related inputs (the same batch again, or the second call of an EI loss,
            whose input derives from the first call's output); the result then depends on
            the order of calls and, with loose tolerances, is not reproducible call by call.

    Attributes:
        last_stats: :class:`DEQStats` of the most recent call (``None`` before any call).

    Shapes: ``y`` as the physics measures it; the output ``(B, C, H, W)``.
    """

    def __init__(self, fmap: nn.Module, *, grad: str = "implicit", forward_solver: Solver,
                 backward_solver: Solver | None = None, eval_solver: Solver | None = None,
                 unroll_steps: int = 10, warm_start: bool = False) -> None:
        super().__init__()
        if grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {', '.join(GRAD_MODES)}; got {grad!r}")
        for name, s in (("forward_solver", forward_solver), ("backward_solver", backward_solver),
                        ("eval_solver", eval_solver)):
            if s is not None and not callable(s):
                raise TypeError(f"{name} must be callable solver(f, z0) -> (z, stats), got {type(s).__name__}")
        if isinstance(unroll_steps, bool) or not isinstance(unroll_steps, int) or unroll_steps < 1:
            raise ValueError(f"unroll_steps must be an integer >= 1, got {unroll_steps!r}")
        if not isinstance(warm_start, bool):
            raise ValueError(f"warm_start must be true or false, got {warm_start!r}")
        self.fmap = fmap
        self.grad = grad
        self.forward_solver = forward_solver
        self.backward_solver = backward_solver if backward_solver is not None else forward_solver
        self.eval_solver = eval_solver if eval_solver is not None else forward_solver
        self.unroll_steps = unroll_steps
        self.warm_start = warm_start
        self.last_stats: DEQStats | None = None
        self._recent: deque[DEQStats] = deque(maxlen=_STATS_KEPT)
        self._previous: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"grad={self.grad!r}, unroll_steps={self.unroll_steps}, warm_start={self.warm_start}"

    def pop_stats(self) -> list[DEQStats]:
        """Stats of every call since the last pop (at most 64, oldest first), then forget them."""
        out = list(self._recent)
        self._recent.clear()
        return out

    def reset_warm_start(self) -> None:
        """Forget the stored solution used by ``warm_start``."""
        self._previous = None

    def _start(self, y: torch.Tensor) -> torch.Tensor:
        z0 = self.fmap.init(y)
        prev = self._previous
        if self.warm_start and prev is not None and prev.shape == z0.shape \
                and prev.dtype == z0.dtype and prev.device == z0.device:
            return prev
        return z0

    def _record(self, stats: DEQStats) -> None:
        self.last_stats = stats
        self._recent.append(stats)
        fw = stats.forward
        if fw.nonfinite:
            log.warning("DEQ forward solve met a non-finite residual after %d iterations", fw.iterations)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        ctx: MapContext = self.fmap.prepare(y)
        tracking = torch.is_grad_enabled()
        if self.grad == "unrolled":
            return self._unrolled(y, ctx)

        solver = self.forward_solver if self.training else self.eval_solver
        with torch.no_grad():
            z0 = self._start(y).detach()
            z_star, fstats = solver(lambda z: self.fmap(z, ctx), z0)
        stats = DEQStats(forward=fstats, mode=self.grad)
        self._record(stats)
        if self.warm_start:
            self._previous = z_star.detach()

        needs_grad = tracking and (y.requires_grad or any(p.requires_grad for p in self.fmap.parameters()))
        if not needs_grad:
            return self.fmap(z_star, ctx)
        if self.grad == "implicit":
            z_leaf = z_star.detach().requires_grad_()
            fz = self.fmap(z_leaf, ctx)
            return _ImplicitGradient.apply(fz, z_leaf, self.backward_solver, stats.backward)
        return self.fmap(z_star.detach(), ctx)

    def _unrolled(self, y: torch.Tensor, ctx: MapContext) -> torch.Tensor:
        z = self.fmap.init(y)
        z_prev = z
        for _ in range(self.unroll_steps):
            z_prev, z = z, self.fmap(z, ctx)
        tol = getattr(self.forward_solver, "keywords", {}).get("tol", 0.0)
        stats = DEQStats(forward=_unroll_stats(z_prev, z, self.unroll_steps, float(tol)), mode=self.grad)
        self._record(stats)
        return z
