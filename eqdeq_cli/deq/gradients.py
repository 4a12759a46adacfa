r"""How training differentiates a DEQ: one strategy object per gradient mode.

Every mode turns the measurements' map context into the reconstruction ``x`` with the
autograd graph that mode wants; :func:`gradient_mode` is the one factory that maps a
config name to a strategy (and the one place that validates the name).

* :class:`ImplicitGradient` (``implicit``): solve ``z* = T(z*; y)`` without autograd, take
  one tracked step ``x = T(z*; y)`` and, in the backward pass, replace the incoming
  gradient ``g`` by the solution of ``v = Jᵀv + g`` (``J = ∂T/∂z`` at ``z*``), found by the
  backward solver with vector–Jacobian products. ``v`` then flows through the tracked step
  to ``θ`` and to ``y``: ``dL/dθ = (∂T/∂θ)ᵀ(I − Jᵀ)⁻¹g``. Memory does not depend on the
  number of iterations (Bai, Kolter, Koltun, "Deep Equilibrium Models", 2019).
* :class:`JacobianFreeGradient` (``jfb``): the same tracked step with ``v = g``
  (Fung et al., "JFB: Jacobian-Free Backpropagation for Implicit Networks", AAAI 2022).
* :class:`UnrolledGradient` (``unrolled``): ``unroll_steps`` tracked iterations from
  ``A†y``; memory grows with them. An unrolled model is a network of that many
  iterations, trained and evaluated as such.

Double backward (``create_graph=True``) through the implicit mode is not supported.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar

import torch

from ..utils.checks import check_int, check_real
from .maps import MapContext
from .solvers import SolverStats

if TYPE_CHECKING:
    from .layer import DEQ

log = logging.getLogger(__name__)

Solver = Callable[..., tuple[torch.Tensor, SolverStats]]


@dataclass
class DEQStats:
    """Statistics of one call: the forward solve and any backward solves it caused.

    ``backward`` is filled when (and each time) the implicit backward runs;
    ``fallbacks[i]`` is the number of samples of ``backward[i]`` whose solution was not
    used (see :class:`ImplicitGradient`).
    """

    forward: SolverStats
    backward: list[SolverStats] = field(default_factory=list)
    mode: str = "implicit"
    fallbacks: list[int] = field(default_factory=list)
    #: Samples whose forward solve started from the layer's per-sample cache.
    cache_hits: int = 0


class GradientMode:
    """A way of forming the DEQ's gradients: :meth:`reconstruct` returns ``x`` for ``y``."""

    name: ClassVar[str]
    #: Whether the reconstruction is a fixed point of the map (so its contraction there means something).
    has_fixed_point: ClassVar[bool] = True

    def reconstruct(self, deq: "DEQ", y: torch.Tensor, ctx: MapContext,
                    start: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"grad={self.name!r}"


def initial_point(deq: "DEQ", y: torch.Tensor, ctx: MapContext) -> torch.Tensor:
    """``A†y``, the solve's default start: the anchored map's ``ctx.x0`` when the context
    holds it (computed once per call), else ``fmap.init(y)``."""
    x0 = getattr(ctx, "x0", None)
    return x0 if x0 is not None else deq.fmap.init(y)


def _needs_graph(deq: "DEQ", y: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (y.requires_grad or any(p.requires_grad for p in deq.fmap.parameters()))


class _FixedPointMode(GradientMode):
    """Solve to the fixed point without autograd; subclasses attach the gradient."""

    def reconstruct(self, deq: "DEQ", y: torch.Tensor, ctx: MapContext,
                    start: torch.Tensor | None = None) -> torch.Tensor:
        z_star, stats = deq.solve(y, ctx, start=start)
        if not _needs_graph(deq, y):
            return deq.fmap(z_star, ctx)
        return self.tracked_step(deq, z_star.detach(), ctx, stats)

    def tracked_step(self, deq: "DEQ", z_star: torch.Tensor, ctx: MapContext, stats: DEQStats) -> torch.Tensor:
        raise NotImplementedError


class _ImplicitBackward(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass maps ``g`` to ``v = Jᵀv + g``.

    ``Jᵀv`` is the vector–Jacobian product of ``fz`` with respect to ``inner``; when
    ``inner`` is an intermediate ``u(z)`` of the map rather than ``z`` itself, ``inner_vjp``
    applies ``(∂u/∂z)ᵀ`` in closed form (so autograd only goes through the part after ``u``).
    """

    @staticmethod
    def forward(ctx, fz: torch.Tensor, inner: torch.Tensor, inner_vjp: Callable | None,  # type: ignore[override]
                mode: "ImplicitGradient", stats: DEQStats) -> torch.Tensor:
        ctx.fz, ctx.inner, ctx.inner_vjp, ctx.mode, ctx.stats = fz, inner, inner_vjp, mode, stats
        return fz.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        fz, inner, inner_vjp = ctx.fz, ctx.inner, ctx.inner_vjp
        # A half-precision output (a map run under autocast) still gets a float32 solve.
        g_solve = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g

        def vjp_map(v: torch.Tensor) -> torch.Tensor:
            (jtv,) = torch.autograd.grad(fz, inner, v.to(fz.dtype), retain_graph=True)
            if inner_vjp is not None:
                jtv = inner_vjp(jtv)
            return jtv.to(g_solve.dtype) + g_solve

        v, bstats = ctx.mode.backward_solver(vjp_map, g_solve)
        v, n_fallback = ctx.mode.accept(v, g_solve, bstats)
        ctx.stats.backward.append(bstats)
        ctx.stats.fallbacks.append(n_fallback)
        return v.to(fz.dtype), None, None, None, None


class ImplicitGradient(_FixedPointMode):
    r"""Implicit differentiation of the fixed point, with a guarded backward solve.

    The backward solve of ``v = Jᵀv + g`` has a solution only where ``I − Jᵀ`` is
    invertible, i.e. where the map contracts at ``z*``. A sample whose backward solve ends
    with a non-finite residual, or with a relative residual above ``backward_accept``, does
    not use that ``v`` (nor does any sample of a solve whose iterates went non-finite): it
    takes ``v = g``, the Jacobian-free gradient (a descent
    direction under the same contraction conditions; Fung et al. 2022) instead of a wrong
    one. Such samples are counted in :attr:`DEQStats.fallbacks` and logged by the trainer.

    Maps of the form ``T(z) = D(u(z))`` (``D`` with the map's box projection, ``fmap.denoise``)
    whose inner step has a closed-form transpose (:class:`~eqdeq_cli.deq.maps.ProxGradMap`:
    ``u = (1 − η)(z − γAᵀ(Az − y)) + η A†y``, ``(∂u/∂z)ᵀ = (1 − η)(I − γAᵀA)``) expose
    ``data_step`` and ``data_step_vjp``; with ``closed_form_vjp`` each backward iteration then
    differentiates only the denoiser by autograd and applies ``(1 − η)(I − γAᵀA)`` directly: the
    same ``Jᵀv``, without recording or replaying the operator's graph.

    Args:
        backward_solver: ``solver(f, v0) -> (v, SolverStats)`` for ``v = Jᵀv + g``.
        backward_accept: largest relative residual of the backward solve whose solution is
            used (> 0; ``inf`` keeps every finite solution).
        closed_form_vjp: use the map's closed-form ``data_step_vjp`` where it has one.
    """

    name = "implicit"

    def __init__(self, backward_solver: Solver, *, backward_accept: float = float("inf"),
                 closed_form_vjp: bool = True) -> None:
        if not callable(backward_solver):
            raise TypeError(f"backward_solver must be callable solver(f, z0) -> (z, stats), "
                            f"got {type(backward_solver).__name__}")
        if backward_accept != float("inf"):
            check_real("backward_accept", backward_accept, low=0.0)
        if not isinstance(closed_form_vjp, bool):
            raise ValueError(f"closed_form_vjp must be true or false, got {closed_form_vjp!r}")
        self.backward_solver = backward_solver
        self.backward_accept = float(backward_accept)
        self.closed_form_vjp = closed_form_vjp

    def accept(self, v: torch.Tensor, g: torch.Tensor, stats: SolverStats) -> tuple[torch.Tensor, int]:
        """``v`` where the backward solve succeeded, ``g`` (JFB) elsewhere; and how many fell back."""
        res = stats.residual.to(v.device)
        ok = torch.isfinite(res) & (res <= self.backward_accept)
        ok = ok & torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
        if stats.nonfinite:  # the iteration diverged: its best finite iterate is no solution either
            ok = torch.zeros_like(ok)
        n_bad = int((~ok).sum())
        if n_bad == 0:
            return v, 0
        if stats.nonfinite:
            log.warning("implicit backward solve met a non-finite residual (or diverged) after %d iterations; "
                        "%d sample(s) use the Jacobian-free gradient", stats.iterations, n_bad)
        return torch.where(ok.view((-1,) + (1,) * (v.ndim - 1)), v, g), n_bad

    def tracked_step(self, deq: "DEQ", z_star: torch.Tensor, ctx: MapContext, stats: DEQStats) -> torch.Tensor:
        z_leaf = z_star.requires_grad_()
        fmap = deq.fmap
        if self.closed_form_vjp and hasattr(fmap, "data_step_vjp"):
            u = fmap.data_step(z_leaf, ctx)
            return _ImplicitBackward.apply(fmap.denoise(u), u, fmap.data_step_vjp, self, stats)
        return _ImplicitBackward.apply(fmap(z_leaf, ctx), z_leaf, None, self, stats)

    def extra_repr(self) -> str:
        return f"grad='implicit', backward_accept={self.backward_accept:g}, closed_form_vjp={self.closed_form_vjp}"


class JacobianFreeGradient(_FixedPointMode):
    """Jacobian-free backpropagation: one tracked step from the detached fixed point."""

    name = "jfb"

    def tracked_step(self, deq: "DEQ", z_star: torch.Tensor, ctx: MapContext, stats: DEQStats) -> torch.Tensor:
        return deq.fmap(z_star, ctx)


def _unroll_stats(z_prev: torch.Tensor, z: torch.Tensor, steps: int, tol: float) -> SolverStats:
    b = z.shape[0]
    with torch.no_grad():
        diff = (z - z_prev).reshape(b, -1).norm(dim=1).double()
        res = diff / z.reshape(b, -1).norm(dim=1).double().clamp_min(1e-30)
        res = torch.where(diff == 0, torch.zeros_like(res), res)
    worst = float(res.max())
    return SolverStats(iterations=steps, residual=res, converged=res <= tol,
                       nonfinite=not torch.isfinite(res).all().item(), history=[worst])


class UnrolledGradient(GradientMode):
    """``unroll_steps`` tracked iterations from ``A†y``, in training and in evaluation."""

    name = "unrolled"
    has_fixed_point = False

    def __init__(self, unroll_steps: int = 10) -> None:
        check_int("unroll_steps", unroll_steps, 1)
        self.unroll_steps = unroll_steps

    def reconstruct(self, deq: "DEQ", y: torch.Tensor, ctx: MapContext,
                    start: torch.Tensor | None = None) -> torch.Tensor:
        z = initial_point(deq, y, ctx)  # ``start`` is ignored: the unrolled network is defined from A†y
        z_prev = z
        for _ in range(self.unroll_steps):
            z_prev, z = z, deq.fmap(z, ctx)
        tol = getattr(deq.forward_solver, "keywords", {}).get("tol", 0.0)
        deq.record(DEQStats(forward=_unroll_stats(z_prev, z, self.unroll_steps, float(tol)), mode=self.name))
        return z

    def extra_repr(self) -> str:
        return f"grad='unrolled', unroll_steps={self.unroll_steps}"


GRADIENT_MODES: dict[str, type[GradientMode]] = {
    cls.name: cls for cls in (ImplicitGradient, JacobianFreeGradient, UnrolledGradient)}
GRAD_MODES = tuple(GRADIENT_MODES)


def check_gradient_mode(name: object) -> str:
    """``name`` if it names a gradient mode; else ``ValueError`` listing the valid ones."""
    if name not in GRADIENT_MODES:
        raise ValueError(f"grad must be one of {', '.join(GRAD_MODES)}; got {name!r}")
    return str(name)


def gradient_mode(name: str, *, backward_solver: Solver, unroll_steps: int = 10,
                  backward_accept: float = float("inf"), closed_form_vjp: bool = True) -> GradientMode:
    """The strategy called ``name`` (``implicit``, ``jfb`` or ``unrolled``).

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or a bad option.
    """
    check_gradient_mode(name)
    if name == ImplicitGradient.name:
        return ImplicitGradient(backward_solver, backward_accept=backward_accept,
                                closed_form_vjp=closed_form_vjp)
    if name == UnrolledGradient.name:
        return UnrolledGradient(unroll_steps)
    return JacobianFreeGradient()
