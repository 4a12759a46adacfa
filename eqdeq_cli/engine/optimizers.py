"""The optimizer and the learning-rate schedule of a run, built from their config nodes.

``trainer.optimizer`` is a ``_partial_`` node of any ``torch.optim`` class, ``trainer.scheduler``
one of :mod:`eqdeq_cli.engine.schedules`. Both are built with plain Python values
(``_convert_="all"``): an option given as a config list (``betas=[0.9, 0.99]``) would
otherwise stay an OmegaConf ``ListConfig`` inside the optimizer's ``param_groups``, and so
inside every checkpoint, which ``torch.load(weights_only=True)`` then refuses to read.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from hydra.utils import instantiate


def build_optimizer(node: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``node`` (a ``_partial_`` optimizer config) called with ``params``."""
    return instantiate(node, _convert_="all")(params)


def build_scheduler(node: Any, optimizer: torch.optim.Optimizer, max_steps: int) -> Any:
    """``node`` (a ``_partial_`` schedule config) called as ``factory(optimizer, max_steps=max_steps)``."""
    return instantiate(node, _convert_="all")(optimizer, max_steps=max_steps)
