"""Conjugate gradients for symmetric positive definite operators on image batches."""
from __future__ import annotations

from typing import Callable

import torch


def conjugate_gradient(op: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       x0: torch.Tensor | None = None, n_iter: int = 20, tol: float = 1e-6) -> torch.Tensor:
    """Solve ``op(x) = b`` for a symmetric positive-definite ``op``, batched over dim 0.

    Each sample has its own step sizes; iteration stops when every sample's relative
    residual is below ``tol`` or after ``n_iter`` steps. Differentiable by autograd.
    """
    dims = tuple(range(1, b.ndim))
    x = torch.zeros_like(b) if x0 is None else x0
    r = b - op(x)
    p = r
    rs = (r * r).sum(dim=dims, keepdim=True)
    b_norm2 = (b * b).sum(dim=dims, keepdim=True).clamp_min(1e-30)
    for _ in range(n_iter):
        if bool((rs <= tol**2 * b_norm2).all()):
            break
        Ap = op(p)
        alpha = rs / (p * Ap).sum(dim=dims, keepdim=True).clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum(dim=dims, keepdim=True)
        p = r + (rs_new / rs.clamp_min(1e-30)) * p
        rs = rs_new
    return x
