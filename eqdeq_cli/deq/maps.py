r"""Fixed-point maps ``T_θ(z; y)`` whose fixed points are the reconstructions.

A map is used in two steps: ``ctx = fmap.prepare(y)`` once per solve (it holds ``y``,
``Aᵀy`` and, for an anchored map, ``A†y``, computed with autograd on so gradients reach
``y``), then ``fmap(z, ctx)`` at every iteration. ``fmap.init(y)`` is the starting point
``A†y``. Images are ``(B, C, H, W)``; measurements are whatever the physics uses.

Both maps take ``anchor = η ∈ [0, 1)``: the denoiser's input ``u(z)`` is replaced by
``(1 − η) u(z) + η A†y``, so ``Lip_z(T) ≤ (1 − η) Lip(D)`` also on the nullspace of ``A``,
where ``u`` alone is the identity (docs/stability.md).

Both maps take ``clip = (low, high)``: the denoiser's output is projected onto the box
``[low, high]`` (``T = Π_box ∘ D ∘ u``), the constraint of projected plug-and-play
iterations for images known to lie in a range (attenuation and intensities are
non-negative). The projection is non-expansive, so it keeps a contractive map contractive.

The step ``γ > 0`` is stored as ``log γ`` (a parameter when ``learn_step``, else a
buffer) and initialised to ``step_init`` or ``1/‖A‖²``. The gradient step
``z ↦ z − γAᵀ(Az − y)`` is non-expansive for ``γ ∈ (0, 2/‖A‖²]`` (its Jacobian
``I − γAᵀA`` has eigenvalues ``1 − γλ``, ``λ ∈ [0, ‖A‖²]``), so :class:`ProxGradMap` caps
a learned ``γ`` there: a contractive denoiser then keeps the whole map contractive. The
same holds for the preconditioned step ``z − γAᵀP(Az − y)`` with ``‖AᵀPA‖`` for ``‖A‖²``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from eqdeq_cli.linalg import conjugate_gradient
from eqdeq_cli.physics.base import LinearPhysics, resolve_preconditioner
from eqdeq_cli.utils.checks import as_list, check_int, check_real, is_finite_real


@dataclass
class MapContext:
    """Per-solve quantities of a map: the measurements ``y``, ``Aᵀy`` (``AᵀPy`` for a
    preconditioned map) and, for an anchored map, the anchor ``x₀ = A†y``."""

    y: torch.Tensor
    Aty: torch.Tensor
    x0: torch.Tensor | None = None

    def detached(self) -> "MapContext":
        """The same context cut from the graph that produced it (for a second call of an EI loss,
        ``y`` derives from the first reconstruction)."""
        return MapContext(y=self.y.detach(), Aty=self.Aty.detach(),
                          x0=None if self.x0 is None else self.x0.detach())


class _StepMap(nn.Module):
    """Shared parts: the denoiser, the physics, the positive step ``γ``."""

    def __init__(self, denoiser: nn.Module, physics: LinearPhysics, step_init: float | None,
                 learn_step: bool, anchor: float = 0.0, preconditioned: bool = False,
                 clip: Sequence[float] | None = None) -> None:
        super().__init__()
        check_real("anchor", anchor, low=0.0, high=1.0, low_inclusive=True, high_inclusive=False)
        self.anchor = float(anchor)
        self.clip = _check_clip(clip, physics)
        if not isinstance(denoiser, nn.Module):
            raise TypeError(f"denoiser must be an nn.Module, got {type(denoiser).__name__}")
        if not isinstance(physics, LinearPhysics):
            raise TypeError(f"physics must be a LinearPhysics, got {type(physics).__name__}")
        self.preconditioned = bool(preconditioned)
        self._norm: float | None = None
        self.denoiser = denoiser
        self.physics = physics
        if step_init is None:
            step_init = 1.0 / self.operator_norm() ** 2
        if isinstance(step_init, bool) or not isinstance(step_init, (int, float)) \
                or not (step_init > 0 and math.isfinite(step_init)):
            raise ValueError(f"step_init must be a positive finite number or null, got {step_init!r}")
        log_step = torch.tensor(math.log(float(step_init)))
        if learn_step:
            self.log_step = nn.Parameter(log_step)
        else:
            self.register_buffer("log_step", log_step)

    def operator_norm(self) -> float:
        """``‖A‖₂`` of the physics, or ``‖P^½A‖₂`` for a preconditioned map (computed once)."""
        if self._norm is None:
            norm = self.physics.norm(preconditioned=self.preconditioned)
            if not (norm > 0 and math.isfinite(norm)):
                raise ValueError(f"cannot derive the step from ‖A‖ = {norm}; pass step_init > 0")
            self._norm = float(norm)
        return self._norm

    @property
    def step(self) -> torch.Tensor:
        """The step ``γ = exp(log γ)`` (a 0-d tensor, always positive)."""
        return self.log_step.exp()

    def prepare(self, y: torch.Tensor) -> MapContext:
        """Quantities computed once per solve: ``y``, ``Aᵀy`` and, when anchored, ``A†y``."""
        self.physics.check_measurement(y)
        Pty = self.physics.precondition(y) if self.preconditioned else y
        ctx = MapContext(y=y, Aty=self.physics.A_adjoint(Pty))
        if self.anchor > 0:
            ctx.x0 = self.physics.A_dagger(y)
        return ctx

    def anchored(self, u: torch.Tensor, ctx: MapContext) -> torch.Tensor:
        """The denoiser's input: ``(1 − η) u + η A†y``, or ``u`` itself when ``η = 0``."""
        if self.anchor > 0:
            return (1.0 - self.anchor) * u + self.anchor * ctx.x0
        return u

    def init(self, y: torch.Tensor) -> torch.Tensor:
        """Starting point ``z₀ = A†y`` (FBP, zero-filled inverse FFT, masked image, ...)."""
        return self.physics.A_dagger(y)

    def denoise(self, u: torch.Tensor) -> torch.Tensor:
        """``D_θ(u)``, projected onto ``[low, high]`` when the map clips."""
        out = self.denoiser(u)
        return out if self.clip is None else out.clamp(*self.clip)


def _check_clip(clip: Sequence[float] | None, physics: LinearPhysics) -> tuple[float, float] | None:
    """``clip`` as ``(low, high)``, or ``None``; ``ValueError`` for anything but two finite
    numbers with ``low < high``, or for a physics whose images are complex (no order)."""
    if clip is None:
        return None
    values = as_list(clip)
    if values is None or len(values) != 2 or not all(map(is_finite_real, values)) or not values[0] < values[1]:
        raise ValueError(f"map.clip must be null or [low, high] with low < high (e.g. [0, 1] for images in "
                         f"[0, data_range]), got {clip!r}")
    if getattr(physics, "complex_images", False):
        raise ValueError(f"map.clip needs real images; {type(physics).__name__} reconstructs complex ones "
                         "(two channels): leave map.clip at null")
    return float(values[0]), float(values[1])


class ProxGradMap(_StepMap):
    r"""Proximal-gradient map ``T(z; y) = D_θ(z − γ (AᵀA z − Aᵀy))`` (``AᵀP`` for ``Aᵀ``
    when preconditioned); anchored,
    ``T(z; y) = D_θ((1 − η)(z − γ (AᵀA z − Aᵀy)) + η A†y)``.

    Args:
        denoiser: ``(B, C, H, W) -> (B, C, H, W)`` module ``D_θ``.
        physics: the operator ``A``.
        step_init: initial ``γ``; ``None`` uses ``1/‖A‖²`` (``physics.norm()``; ``1/‖AᵀPA‖``
            when preconditioned).
        learn_step: whether ``γ`` is trained.
        step_max: the largest ``γ`` used (a learned ``γ`` above it is clamped); ``None`` uses
            ``2/‖A‖²`` (``2/‖AᵀPA‖``), the largest step for which the gradient step is
            non-expansive.
        anchor: ``η ∈ [0, 1)``. With ``η > 0`` the denoiser sees
            ``(1 − η)(z − γAᵀ(Az − y)) + η A†y``: the map is anchored to ``A†y`` (an input
            injection, as in Halpern's iteration), so ``Lip_z(T) ≤ (1 − η) Lip(D)`` also on the
            nullspace of ``A``, where the gradient step alone is the identity. ``0`` is the
            plain map.
        preconditioner: ``"auto"`` (``"ramp"`` where the physics has a measurement weight, i.e.
            CT, else ``"none"``), ``"none"`` or ``"ramp"``. With ``"ramp"`` the gradient step is
            ``z − γAᵀP(Az − y)``, ``P`` the physics' measurement weight
            (:meth:`~eqdeq_cli.physics.base.LinearPhysics.precondition`; for CT, FBP's ramp
            filter and view weights, so ``AᵀP = A†``), and ``γ`` defaults to ``1/‖AᵀPA‖``. The
            steps on the measured directions are then far more even, instead of decaying with
            frequency as ``AᵀA``'s eigenvalues do: on 25-view CT at 64², 96 % of ``AᵀA``'s
            eigenvalues lie below 5 % of the largest, against 62 % with ``P`` (59 % below 0.1 %:
            essentially the nullspace).
        clip: ``None`` or ``(low, high)``: project the denoiser's output onto that box (module
            notes).

    Raises:
        ValueError: a step that is not a positive finite number, ``step_init > step_max``,
            ``anchor`` outside ``[0, 1)``, an unknown ``preconditioner``, ``"ramp"`` with a
            physics that has none (MRI and inpainting: ``AᵀA`` is already a projection), or a
            ``clip`` that is not ``low < high`` or given for complex images.

    Example:
        >>> from eqdeq_cli.physics import DenseMatrixPhysics
        >>> p = DenseMatrixPhysics(torch.eye(16), img_shape=(1, 4, 4))
        >>> T = ProxGradMap(nn.Identity(), p)
        >>> y = torch.ones(2, 16); ctx = T.prepare(y)
        >>> torch.allclose(T(T.init(y), ctx), T.init(y))
        True
    """

    def __init__(self, denoiser: nn.Module, physics: LinearPhysics, *, step_init: float | None = None,
                 learn_step: bool = True, step_max: float | None = None, anchor: float = 0.0,
                 preconditioner: str = "none", clip: Sequence[float] | None = None) -> None:
        self.preconditioner = resolve_preconditioner(preconditioner, type(physics), key="map.preconditioner")
        super().__init__(denoiser, physics, step_init, learn_step, anchor,
                         preconditioned=self.preconditioner == "ramp", clip=clip)
        if step_max is None:
            step_max = 2.0 / self.operator_norm() ** 2
        check_real("step_max", step_max, low=0.0)
        if float(self.log_step.detach().exp()) > step_max * (1 + 1e-6):
            bound = " (2/‖AᵀPA‖ with the ramp preconditioner)" if self.preconditioned else ""
            raise ValueError(f"step_init={float(self.log_step.detach().exp()):.6g} exceeds "
                             f"step_max={step_max:.6g}{bound}")
        self.step_max = float(step_max)

    @property
    def step(self) -> torch.Tensor:
        """The step ``γ = min(exp(log γ), step_max)`` (a 0-d tensor, always positive)."""
        return self.log_step.exp().clamp(max=self.step_max)

    def normal(self, z: torch.Tensor) -> torch.Tensor:
        """``AᵀA z``, or ``AᵀPA z`` for a preconditioned map."""
        return self.physics.AtPA(z) if self.preconditioned else self.physics.AtA(z)

    def data_step(self, z: torch.Tensor, ctx: MapContext) -> torch.Tensor:
        """The denoiser's input, ``(B, C, H, W)``: the gradient step ``z − γ(AᵀA z − Aᵀy)``
        (``AᵀP`` for ``Aᵀ`` when preconditioned), mixed with ``A†y`` when anchored."""
        gamma = self.step.to(z.dtype)
        return self.anchored(z - gamma * (self.normal(z) - ctx.Aty), ctx)

    def data_step_vjp(self, w: torch.Tensor) -> torch.Tensor:
        r"""``(∂u/∂z)ᵀ w = (1 − η)(I − γAᵀA) w`` (``AᵀPA`` when preconditioned) in closed
        form (the Jacobian of the data step is symmetric), without autograd; ``w`` of shape
        ``(B, C, H, W)``. Exact when ``A_adjoint`` is the adjoint of ``A`` and ``P`` symmetric."""
        with torch.no_grad():
            gamma = self.step.to(w.dtype)
            v = w - gamma * self.normal(w)
            return (1.0 - self.anchor) * v if self.anchor > 0 else v

    def forward(self, z: torch.Tensor, ctx: MapContext) -> torch.Tensor:
        return self.denoise(self.data_step(z, ctx))


class HQSMap(_StepMap):
    r"""Half-quadratic-splitting map ``T(z; y) = D_θ(prox_{γf}(z))`` with
    ``f(x) = ½‖Ax − y‖²``, i.e. ``prox_{γf}(z) = (AᵀA + I/γ)⁻¹(Aᵀy + z/γ)``.

    Operators with a closed-form proximal map (MRI, inpainting) override
    ``physics.prox_data`` and that is used; otherwise the system is solved here by
    ``cg_iters`` conjugate-gradient steps started at ``z``, reusing the ``Aᵀy`` of the
    context (computed once per solve). CG is differentiated by autograd.

    Args:
        denoiser: ``(B, C, H, W) -> (B, C, H, W)`` module ``D_θ``.
        physics: the operator ``A``.
        step_init: initial ``γ``; ``None`` uses ``1/‖A‖²``.
        learn_step: whether ``γ`` is trained.
        cg_iters: conjugate-gradient steps per application (when no closed form exists).
        cg_tol: relative residual at which CG stops early.
        anchor: ``η ∈ [0, 1)``: the denoiser sees ``(1 − η) prox_{γf}(z) + η A†y`` (as in
            :class:`ProxGradMap`; the proximal map is also the identity on the nullspace).
        clip: ``None`` or ``(low, high)``: project the denoiser's output onto that box.
    """

    def __init__(self, denoiser: nn.Module, physics: LinearPhysics, *, step_init: float | None = None,
                 learn_step: bool = True, cg_iters: int = 10, cg_tol: float = 1e-6,
                 anchor: float = 0.0, clip: Sequence[float] | None = None) -> None:
        super().__init__(denoiser, physics, step_init, learn_step, anchor, clip=clip)
        check_int("cg_iters", cg_iters, 1)
        if isinstance(cg_tol, bool) or not isinstance(cg_tol, (int, float)) or not cg_tol >= 0:
            raise ValueError(f"cg_tol must be a number >= 0, got {cg_tol!r}")
        self.cg_iters = cg_iters
        self.cg_tol = float(cg_tol)
        self.closed_form_prox = type(physics).prox_data is not LinearPhysics.prox_data

    def prox(self, z: torch.Tensor, ctx: MapContext) -> torch.Tensor:
        """``prox_{γf}(z) = argmin_x ½‖Ax − y‖² + 1/(2γ)‖x − z‖²``."""
        gamma = self.step.to(z.dtype)
        if self.closed_form_prox:
            return self.physics.prox_data(z, ctx.y, gamma)
        return conjugate_gradient(lambda v: self.physics.AtA(v) + v / gamma, ctx.Aty + z / gamma,
                                  x0=z, n_iter=self.cg_iters, tol=self.cg_tol)

    def forward(self, z: torch.Tensor, ctx: MapContext) -> torch.Tensor:
        return self.denoise(self.anchored(self.prox(z, ctx), ctx))
