r"""A small U-Net with averaging skip connections.

Level ``l`` (``0 ≤ l ≤ levels``) works at resolution ``H/2^l`` with ``width·2^l`` features::

    enc_0 = block(conv_in(x))                    enc_l = block(avgpool₂(enc_{l−1}))
    dec_L = enc_L                                dec_l = block(½ (conv(up₂(dec_{l+1})) + enc_l))
    R(x)  = conv_out(dec_0)                      D(x)  = x + R(x)   (residual=True)

``avgpool₂`` (2×2 mean) has operator norm ½ and nearest ``up₂`` has norm 2, and the skip
merge is an *average*, so when every conv has operator norm ≤ 1 (``spectral_norm=True``)
every path, and hence ``R``, is 1-Lipschitz. Images whose sides are not multiples of
``2^levels`` are zero-padded (centred) to the next multiple and cropped back; zero padding
and cropping have norm 1, so the bound still holds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spectral import conv_operator_norm


def _conv(c_in: int, c_out: int, spectral_norm: bool) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    return conv_operator_norm(conv) if spectral_norm else conv


def _block(c_in: int, c_out: int, spectral_norm: bool) -> nn.Sequential:
    return nn.Sequential(_conv(c_in, c_out, spectral_norm), nn.ReLU(),
                         _conv(c_out, c_out, spectral_norm), nn.ReLU())


class UNet(nn.Module):
    r"""U-Net denoiser, ``(B, C, H, W) → (B, C, H, W)``, any ``H, W`` (padded internally).

    Args:
        channels: image channels ``C`` (set by the runner from the data, not in the YAML).
        width: features at full resolution; doubled at each level.
        levels: number of 2× downsamplings (≥ 1).
        residual: output ``x + R(x)`` (True) or ``R(x)``.
        spectral_norm: every conv has operator norm ≤ 1 (:mod:`eqdeq_cli.models.spectral`),
            so ``R`` is 1-Lipschitz: the denoiser is 1-Lipschitz with ``residual=False``, and
            2-Lipschitz with ``I − D`` 1-Lipschitz with ``residual=True``.
        zero_init_last: zero the output conv so ``R ≡ 0`` at initialisation (identity with
            ``residual=True``).

    Example:
        >>> UNet(channels=1, width=4, levels=2)(torch.zeros(1, 1, 10, 13)).shape
        torch.Size([1, 1, 10, 13])
    """

    def __init__(self, *, channels: int, width: int = 16, levels: int = 2, residual: bool = True,
                 spectral_norm: bool = False, zero_init_last: bool = True) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"UNet: channels must be ≥ 1, got {channels}")
        if width < 1:
            raise ValueError(f"UNet: width must be ≥ 1, got {width}")
        if levels < 1:
            raise ValueError(f"UNet: levels must be ≥ 1, got {levels}")
        self.residual = residual
        self.levels = levels
        feats = [width * 2**level for level in range(levels + 1)]
        self.conv_in = _conv(channels, feats[0], spectral_norm)
        self.enc = nn.ModuleList([_block(feats[0], feats[0], spectral_norm)] +
                                 [_block(feats[i - 1], feats[i], spectral_norm) for i in range(1, levels + 1)])
        self.up = nn.ModuleList([_conv(feats[i + 1], feats[i], spectral_norm) for i in range(levels)])
        self.dec = nn.ModuleList([_block(feats[i], feats[i], spectral_norm) for i in range(levels)])
        conv_out = nn.Conv2d(feats[0], channels, 3, padding=1)
        if zero_init_last:
            nn.init.zeros_(conv_out.weight)
            nn.init.zeros_(conv_out.bias)
        self.conv_out = conv_operator_norm(conv_out) if spectral_norm else conv_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.levels
        ph, pw = (-h) % m, (-w) % m
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        z = F.pad(x, pads) if ph or pw else x
        skips = [self.enc[0](self.conv_in(z))]
        for level in range(1, self.levels + 1):
            skips.append(self.enc[level](F.avg_pool2d(skips[-1], 2)))
        d = skips[-1]
        for level in reversed(range(self.levels)):
            up = self.up[level](F.interpolate(d, scale_factor=2.0, mode="nearest"))
            d = self.dec[level](0.5 * (up + skips[level]))
        r = self.conv_out(d)
        if ph or pw:
            r = r[..., pads[2]:pads[2] + h, pads[0]:pads[0] + w]
        return x + r if self.residual else r
