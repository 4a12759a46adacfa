"""A weighted sum of loss terms sharing one reconstruction ``x₁ = f(y)``."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..groups import Group
from ..physics import LinearPhysics
from .base import LossTerm, Reconstructor


class CompositeLoss(nn.Module):
    r"""``L = Σₖ wₖ Lₖ(y, x₁, …)`` with ``x₁ = f(y)`` computed once and handed to every term.

    Args:
        terms: name → :class:`~eqdeq_cli.losses.base.LossTerm` (e.g. ``{"mc": MCLoss(),
            "ei": EILoss()}``); a config sets one weight as ``loss.terms.ei.weight=0.05``.
            Terms with weight 0 are skipped (not computed, not logged).

    ``forward(f, y, physics, group, x=None, generator=None) -> (total, logs)`` where
    ``logs`` maps each term's name to its *unweighted* value and ``"total"`` to the
    weighted sum (Python floats). ``f`` is the reconstructor (the DEQ), ``generator`` a
    CPU generator for group elements, noise and probes.
    """

    def __init__(self, *, terms: Mapping[str, LossTerm]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CompositeLoss needs at least one term, got none")
        for name, term in terms.items():
            if not isinstance(term, LossTerm):
                raise ValueError(f"CompositeLoss: term {name!r} must be a LossTerm "
                                 f"(MCLoss, EILoss, SURELoss, SupervisedLoss), got {type(term).__name__}")
            if name == "total" or "." in name:
                raise ValueError(f"CompositeLoss: {name!r} cannot name a term ('total' is reserved, no dots)")
        self.terms = nn.ModuleDict(dict(terms.items()))

    @property
    def needs_ground_truth(self) -> bool:
        """Whether ``forward`` needs the ground truth ``x`` (a supervised term is present)."""
        return any(term.needs_ground_truth for term in self.terms.values())

    def check(self, physics: LinearPhysics) -> None:
        """Each term's :meth:`~eqdeq_cli.losses.base.LossTerm.check`: ``ValueError`` for a term that
        cannot be computed with ``physics``."""
        for term in self.terms.values():
            term.check(physics)

    def forward(self, f: Reconstructor, y: torch.Tensor, physics: LinearPhysics, group: Group | None = None,
                x: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if x is None and self.needs_ground_truth:
            names = [n for n, t in self.terms.items() if t.needs_ground_truth]
            raise ValueError(f"loss term(s) {', '.join(names)} need ground-truth images x, got x=None; "
                             "supervised training needs a data set with images")
        x1 = f(y)
        total = torch.zeros((), dtype=x1.dtype, device=x1.device)
        logs: dict[str, float] = {}
        for name, term in self.terms.items():
            weight = term.resolve_weight(physics, group)
            if weight == 0.0:
                continue
            value = term(y=y, x1=x1, f=f, physics=physics, group=group, x=x, generator=generator)
            total = total + weight * value
            logs[name] = float(value.detach())
        logs["total"] = float(total.detach())
        return total, logs
