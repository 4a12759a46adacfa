r"""Noise models ``y = N(z)`` applied to clean measurements ``z = A x``.

Every model samples from an optional CPU ``torch.Generator`` (the global CPU RNG without
one): the noise is drawn on the CPU (in the measurement's dtype) and moved to the
measurement's device, so a run is reproducible on any device (:mod:`eqdeq_cli.utils.draws`).

Noise levels are given for images in [0, 1]. For images in ``[0, data_range]`` (the
config passes ``evaluation.data_range``) the measurements scale by ``data_range`` and so do
the levels: ``sigma`` and ``gain`` are multiplied by it, which keeps the noise the same
fraction of the signal (Gaussian std ``σR``; Poisson variance ``γR·z`` for ``z`` itself
``R`` times larger). The attributes ``sigma`` and ``gain`` hold the scaled values, which
is what :meth:`~eqdeq_cli.physics.base.NoiseModel.risk_parameters` answers.
"""
from __future__ import annotations

import math

import torch

from ..utils.checks import check_real
from ..utils.draws import poisson_like, randn_like
from .base import NoiseModel


def _check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"noise sigma must be a finite number ≥ 0, got {sigma!r}")
    return float(sigma)


def _check_gain(gain: float) -> float:
    if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
        raise ValueError(f"Poisson gain must be a finite number > 0, got {gain!r}")
    return float(gain)


def _check_range(data_range: float) -> float:
    return check_real("noise data_range", data_range, low=0.0)


class GaussianNoise(NoiseModel):
    r"""Additive white Gaussian noise: :math:`y = z + \sigma\,\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I)`.

    ``sigma`` is in measurement units of images in [0, 1] (for ``CTRadon`` with ``‖A‖ = 1``,
    the units of the normalised sinogram), multiplied by ``data_range`` (module docstring).
    """

    def __init__(self, *, sigma: float = 0.01, data_range: float = 1.0) -> None:
        super().__init__()
        self.sigma = _check_sigma(sigma) * _check_range(data_range)
        self.gain = 0.0

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.sigma == 0.0:
            return y
        return y + self.sigma * randn_like(y, generator)

    def risk_parameters(self) -> tuple[float, float]:
        return 0.0, self.sigma

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class PoissonNoise(NoiseModel):
    r"""Scaled Poisson noise: :math:`y = \gamma\,\mathrm{Poisson}(\max(z, 0)/\gamma)`, ``γ = gain``.

    Mean ``max(z, 0)``, variance ``γ·max(z, 0)``: a smaller gain means more counts and
    less noise. Not differentiable with respect to ``z`` (the counts are integers).
    ``gain`` is for images in [0, 1], multiplied by ``data_range`` (module docstring).
    """

    def __init__(self, *, gain: float = 0.01, data_range: float = 1.0) -> None:
        super().__init__()
        self.gain = _check_gain(gain) * _check_range(data_range)
        self.sigma = 0.0

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.gain * poisson_like(y.clamp_min(0) / self.gain, generator)

    def risk_parameters(self) -> tuple[float, float]:
        return self.gain, 0.0

    def extra_repr(self) -> str:
        return f"gain={self.gain}"


class PoissonGaussianNoise(NoiseModel):
    r"""Poisson-Gaussian noise: :math:`y = \gamma\,\mathrm{Poisson}(\max(z,0)/\gamma) + \sigma\,\varepsilon`.

    Mean ``max(z, 0)``, variance ``γ·max(z, 0) + σ²``. The Poisson counts are drawn
    before the Gaussian part, from the same generator. ``gain`` and ``sigma`` are for images
    in [0, 1], multiplied by ``data_range`` (module docstring).
    """

    def __init__(self, *, gain: float = 0.01, sigma: float = 0.01, data_range: float = 1.0) -> None:
        super().__init__()
        scale = _check_range(data_range)
        self.gain = _check_gain(gain) * scale
        self.sigma = _check_sigma(sigma) * scale

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        counts = self.gain * poisson_like(y.clamp_min(0) / self.gain, generator)
        if self.sigma == 0.0:
            return counts
        return counts + self.sigma * randn_like(y, generator)

    def risk_parameters(self) -> tuple[float, float]:
        return self.gain, self.sigma

    def extra_repr(self) -> str:
        return f"gain={self.gain}, sigma={self.sigma}"
