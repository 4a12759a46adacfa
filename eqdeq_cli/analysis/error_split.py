r"""Where a reconstruction's error lies: in what ``A`` measures or in what it cannot see.

Equivariant imaging exists to learn the nullspace ``N(A)``: the part of an image that
measurement consistency leaves free. The error ``e = x̂ − x`` of a reconstruction splits
orthogonally into ``e_N = P_N e`` (nullspace, taught by the group or by supervision) and
``e_R = e − e_N`` (the range of ``Aᵀ``, where the measurements and their noise decide). Both
are reported relative to ``‖x‖`` per image, so that ``‖e‖² / ‖x‖² = r_R² + r_N²``;
``null_fraction`` is ``‖P_N x‖ / ‖x‖``, the error of a reconstruction that knows the
measured part exactly and sets the nullspace part to zero.

``P_N`` is :func:`~eqdeq_cli.analysis.identifiability.nullspace_component`: exact for
inpainting and Cartesian MRI (whose ``A†`` is the pseudo-inverse), conjugate gradients on
``AᵀA`` for CT, where the "nullspace" then also holds the directions whose singular values
the iterations do not resolve (measured too weakly to matter against noise).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from eqdeq_cli.physics.base import LinearPhysics

from ._linalg import bnorm
from .identifiability import nullspace_component

__all__ = ["error_split"]


@torch.no_grad()
def error_split(physics: LinearPhysics, estimates: Mapping[str, torch.Tensor], x: torch.Tensor,
                cg_iter: int = 200) -> dict[str, dict[str, Any]]:
    """Split the error of each estimate against ``x`` (all ``(B, C, H, W)``) into range and nullspace parts.

    ``estimates`` maps names to images (e.g. the reconstructions and ``A†y``); one projection
    of the errors and of ``x`` together serves them all. Returns, per name, the per-sample lists
    ``range`` (``‖e − P_N e‖ / ‖x‖``), ``nullspace`` (``‖P_N e‖ / ‖x‖``) and ``null_fraction``
    (``‖P_N x‖ / ‖x‖``), their means ``range_mean``, ``nullspace_mean`` and
    ``null_fraction_mean``, and ``method`` (how ``P_N`` was computed). Raises ``ValueError``
    when a shape differs from ``x``'s.
    """
    for estimate in estimates.values():
        if estimate.shape != x.shape:
            raise ValueError(f"error_split: estimate of shape {tuple(estimate.shape)} against images of shape "
                             f"{tuple(x.shape)}")
    errors = [estimate.to(x.dtype) - x for estimate in estimates.values()]
    projected, method, _ = nullspace_component(physics, torch.cat(errors + [x]), cg_iter=cg_iter)
    *e_nulls, x_null = projected.split(x.shape[0])
    x_norm = bnorm(x).clamp_min(1e-30)
    null_fraction = bnorm(x_null) / x_norm
    out: dict[str, dict[str, Any]] = {}
    for name, e, e_null in zip(estimates, errors, e_nulls):
        parts = {"range": bnorm(e - e_null) / x_norm, "nullspace": bnorm(e_null) / x_norm,
                 "null_fraction": null_fraction}
        split: dict[str, Any] = {"method": method}
        for part, value in parts.items():
            v = value.double().cpu()
            split[part] = v.tolist()
            split[f"{part}_mean"] = float(v.mean())
        out[name] = split
    return out
