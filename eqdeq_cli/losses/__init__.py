"""Training losses: measurement consistency, equivariant imaging, SURE (robust EI), supervised.

Every term is a per-sample squared norm divided by ``n = C·H·W`` and averaged over the
batch (:mod:`eqdeq_cli.losses.base`); :class:`CompositeLoss` sums weighted terms.
"""
from .base import LossTerm
from .composite import CompositeLoss
from .sure import SURELoss
from .terms import EILoss, MCLoss, SupervisedLoss

__all__ = ["LossTerm", "CompositeLoss", "MCLoss", "EILoss", "SURELoss", "SupervisedLoss"]
