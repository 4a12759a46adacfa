r"""Learning-rate schedules, built from ``configs/trainer/scheduler/*.yaml``.

Each factory is instantiated with ``_partial_: true`` and then called as
``factory(optimizer, max_steps=N)``; it returns a ``LambdaLR`` stepped once per
training step. The multiplier of the base learning rate at step ``t`` is

* ``constant``: :math:`1` (after an optional linear warm-up);
* ``warmup_cosine``: :math:`t/w` for :math:`t < w`, then
  :math:`r + (1 - r)\,\tfrac12\big(1 + \cos(\pi\,\tfrac{t - w}{N - w})\big)` with
  :math:`r` = ``min_lr_ratio``.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..utils.checks import check_int, check_real


class _Constant:
    """Picklable multiplier: linear warm-up over ``warmup_steps``, then 1."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return 1.0


class _WarmupCosine:
    """Picklable multiplier: linear warm-up, then cosine decay to ``min_lr_ratio``."""

    def __init__(self, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(optimizer: torch.optim.Optimizer, *, max_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Constant learning rate after ``warmup_steps`` of linear warm-up (``max_steps`` unused).

    Raises ``ValueError`` naming ``warmup_steps`` unless it is an integer >= 0."""
    check_int("warmup_steps", warmup_steps, 0)
    return LambdaLR(optimizer, _Constant(warmup_steps))


def warmup_cosine(optimizer: torch.optim.Optimizer, *, max_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` × base at ``max_steps``.

    Raises ``ValueError`` naming the option unless ``warmup_steps`` is an integer >= 0 and
    ``min_lr_ratio`` a real number in [0, 1]."""
    check_int("warmup_steps", warmup_steps, 0)
    check_real("min_lr_ratio", min_lr_ratio, low=0.0, high=1.0, low_inclusive=True)
    return LambdaLR(optimizer, _WarmupCosine(warmup_steps, max_steps, min_lr_ratio))
