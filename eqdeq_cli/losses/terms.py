r"""Measurement consistency, equivariant imaging and supervised terms.

With ``x₁ = f(y)`` computed once by :class:`~eqdeq_cli.losses.CompositeLoss`, and
``n = C·H·W`` (see :mod:`eqdeq_cli.losses.base`):

* MC:          ``‖A x₁ − y‖² / n`` (or in the ramp-weighted norm ``‖·‖²_P``, CT)
* EI:          ``x₂ = T_g x₁``, ``x₃ = f(A x₂ + ε')``, ``‖x₃ − x₂‖² / n``
* supervised:  ``‖x₁ − x‖² / n``

each averaged over the batch.
"""
from __future__ import annotations

import logging

import torch

from ..groups import Group
from ..physics import LinearPhysics
from .base import LossTerm, Reconstructor, WeightedDataTerm, dot, image_elements, sq_norm

log = logging.getLogger(__name__)


class MCLoss(WeightedDataTerm):
    r"""Measurement consistency ``‖A x₁ − y‖² / n`` per sample (``n = C·H·W``).

    With ``preconditioner="ramp"`` (or ``"auto"`` with a physics that has a measurement weight,
    i.e. CT; ``"auto"`` is the plain term otherwise) the residual ``r = A x₁ − y`` is measured in the norm of
    the physics' measurement weight ``P`` (:meth:`~eqdeq_cli.physics.base.LinearPhysics.precondition`;
    for CT, FBP's ramp filter and view weights): ``c ⟨r, P r⟩ / n``, a weighted least-squares
    data term that counts every measured frequency alike instead of the low ones most, with
    ``c = trace(AᵀA) / trace(AᵀPA)`` (:class:`~eqdeq_cli.losses.base.WeightedDataTerm`).

    With noisy measurements its minimiser overfits the noise; use :class:`SURELoss` there.

    Raises:
        ValueError: an unknown ``preconditioner``, or ``"ramp"`` with a physics that has none
            (on first use).
    """

    key = "loss.terms.mc.preconditioner"

    def __init__(self, *, weight: float = 1.0, preconditioner: str = "none") -> None:
        super().__init__(weight, preconditioner)

    def per_sample(self, *, y: torch.Tensor, x1: torch.Tensor, f: Reconstructor, physics: LinearPhysics,
                   group: Group | None, x: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
        r = physics.A(x1) - y
        if self.weighted(physics):
            return self.weight_scale(physics) * dot(r, physics.precondition(r)) / image_elements(x1)
        return sq_norm(r) / image_elements(x1)

    def extra_repr(self) -> str:
        return f"weight={self.weight!r}, preconditioner={self.preconditioner!r}"


class EILoss(LossTerm):
    r"""Equivariant imaging ``‖x₃ − x₂‖² / n`` with ``x₂ = T_g x₁``, ``x₃ = f(A x₂ + ε')``.

    ``g`` is drawn per sample from ``group`` with ``generator``. ``ε'`` is drawn from
    ``physics.noise`` (same generator) when ``add_noise``; it enters as
    ``A x₂ + (N(A x₂) − A x₂)`` with the bracket detached, so the value is the noisy
    measurement and the gradient reaches ``x₂`` also for Poisson noise (whose sampling
    is not differentiable).

    Gradients flow through ``x₂`` into the first call ``x₁ = f(y)`` (the DEQ's
    modularity makes that plain autograd); ``detach_x2=True`` cuts that path, so only the
    second call is trained by this term.

    ``weight="auto"``: ``α = physics.mean_eigenvalue()`` (``trace(AᵀA)/n``), the scale of
    the data term relative to an image-domain term: a constant such as 1 lets EI swamp a
    weak data term (CT with ``‖A‖ = 1`` has ``α ≈ 0.01``), divided by the group's
    :meth:`~eqdeq_cli.groups.Group.energy_gain` (1 for rotations, shifts and reflections; the
    mean ``s²`` of downscalings, whose ``x₂`` carries that share of ``x₁``'s energy).
    Resolved on first use, logged, then readable as ``resolved_weight``.
    """

    supports_auto_weight = True

    def __init__(self, *, weight: float | str = "auto", detach_x2: bool = False, add_noise: bool = True) -> None:
        super().__init__(weight)
        self.detach_x2 = bool(detach_x2)
        self.add_noise = bool(add_noise)

    def auto_weight(self, physics: LinearPhysics, group: Group | None = None) -> float:
        alpha = float(physics.mean_eigenvalue())
        gain = 1.0 if group is None else float(group.energy_gain())
        if gain == 1.0:
            log.info("EI weight 'auto' resolved to the mean eigenvalue of AᵀA: %.4g", alpha)
            return alpha
        log.info("EI weight 'auto' resolved to the mean eigenvalue of AᵀA over the group's energy gain: "
                 "%.4g / %.4g = %.4g", alpha, gain, alpha / gain)
        return alpha / gain

    def per_sample(self, *, y: torch.Tensor, x1: torch.Tensor, f: Reconstructor, physics: LinearPhysics,
                   group: Group | None, x: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
        if group is None:
            raise ValueError("EILoss needs a symmetry group (config group=shifts | rotations | reflections "
                             "| scalings), got None")
        x2, _ = group(x1.detach() if self.detach_x2 else x1, generator=generator)
        z2 = physics.A(x2)
        if self.add_noise:
            z2_const = z2.detach()
            z2 = z2 + (physics.noise(z2_const, generator=generator) - z2_const)
        x3 = f(z2)
        return sq_norm(x3 - x2) / image_elements(x1)

    def extra_repr(self) -> str:
        return f"weight={self.weight!r}, detach_x2={self.detach_x2}, add_noise={self.add_noise}"


class SupervisedLoss(LossTerm):
    r"""Supervised ``‖x₁ − x‖² / n`` per sample: a baseline that needs ground truth ``x``."""

    needs_ground_truth = True

    def __init__(self, *, weight: float = 1.0) -> None:
        super().__init__(weight)

    def per_sample(self, *, y: torch.Tensor, x1: torch.Tensor, f: Reconstructor, physics: LinearPhysics,
                   group: Group | None, x: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
        if x is None:
            raise ValueError("SupervisedLoss needs the ground-truth images x, got x=None "
                             "(use an unsupervised loss: loss=ei, rei or mc)")
        if x.shape != x1.shape:
            raise ValueError(f"SupervisedLoss: ground truth of shape {tuple(x.shape)} does not match "
                             f"the reconstruction's {tuple(x1.shape)}")
        return sq_norm(x1 - x) / image_elements(x1)
