r"""Base class of loss terms and the normalisation they share.

Every term is a per-sample squared norm (or an unbiased estimate of one), averaged over
the batch and divided by the number of image elements ``n = C·H·W``:

.. math::  L = \frac{1}{B}\sum_{b=1}^{B} \frac{1}{n}\,\|r_b\|^2 .

One common constant for image-domain terms (EI, supervised) and measurement-domain terms
(MC, SURE), so the relative weights mean what the maths says: ``L = MC + α·EI`` with
the same ``α`` as in ``‖A x₁ − y‖² + α‖x₃ − x₂‖²``.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from ..groups import Group
from ..physics import LinearPhysics
from ..physics.base import check_preconditioner, resolve_preconditioner
from ..utils.checks import check_real

log = logging.getLogger(__name__)

Reconstructor = Callable[[torch.Tensor], torch.Tensor]


class LossTerm(nn.Module):
    """A weighted term of a :class:`~eqdeq_cli.losses.CompositeLoss`.

    Subclasses implement :meth:`per_sample`, returning a ``(B,)`` tensor already divided
    by ``n = C·H·W``; :meth:`forward` is its batch mean. ``weight`` is a number ≥ 0, or
    ``"auto"`` for terms that define :meth:`auto_weight`.
    """

    needs_ground_truth: bool = False
    supports_auto_weight: bool = False

    def __init__(self, weight: float | str = 1.0) -> None:
        super().__init__()
        if isinstance(weight, str):
            if weight != "auto" or not self.supports_auto_weight:
                valid = "a number ≥ 0 or 'auto'" if self.supports_auto_weight else "a number ≥ 0"
                raise ValueError(f"{type(self).__name__}: weight must be {valid}, got {weight!r}")
        else:
            check_real(f"{type(self).__name__}: weight", weight, low=0.0, low_inclusive=True)
        self.weight = weight if isinstance(weight, str) else float(weight)
        self.resolved_weight: float | None = None if isinstance(weight, str) else float(weight)

    def auto_weight(self, physics: LinearPhysics, group: Group | None = None) -> float:
        raise NotImplementedError

    def resolve_weight(self, physics: LinearPhysics, group: Group | None = None) -> float:
        """The numeric weight; ``"auto"`` is resolved on first use and kept in ``resolved_weight``."""
        if self.resolved_weight is None:
            self.resolved_weight = float(self.auto_weight(physics, group))
        return self.resolved_weight

    def check(self, physics: LinearPhysics) -> None:
        """Raise ``ValueError`` now for a term that cannot be computed with ``physics`` (called at
        start-up, so that a bad combination fails before any training); nothing by default."""

    def per_sample(self, *, y: torch.Tensor, x1: torch.Tensor, f: Reconstructor, physics: LinearPhysics,
                   group: Group | None, x: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *, y: torch.Tensor, x1: torch.Tensor, f: Reconstructor, physics: LinearPhysics,
                group: Group | None = None, x: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Batch mean of :meth:`per_sample` (unweighted)."""
        return self.per_sample(y=y, x1=x1, f=f, physics=physics, group=group, x=x, generator=generator).mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight!r}"


class WeightedDataTerm(LossTerm):
    """A measurement-domain term that can measure residuals in the norm of the physics'
    measurement weight ``P`` (:meth:`~eqdeq_cli.physics.base.LinearPhysics.precondition`; for CT,
    FBP's ramp filter and view weights), scaled by ``c = trace(AᵀA) / trace(AᵀPA)`` (Hutchinson
    estimates, computed on first use and logged) so that its scale, and with it the EI loss's
    ``auto`` weight, stays that of the plain term.

    ``preconditioner``: ``"none"``, ``"ramp"``, or ``"auto"`` (``ramp`` where the physics has a
    measurement weight, i.e. CT). ``key`` names the config key in error messages.

    Raises:
        ValueError: an unknown ``preconditioner``; ``"ramp"`` with a physics that has none (on
            first use).
    """

    key = "preconditioner"

    def __init__(self, weight: float | str = 1.0, preconditioner: str = "none") -> None:
        super().__init__(weight)
        check_preconditioner(preconditioner, f"{type(self).__name__}: ")
        self.preconditioner = preconditioner
        self.scale: float | None = None

    def weighted(self, physics: LinearPhysics) -> bool:
        """Whether the residual is measured in the norm of ``P`` under ``physics``."""
        return resolve_preconditioner(self.preconditioner, type(physics), f"{type(self).__name__}: ",
                                      self.key) == "ramp"

    def check(self, physics: LinearPhysics) -> None:
        """Resolves the preconditioner: ``ramp`` with a physics without a measurement weight raises."""
        self.weighted(physics)

    def weight_scale(self, physics: LinearPhysics) -> float:
        """``c = trace(AᵀA) / trace(AᵀPA)``, estimated on first use."""
        if self.scale is None:
            self.scale = physics.mean_eigenvalue() / physics.mean_eigenvalue(preconditioned=True)
            log.info("%s in the ramp-weighted norm, scaled by trace(AᵀA)/trace(AᵀPA) = %.4g",
                     type(self).__name__, self.scale)
        return self.scale


def sq_norm(r: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm ``‖r_b‖²``, shape ``(B,)``."""
    return r.reshape(r.shape[0], -1).pow(2).sum(dim=1)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ``⟨a_b, b_b⟩``, shape ``(B,)``."""
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def image_elements(x1: torch.Tensor) -> int:
    """``n = C·H·W`` of a batch of images."""
    return x1[0].numel()

