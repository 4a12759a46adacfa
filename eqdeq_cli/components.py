"""The components of a run, built from the config: data source, physics, group, denoiser, DEQ, loss
and an optional regulariser of the equilibrium.

Every component is built by ``hydra.utils.instantiate`` from its node's ``_target_``,
so adding an option is adding a class and a YAML file; nothing here names a class.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from .data import DataSource
from .deq import DEQ, build_reconstructor
from .physics.base import LinearPhysics, resolve_preconditioner

log = logging.getLogger(__name__)


@dataclass
class Components:
    """Everything a run is made of."""

    data: DataSource
    physics: LinearPhysics
    group: Any
    denoiser: nn.Module
    deq: DEQ
    loss: Any
    #: A regulariser of the equilibrium (``cfg.regularizer``), or ``None``.
    regularizer: Any = None


def build_data(cfg: DictConfig) -> DataSource:
    """The data source of ``cfg.data``."""
    return instantiate(cfg.data)


def build_physics(cfg: DictConfig, data: DataSource) -> LinearPhysics:
    """The operator of ``cfg.physics``, checked against the data's image shape ``(C, H, W)``."""
    physics = instantiate(cfg.physics)
    if not isinstance(physics, LinearPhysics):
        raise ValueError(f"physics config builds {type(physics).__name__}, not a LinearPhysics")
    expected = (int(data.channels), int(data.img_size), int(data.img_size))
    if tuple(physics.img_shape) != expected:
        raise ValueError(
            f"the operator {type(physics).__name__} works on images of shape {tuple(physics.img_shape)} (C, H, W) "
            f"but the data has {expected}; set physics.img_size / physics.channels to data.img_size / data.channels")
    return physics


def build_group(cfg: DictConfig) -> Any:
    """The symmetry group of ``cfg.group``."""
    return instantiate(cfg.group)


def build_denoiser(cfg: DictConfig, channels: int) -> nn.Module:
    """The denoiser of ``cfg.model`` for ``channels`` image channels."""
    return instantiate(cfg.model, channels=channels)


def build_loss(cfg: DictConfig) -> Any:
    """The training loss of ``cfg.loss`` (a ``CompositeLoss``)."""
    return instantiate(cfg.loss)


def build_regularizer(cfg: DictConfig) -> Any:
    """The regulariser of ``cfg.regularizer`` (``eqdeq train regularizer=jacobian``), or ``None``
    when the config has none (the default)."""
    node = cfg.get("regularizer")
    return instantiate(node) if node is not None and "_target_" in node else None


def unweighted_data_terms(loss: Any, physics: Any) -> list[str]:
    """Names of the loss's data-consistency terms (MC, SURE) that are not measured in the norm of
    the physics' ramp weight."""
    from .losses.base import WeightedDataTerm

    return [name for name, term in getattr(loss, "terms", {}).items()
            if term.weight != 0 and isinstance(term, WeightedDataTerm)
            and resolve_preconditioner(term.preconditioner, type(physics)) == "none"]


def build_components(cfg: DictConfig) -> Components:
    """Build data, physics, group, denoiser, DEQ, loss and regulariser from the composed config.

    The denoiser's initial weights are drawn from torch's global RNG: seed it first.
    """
    data = build_data(cfg)
    physics = build_physics(cfg, data)
    group = build_group(cfg)
    denoiser = build_denoiser(cfg, channels=int(data.channels))
    deq = build_reconstructor(cfg, physics, denoiser)
    loss = build_loss(cfg)
    regularizer = build_regularizer(cfg)
    fmap = getattr(deq, "fmap", None)
    preconditioned = bool(getattr(fmap, "preconditioned", False))
    log.info("data %s | physics %s | group %s | denoiser %s (%d parameters) | map %s%s | grad %s%s",
             data, type(physics).__name__, type(group).__name__, type(denoiser).__name__,
             sum(p.numel() for p in denoiser.parameters()), type(fmap).__name__,
             " (ramp-preconditioned)" if preconditioned else "", deq.grad,
             f" | regularizer {regularizer!r}" if regularizer is not None else "")
    if preconditioned:
        plain = unweighted_data_terms(loss, physics)
        if plain:
            log.warning("the map's data step is ramp-preconditioned but the loss's data term %s is not; on brain "
                        "slices this pairing learned nothing (docs/experiments.md, section 6): use %s",
                        ", ".join(f"'{name}'" for name in plain),
                        " ".join(f"loss.terms.{name}.preconditioner=auto" for name in plain)
                        + ", or map.preconditioner=none")
    return Components(data=data, physics=physics, group=group, denoiser=denoiser, deq=deq, loss=loss,
                      regularizer=regularizer)
