r"""Spectral normalisation of a convolution's *operator* norm.

``torch.nn.utils.parametrizations.spectral_norm`` divides a conv kernel by the largest
singular value of its reshaped ``(C_out, C_in·k·k)`` matrix. That is not the norm of the
convolution as a map on images: for a ``k × k`` kernel the operator norm can be up to ``k``
times larger (a random 32→32 3×3 conv normalised that way has operator norm ≈ 1.5), and
a zero-initialised kernel gives ``0/0 = NaN``.

:class:`ConvOperatorNorm` instead estimates

.. math::  \sigma(W) = \max_{\|x\|=1} \|W * x\|

by power iteration on ``x ↦ Wᵀ * (W * x)`` (``conv2d`` followed by ``conv_transpose2d``,
the exact adjoint) on a ``probe_size × probe_size`` image with the layer's own zero
padding, and uses the kernel

.. math::  W_\text{eff} = W / \max(1, \sigma(W)).

So each wrapped conv has operator norm at most 1 (up to the power-iteration error and the
difference between the probe size and the image size, a few 1e-3 for 3×3 kernels), and a
zero kernel stays zero (identity-at-initialisation networks keep working).

The power iteration runs only when the kernel has changed since the last update (an
optimizer step): a change of the tensor's version counter triggers a comparison with the
kernel last iterated on (a buffer), and iterations run only if they differ. Between updates
the map is a fixed, deterministic function of the weights, which a fixed-point solver
needs: the map must not change while it is being iterated. Both the probe and the last
kernel are in the state dict, so a resumed run continues exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class ConvOperatorNorm(nn.Module):
    """Parametrization ``W ↦ W / max(1, ‖conv_W‖₂)`` for an ``nn.Conv2d`` kernel.

    Args:
        conv: the convolution (stride 1, groups 1, dilation 1) whose weight is wrapped.
        probe_size: side of the image on which the operator norm is estimated.
        n_init_iterations: power iterations at construction.
        n_iterations: power iterations after each in-place change of the weight.
    """

    def __init__(self, conv: nn.Conv2d, *, probe_size: int = 32, n_init_iterations: int = 50,
                 n_iterations: int = 2) -> None:
        super().__init__()
        if conv.stride != (1, 1) or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("ConvOperatorNorm supports stride-1, dilation-1, groups-1 convolutions only, "
                             f"got stride={conv.stride}, dilation={conv.dilation}, groups={conv.groups}")
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError(f"ConvOperatorNorm needs explicit zero padding, got padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r}")
        self.padding = conv.padding
        self.n_iterations = n_iterations
        weight = conv.weight.detach()
        g = torch.Generator(device="cpu").manual_seed(0)
        u = torch.randn((1, weight.shape[1], probe_size, probe_size), generator=g, dtype=torch.float64)
        self.register_buffer("u", (u / u.norm()).to(device=weight.device, dtype=weight.dtype))
        self.register_buffer("weight_seen", weight.clone())
        self._seen_version = -1
        self._iterate(weight, n_init_iterations)

    @torch.no_grad()
    def _iterate(self, weight: torch.Tensor, n: int) -> None:
        u = self.u.to(weight.dtype)
        for _ in range(n):
            v = F.conv_transpose2d(F.conv2d(u, weight, padding=self.padding), weight, padding=self.padding)
            norm = v.norm()
            # A zero kernel maps everything to zero: keep the previous probe instead of 0/0.
            u = torch.where(norm > 0, v / norm.clamp_min(torch.finfo(v.dtype).tiny), u)
        self.u.copy_(u)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """Operator-norm estimate ``‖W * u‖`` (differentiable in ``weight``; ``u`` is fixed)."""
        return F.conv2d(self.u.to(weight.dtype), weight, padding=self.padding).norm()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        version = getattr(weight, "_version", None)
        if version is not None and version != self._seen_version:
            if not torch.equal(weight.detach(), self.weight_seen.to(weight.dtype)):
                self._iterate(weight.detach(), self.n_iterations)
                with torch.no_grad():
                    self.weight_seen.copy_(weight.detach())
            self._seen_version = version
        return weight / self.sigma(weight).clamp_min(1.0)


def conv_operator_norm(conv: nn.Conv2d, *, probe_size: int = 32) -> nn.Conv2d:
    """Wrap ``conv.weight`` with :class:`ConvOperatorNorm` in place and return ``conv``."""
    parametrize.register_parametrization(conv, "weight", ConvOperatorNorm(conv, probe_size=probe_size))
    return conv
