r"""Averaged denoisers: ``D = (1 − α) I + α c N`` with a 1-Lipschitz network ``N``.

A fixed-point map ``T(z) = D(G(z))`` with the gradient step
``G(z) = z − γAᵀ(Az − y)`` is a contraction when ``Lip(D)·‖I − γAᵀA‖ < 1``. For an
operator with a nullspace (inpainting, Cartesian MRI, sparse-view CT) ``‖I − γAᵀA‖ = 1``
for every step ``γ ∈ (0, 2/‖A‖²]``, so the contraction has to come from the denoiser: a
residual network that starts as the identity gives ``Lip(T) = 1`` on the nullspace, the
forward solve stalls there, and the implicit backward ``(I − Jᵀ)⁻¹`` does not exist.

With ``Lip(N) ≤ 1`` (spectrally normalised convolutions, 1-Lipschitz activations) and
``α ∈ (0, 1)``, ``c ∈ (0, 1]``:

.. math::  \mathrm{Lip}(D) \le (1 − α) + α c = 1 − α(1 − c),

so ``D`` is an averaged (hence non-expansive) operator, and a strict contraction with
factor ``1 − α(1 − c)`` when ``c < 1`` (Bauschke & Combettes, "Convex Analysis and
Monotone Operator Theory in Hilbert Spaces", 2011, §4.5; used for convergent
plug-and-play by Ryu et al., "Plug-and-Play Methods Provably Converge with Properly
Trained Denoisers", ICML 2019, and Hertrich et al., "Convolutional Proximal Neural
Networks and Plug-and-Play Algorithms", 2021). ``α`` is learned through a sigmoid, so it
stays in ``(0, 1)`` and the bound holds at every training step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..utils.checks import check_real
from .dncnn import DnCNN


class AveragedDenoiser(nn.Module):
    r"""``D(x) = (1 − α) x + α c N(x)``: an averaged operator around a 1-Lipschitz ``N``.

    Args:
        network: ``(B, C, H, W) → (B, C, H, W)`` module whose Lipschitz constant is at most 1
            (e.g. :class:`~eqdeq_cli.models.DnCNN` with ``residual=False, spectral_norm=True``);
            the bound on ``D`` is only as good as this one.
        alpha: initial averaging weight ``α`` in ``(0, 1)``.
        learn_alpha: whether ``α`` is trained (as ``logit α``).
        lipschitz: the factor ``c`` in ``(0, 1]``; ``Lip(D) ≤ 1 − α(1 − c)``.

    Raises:
        ValueError: ``alpha`` outside ``(0, 1)`` or ``lipschitz`` outside ``(0, 1]``.

    Example:
        >>> D = AveragedDenoiser(nn.Identity(), alpha=0.5, lipschitz=0.5)
        >>> float(D(torch.ones(1, 1, 2, 2)).mean())
        0.75
    """

    def __init__(self, network: nn.Module, *, alpha: float = 0.5, learn_alpha: bool = True,
                 lipschitz: float = 1.0) -> None:
        super().__init__()
        check_real("alpha", alpha, low=0, high=1, high_inclusive=False)
        check_real("lipschitz", lipschitz, low=0, high=1)
        self.network = network
        self.lipschitz = float(lipschitz)
        logit = torch.tensor(math.log(alpha / (1.0 - alpha)))
        if learn_alpha:
            self.alpha_logit = nn.Parameter(logit)
        else:
            self.register_buffer("alpha_logit", logit)

    @property
    def alpha(self) -> torch.Tensor:
        """The averaging weight ``α`` (a 0-d tensor in ``(0, 1)``)."""
        return torch.sigmoid(self.alpha_logit)

    def lipschitz_bound(self) -> float:
        """The guaranteed bound ``1 − α(1 − c)`` on ``Lip(D)`` (given ``Lip(N) ≤ 1``)."""
        return 1.0 - float(self.alpha.detach()) * (1.0 - self.lipschitz)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha.to(x.dtype)
        n = self.network(x)
        if self.lipschitz != 1.0:
            n = self.lipschitz * n
        return (1.0 - a) * x + a * n

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha.detach()):.4g}, lipschitz={self.lipschitz}"


def averaged_dncnn(*, channels: int, depth: int = 5, width: int = 32, bias: bool = True,
                   zero_init_last: bool = True, alpha: float = 0.5, learn_alpha: bool = True,
                   lipschitz: float = 1.0) -> AveragedDenoiser:
    r"""An :class:`AveragedDenoiser` around a spectrally normalised, non-residual DnCNN.

    Every convolution of the DnCNN is rescaled to operator norm ≤ 1 and ReLU is
    1-Lipschitz, so ``Lip(N) ≤ 1`` and ``Lip(D) ≤ 1 − α(1 − c)``. With
    ``zero_init_last`` the network starts at ``N ≡ 0``, i.e. ``D = (1 − α) I``: the DEQ
    map then contracts with factor ``1 − α`` from the first step.

    Shapes: ``(B, channels, H, W) → (B, channels, H, W)``.
    """
    network = DnCNN(channels=channels, depth=depth, width=width, residual=False, spectral_norm=True,
                    zero_init_last=zero_init_last, bias=bias)
    return AveragedDenoiser(network, alpha=alpha, learn_alpha=learn_alpha, lipschitz=lipschitz)
