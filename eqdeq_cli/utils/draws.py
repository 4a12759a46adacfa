"""Random draws that are the same on every device: drawn on the CPU, then moved.

A draw from ``generator`` (a CPU ``torch.Generator``; the global CPU RNG when ``None``)
does not depend on where the result lives, so a run, its resume and its several-process
version see the same numbers on a CPU and on a GPU. Under
:class:`~eqdeq_cli.engine.distributed.GlobalBatchDraws` these calls are the ones it keeps
in step across processes.
"""
from __future__ import annotations

from typing import Sequence

import torch


def randn_on_cpu(shape: Sequence[int], generator: torch.Generator | None, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, draw_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``N(0, I)`` of ``shape``, drawn on the CPU in ``draw_dtype`` (default ``dtype``) and
    returned on ``device`` in ``dtype``. Drawing in float64 and casting gives other numbers
    than drawing in float32: each caller keeps the precision its stream was defined with."""
    z = torch.randn(tuple(shape), generator=generator, dtype=draw_dtype or dtype, device="cpu")
    return z.to(device=device, dtype=dtype)


def randn_like(t: torch.Tensor, generator: torch.Generator | None, *,
               draw_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``N(0, I)`` shaped like ``t`` (its dtype and device), drawn on the CPU (see :func:`randn_on_cpu`)."""
    return randn_on_cpu(t.shape, generator, dtype=t.dtype, device=t.device, draw_dtype=draw_dtype)


def poisson_like(rate: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Poisson counts with mean ``rate`` (≥ 0), drawn on the CPU and moved to ``rate``'s device."""
    return torch.poisson(rate.detach().cpu(), generator=generator).to(rate.device)
