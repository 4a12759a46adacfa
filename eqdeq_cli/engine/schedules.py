r"""Learning-rate schedules, built from ``configs/trainer/scheduler/*.yaml``.

Each factory is instantiated with ``_partial_: true`` and then called as
``factory(optimizer, max_steps=N)``; it returns a ``LambdaLR`` stepped once per
training step. The multiplier of the base learning rate at step ``t`` is

* ``constant``: :math:`1` (after an optional linear warm-up);
* ``warmup_cosine``: :math:`t/w` for :math:`t < w`, then
  :math:`r + (1 - r)\,\tfrac12\big(1 + \cos(\pi\,\tfrac{t - w}{N - w})\big)` with
  :math:`r` = ``min_lr_ratio``.

The horizon :math:`N` is the run's current ``trainer.max_steps``: a run resumed with another
``max_steps`` follows the cosine of the new horizon from its step on (:func:`follow_horizon`).
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


def follow_horizon(scheduler: LambdaLR, max_steps: int) -> tuple[int, float, float] | None:
    """Make a schedule loaded from a checkpoint end at ``max_steps``.

    ``LambdaLR.load_state_dict`` restores the multipliers' attributes, so a warm-up + cosine
    schedule keeps the horizon of the run that wrote the checkpoint. Here every multiplier
    with a ``max_steps`` is set to the new horizon, and the optimizer's current learning rate
    (that of the next step, ``scheduler.last_epoch``) to the new schedule's value there: from
    the resume step on, the learning rates are those of a run started with ``max_steps``.

    Returns ``(old horizon, old lr, new lr)`` (learning rates of the first parameter group)
    when the horizon changed; ``None``, with nothing touched, when it did not or the schedule
    has none (``constant``), so a resume with the same ``max_steps`` stays bit-identical."""
    lambdas = list(getattr(scheduler, "lr_lambdas", []))
    old = next((f.max_steps for f in lambdas if getattr(f, "max_steps", max_steps) != max_steps), None)
    if old is None:
        return None
    for f in lambdas:
        if hasattr(f, "max_steps"):
            f.max_steps = max_steps
    groups = scheduler.optimizer.param_groups
    before = float(groups[0]["lr"])
    for group, base, f in zip(groups, scheduler.base_lrs, lambdas):
        group["lr"] = base * f(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr() returns
    return int(old), before, float(groups[0]["lr"])


def tolerance_at(step: int, *, max_steps: int, start: float, end: float, ramp: float) -> float:
    r"""The training forward solve's tolerance at ``step`` (0-based) of a ``max_steps`` run.

    Geometric interpolation from ``start`` at step 0 to ``end`` at step ``ramp × max_steps``,
    then ``end``: :math:`\mathrm{tol}_t = \mathrm{start}^{1-p}\,\mathrm{end}^{p}`,
    :math:`p = \min(1, t / (\mathrm{ramp}\,N))`. Early steps, whose map changes quickly,
    stop their solves sooner; the network trains at its fixed point to ``end`` for the last
    ``(1 − ramp)`` of the run. A function of the step and the current horizon only, so a
    resumed run follows the same tolerances (a changed ``max_steps`` rescales the ramp, as
    :func:`follow_horizon` does the learning rate).

    Raises ``ValueError`` unless ``start`` and ``end`` are > 0 and ``ramp`` is in (0, 1]."""
    check_real("trainer.forward_tol_start", start, low=0.0)
    check_real("solver.forward.tol", end, low=0.0)
    check_real("trainer.forward_tol_ramp", ramp, low=0.0, high=1.0)
    progress = min(1.0, step / max(1.0, ramp * max_steps))
    return float(start) ** (1.0 - progress) * float(end) ** progress  # exactly start at 0 and end from 1
