r"""DnCNN: a residual stack of 3×3 convolutions and ReLUs.

.. math::  D(x) = x + R(x), \qquad R = \mathrm{conv}_{d} \circ \mathrm{ReLU} \circ \cdots
           \circ \mathrm{ReLU} \circ \mathrm{conv}_{1}

with ``depth = d`` convolutions (``channels → width → … → width → channels``).
"""
from __future__ import annotations

import torch
from torch import nn

from .spectral import conv_operator_norm


class DnCNN(nn.Module):
    r"""Residual DnCNN denoiser, ``(B, C, H, W) → (B, C, H, W)``, any ``H, W``.

    Args:
        channels: image channels ``C`` (set by the runner from the data, not in the YAML).
        depth: number of convolutions (≥ 2).
        width: feature channels of the hidden layers.
        residual: output ``x + R(x)`` (True) or ``R(x)``.
        spectral_norm: rescale every conv so its operator norm is at most 1
            (:mod:`eqdeq_cli.models.spectral`). Guarantee: ``R`` is 1-Lipschitz (ReLU is
            1-Lipschitz, biases do not count), so with ``residual=False`` the denoiser is
            1-Lipschitz and with ``residual=True`` it is 2-Lipschitz with ``I − D`` 1-Lipschitz.
        zero_init_last: zero the last conv (weight and bias), so ``R ≡ 0`` at
            initialisation: with ``residual=True`` the network starts as the identity, and a
            DEQ started from ``A†y`` starts at a gradient step on the data term.
        bias: use biases in the convolutions.

    Example:
        >>> DnCNN(channels=1, depth=3, width=8)(torch.zeros(2, 1, 9, 7)).shape
        torch.Size([2, 1, 9, 7])
    """

    def __init__(self, *, channels: int, depth: int = 5, width: int = 32, residual: bool = True,
                 spectral_norm: bool = False, zero_init_last: bool = True, bias: bool = True) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"DnCNN: channels must be ≥ 1, got {channels}")
        if depth < 2:
            raise ValueError(f"DnCNN: depth must be ≥ 2 (first and last convolutions), got {depth}")
        if width < 1:
            raise ValueError(f"DnCNN: width must be ≥ 1, got {width}")
        self.residual = residual
        sizes = [channels] + [width] * (depth - 1) + [channels]
        convs = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias) for c_in, c_out in zip(sizes[:-1], sizes[1:])]
        if zero_init_last:
            nn.init.zeros_(convs[-1].weight)
            if bias:
                nn.init.zeros_(convs[-1].bias)
        layers: list[nn.Module] = []
        for i, conv in enumerate(convs):
            layers.append(conv_operator_norm(conv) if spectral_norm else conv)
            if i < len(convs) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.net(x)
        return x + r if self.residual else r
