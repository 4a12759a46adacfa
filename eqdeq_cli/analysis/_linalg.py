"""Jacobian–vector products of a batched map, and per-sample inner products.

A *batched map* ``fn: (B, ...) -> (B, ...)`` treats the samples independently (a CNN
in eval mode: no batch statistics), so its Jacobian at ``x`` is block diagonal and
every quantity below is computed per sample.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..utils import draws

Fn = Callable[[torch.Tensor], torch.Tensor]


def bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ``⟨a_i, b_i⟩``: ``(B, ...) × (B, ...) -> (B,)``."""
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def bnorm(a: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean norm ``‖a_i‖₂``: ``(B, ...) -> (B,)``."""
    return a.reshape(a.shape[0], -1).norm(dim=1)


def bscale(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Multiply sample ``i`` of ``a`` by ``s[i]``."""
    return a * s.reshape((-1,) + (1,) * (a.ndim - 1))


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal tensor shaped like ``x``, drawn in float64 on the CPU from ``generator``
    (reproducible across devices), then moved to ``x``'s device and dtype."""
    return draws.randn_like(x, generator, draw_dtype=torch.float64)


def bnormalize(a: torch.Tensor, eps: float = 1e-30) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a_i / ‖a_i‖, ‖a_i‖)`` per sample (zero vectors stay zero)."""
    n = bnorm(a)
    return bscale(a, 1.0 / n.clamp_min(eps)), n


class Linearization:
    r"""The Jacobian ``J = ∂fn/∂x`` at a point, as products ``J v`` and ``Jᵀ u``.

    ``fn`` is evaluated once. ``Jᵀ u`` is a vector–Jacobian product (reverse mode);
    ``J v`` uses the double-backward identity ``J v = ∂/∂w ⟨Jᵀ w, v⟩`` (``Jᵀw`` is
    linear in ``w``), which works for any module autograd can differentiate twice —
    including hooks and parametrisations that forward-mode AD does not support. The
    graph is kept for repeated products; gradients of parameters are not touched.
    """

    def __init__(self, fn: Fn, x: torch.Tensor) -> None:
        self.x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            self.out = fn(self.x)
            if self.out.shape[0] != x.shape[0]:
                raise ValueError(f"fn must keep the batch dimension: input {tuple(x.shape)}, "
                                 f"output {tuple(self.out.shape)}")
            self._w = torch.zeros_like(self.out, requires_grad=True)
            (self._jt_w,) = torch.autograd.grad(self.out, self.x, self._w, create_graph=True, allow_unused=True)
        if self._jt_w is None:
            self._jt_w = torch.zeros_like(self.x)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """``Jᵀ u`` for ``u`` shaped like the output."""
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.out, self.x, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.x) if g is None else g.detach()

    def jvp(self, v: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """``J v`` for ``v`` shaped like the input. ``differentiable``: keep the product's graph,
        so that a loss of ``J v`` reaches ``fn``'s parameters (a penalty on the Jacobian)."""
        if not self._jt_w.requires_grad:  # fn does not depend on x (or is constant in it)
            return torch.zeros_like(self.out).detach()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self._jt_w, self._w, v, retain_graph=True, allow_unused=True,
                                       create_graph=differentiable)
        if g is None:
            return torch.zeros_like(self.out).detach()
        return g if differentiable else g.detach()
