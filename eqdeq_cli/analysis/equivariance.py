r"""Equivariance error of an image-to-image map under a symmetry group.

For a map ``f`` and a group acting by ``T_g``, the relative equivariance error of
sample ``x`` at element ``g`` is

.. math:: e_g(x) = \frac{\lVert f(T_g x) - T_g f(x) \rVert_2}{\lVert T_g f(x) \rVert_2},

zero for every ``g`` exactly when ``f`` commutes with the group on ``x``. The proximal
map of a ``G``-invariant regulariser is ``G``-equivariant (Celledoni et al. 2021), so a
denoiser that acts as such a prox should have small ``e_g``.

Use it on the denoiser (``fn = denoiser``, images in, images out) and on the whole
reconstructor through its measurements, ``fn = measure_then_reconstruct(f, physics)``,
i.e. ``x ↦ f(A x)``: then ``e_g`` compares reconstructing a transformed image with
transforming the reconstruction.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from eqdeq_cli.groups.base import Group, disc_mask

from ._linalg import bnorm


Fn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["equivariance_error", "measure_then_reconstruct", "disc_mask"]


def measure_then_reconstruct(reconstructor: Callable[[torch.Tensor], torch.Tensor], physics: Any) -> Fn:
    """``x ↦ reconstructor(physics.A(x))``: the reconstructor as a map on images.

    Noise-free measurements, so the error reflects the reconstructor and not the noise.
    """
    def fn(x: torch.Tensor) -> torch.Tensor:
        return reconstructor(physics.A(x))
    return fn


@torch.no_grad()
def equivariance_error(fn: Fn, group: Group, x: torch.Tensor, n_elements: int = 8,
                       generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                       eps: float = 1e-12) -> dict[str, Any]:
    r"""Relative equivariance error ``e_g(x)`` over ``n_elements`` sampled group elements.

    Each of the ``n_elements`` draws samples one element per sample
    (``group.sample(B, generator, device)``), so ``n_elements × B`` pairs are measured.
    ``fn(x)`` is evaluated once, ``fn(T_g x)`` once per draw, without autograd.

    Args:
        fn: batched map ``(B, C, H, W) -> (B, C', H, W)`` (put modules in eval mode).
        group: the group; its ``apply`` acts on inputs and outputs alike.
        x: images ``(B, C, H, W)``.
        n_elements: number of draws.
        generator: CPU generator for the group elements (``None``: global RNG).
        mask: optional ``(H, W)`` weights (e.g. :func:`disc_mask`) applied to both the
            difference and the reference before taking norms.

    Returns:
        ``{"mean", "std", "max"}`` over all pairs, ``"per_element"`` (list of
        ``n_elements`` batch means), ``"per_sample"`` (list of ``B`` means over draws),
        ``"per_pair"`` (``n_elements × B`` nested list), ``"elements"`` (the sampled
        elements ``g`` of each draw as nested lists, ``n_elements × B × …``, e.g.
        rotation angles in degrees), ``"n_elements"``, ``"batch_size"`` — plain floats
        and lists, ready for JSON.
    """
    if n_elements < 1:
        raise ValueError(f"n_elements must be >= 1, got {n_elements}")
    if x.ndim != 4:
        raise ValueError(f"x must be images (B, C, H, W), got shape {tuple(x.shape)}")
    w = 1.0 if mask is None else mask.to(device=x.device, dtype=x.dtype)
    fx = fn(x)
    errors, elements = [], []
    for _ in range(n_elements):
        g = group.sample(x.shape[0], generator=generator, device=x.device)
        elements.append(g.detach().cpu().tolist())
        lhs = fn(group.apply(x, g))
        rhs = group.apply(fx, g)
        errors.append(bnorm((lhs - rhs) * w) / bnorm(rhs * w).clamp_min(eps))
    e = torch.stack(errors).double().cpu()  # (n_elements, B)
    return {
        "mean": float(e.mean()),
        "std": float(e.std()) if e.numel() > 1 else 0.0,
        "max": float(e.max()),
        "per_element": e.mean(dim=1).tolist(),
        "per_sample": e.mean(dim=0).tolist(),
        "per_pair": e.tolist(),
        "elements": elements,
        "n_elements": n_elements,
        "batch_size": int(x.shape[0]),
    }
