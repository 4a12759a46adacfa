r"""Checks to run before training: does the chosen symmetry group fit the operator?

An equivariant-imaging term learns the nullspace of ``A`` only from a group that ``A``
is *not* equivariant to (see :mod:`eqdeq_cli.analysis.identifiability`). Training MRI
with a Cartesian mask under shifts, for example, runs without error and quietly gives
the result of measurement consistency alone. :func:`check_group` catches that at
start-up, in a few hundred milliseconds, before any training time is spent.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from eqdeq_cli.groups.base import Group
from eqdeq_cli.physics.base import LinearPhysics

from .identifiability import identifiability_warning

log = logging.getLogger(__name__)

__all__ = ["ei_terms", "check_group"]


def ei_terms(loss: Any) -> list[str]:
    """Names of the terms of ``loss`` that use the symmetry group with a non-zero weight.

    ``loss`` is a :class:`~eqdeq_cli.losses.CompositeLoss` (its ``terms`` mapping) or a
    single term; a term uses the group when it is an :class:`~eqdeq_cli.losses.EILoss`.
    A weight ``"auto"`` counts as non-zero.
    """
    from eqdeq_cli.losses import EILoss

    terms = getattr(loss, "terms", None)
    items = dict(terms.items()) if terms is not None else {type(loss).__name__: loss}
    return [name for name, term in items.items() if isinstance(term, EILoss) and term.weight != 0.0]


def check_group(physics: LinearPhysics, group: Group | None, loss: Any, *, n_samples: int = 4,
                seed: int = 0, threshold: float = 0.05, cg_iter: int = 100) -> str | None:
    """The warning to show before training, or ``None`` when there is nothing to warn about.

    Returns ``None`` when ``loss`` has no EI term (MC-only, supervised: the group is
    unused) or when transformed nullspace images are visible to ``A``
    (:func:`~eqdeq_cli.analysis.identifiability`, mean ``ρ ≥ threshold``). Otherwise
    returns :func:`~eqdeq_cli.analysis.identifiability_warning`'s message, which names the
    built-in groups that would work. The check draws ``n_samples`` random images from a
    CPU generator seeded with ``seed`` (it does not touch the global RNG) and does not
    log the message itself; the caller decides (``log.warning(message)``). It works in
    float32 with ``cg_iter`` conjugate-gradient steps for the nullspace projection (its
    cost: docs/experiments.md, section 4); the verdicts it must tell apart differ by
    orders of magnitude (``ρ ≈ 1e-7`` for an equivariant operator in float32, ``ρ`` of
    order 0.5–1 for a useful group), so this precision is ample.

    Example: ``message = check_group(comps.physics, comps.group, comps.loss)``.
    """
    names = ei_terms(loss)
    if not names:
        return None
    if group is None:
        raise ValueError(f"loss term(s) {', '.join(names)} need a symmetry group, got group=None; "
                         "set group=shifts | rotations | reflections | scalings")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    message = identifiability_warning(physics, group, n_samples=n_samples, generator=generator, threshold=threshold,
                                      cg_iter=cg_iter, dtype=torch.float32)
    if message is not None:
        log.debug("preflight: %s", message)
    return message
