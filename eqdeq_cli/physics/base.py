"""Base classes for linear measurement operators and noise models.

A physics object models ``y = N(A x)`` for images ``x`` of shape ``(B, C, H, W)``.
Subclasses fill in :meth:`LinearPhysics.A`, :meth:`LinearPhysics.A_adjoint` and,
when a fast approximate inverse exists, :meth:`LinearPhysics.A_dagger`.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..linalg import conjugate_gradient
from ..utils.draws import randn_on_cpu
from ..utils.precision import autocast_enabled


class NoiseModel(nn.Module):
    """Noise applied to clean measurements ``A x``.

    Attributes: ``sigma`` (Gaussian standard deviation, 0 when absent) and ``gain``
    (Poisson gain, 0 when absent). A model of the Poisson-Gaussian family answers
    :meth:`risk_parameters` so that unbiased risk estimates (SURE / PURE / PG-URE,
    :class:`~eqdeq_cli.losses.SURELoss`) know which estimator applies.
    """

    sigma: float = 0.0
    gain: float = 0.0

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def risk_parameters(self) -> tuple[float, float]:
        """``(γ, σ)`` of ``y = γ·Poisson(z/γ) + σε`` that this model is (γ = 0: no Poisson part).

        Raises ``ValueError`` for a model outside that family: no unbiased estimator exists.
        """
        raise ValueError(f"SURELoss has no unbiased estimator for noise model {type(self).__name__}; "
                         "supported: NoNoise, GaussianNoise, PoissonNoise, PoissonGaussianNoise")


class NoNoise(NoiseModel):
    """Noiseless measurements: returns its input unchanged."""

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return y

    def risk_parameters(self) -> tuple[float, float]:
        return 0.0, 0.0


#: The methods every operator runs in full precision (:func:`full_precision`).
FULL_PRECISION_METHODS = ("A", "A_adjoint", "A_dagger", "precondition")


def full_precision(method):
    """``method(self, t, ...)`` run with autocast off on ``t``'s device and a bfloat16 or float16
    ``t`` promoted to float32. A linear operator is cheap beside the network and its rounding
    enters the data term of every fixed-point iteration; several of its kernels (sparse
    products, FFTs) have no bfloat16 form on every device."""
    @functools.wraps(method)
    def wrapper(self, t: torch.Tensor, *args, **kwargs):
        device = t.device.type
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        if not autocast_enabled(device):
            return method(self, t, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return method(self, t, *args, **kwargs)
    wrapper.full_precision = True
    return wrapper


class LinearPhysics(nn.Module):
    r"""A linear forward operator with its exact adjoint and an approximate inverse.

    Shapes: images ``(B, C, H, W)`` with ``(C, H, W) == self.img_shape``; measurements
    have an operator-specific shape ``(B,) + self.meas_shape``.

    Subclasses must implement :meth:`A` and :meth:`A_adjoint` so that
    :math:`\langle A x, y\rangle = \langle x, A^\top y\rangle` to rounding error.

    ``complex_images`` says whether the operator reads its 2 image channels as the real and
    imaginary parts of one complex image; image metrics then compare magnitudes
    (:func:`~eqdeq_cli.engine.metrics.compared_images`).

    Mixed precision: :meth:`A`, :meth:`A_adjoint`, :meth:`A_dagger` and :meth:`precondition`
    of every subclass run outside autocast, in float32 for a bfloat16 or float16 input
    (:func:`full_precision`), so under ``trainer.bf16=true`` only the network runs in bfloat16.
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name in FULL_PRECISION_METHODS:
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "full_precision", False):
                setattr(cls, name, full_precision(method))

    img_shape: tuple[int, int, int]
    meas_shape: tuple[int, ...]
    complex_images: bool = False

    def __init__(self, noise: NoiseModel | None = None) -> None:
        super().__init__()
        self.noise = noise if noise is not None else NoNoise()

    # -- the operator -------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @full_precision
    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """Fast approximate inverse; defaults to the adjoint."""
        return self.A_adjoint(y)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy measurements ``N(A x)``."""
        return self.noise(self.A(x), generator=generator)

    def AtA(self, x: torch.Tensor) -> torch.Tensor:
        return self.A_adjoint(self.A(x))

    #: Whether :meth:`precondition` is more than the identity (set by operators that override it).
    has_preconditioner: bool = False

    @full_precision
    def precondition(self, r: torch.Tensor) -> torch.Tensor:
        r"""A symmetric positive semi-definite weight ``P`` applied to measurements ``r``
        (same shape), such that ``Aᵀ P A`` is better conditioned than ``AᵀA``. The identity
        here; :class:`~eqdeq_cli.physics.ct.CTRadon` uses FBP's ramp filter, so that
        ``A_dagger = Aᵀ P``."""
        return r

    def precondition_trace(self) -> float:
        """``trace(P)`` over one measurement (``meas_shape``), the constant of SURE in the norm of
        ``P`` (:class:`~eqdeq_cli.losses.SURELoss`); the identity's: the number of measurement elements.

        Raises:
            NotImplementedError: a subclass that defines :meth:`precondition` but not this."""
        if type(self).precondition is not LinearPhysics.precondition:
            raise NotImplementedError(f"{type(self).__name__} defines precondition but not precondition_trace")
        return float(math.prod(self.meas_shape))

    def AtPA(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᵀ P A x`` (``AᵀA x`` for an operator without a preconditioner)."""
        return self.A_adjoint(self.precondition(self.A(x)))

    # -- helpers shared by every operator --------------------------------------
    def check_image(self, x: torch.Tensor) -> None:
        """Raise a clear ``ValueError`` if ``x`` is not a batch of images this operator accepts."""
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.img_shape):
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {', '.join(map(str, self.img_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def check_measurement(self, y: torch.Tensor) -> None:
        if tuple(y.shape[1:]) != tuple(self.meas_shape):
            raise ValueError(
                f"{type(self).__name__} expects measurements of shape (B, {', '.join(map(str, self.meas_shape))}), "
                f"got {tuple(y.shape)}"
            )

    @torch.no_grad()
    def norm(self, n_iter: int = 50, seed: int = 0, dtype: torch.dtype = torch.float64,
             preconditioned: bool = False) -> float:
        """Spectral norm ``‖A‖₂`` estimated by power iteration on ``AᵀA``; with
        ``preconditioned``, ``‖P^½ A‖₂``, the square root of ``‖Aᵀ P A‖₂``."""
        device = _module_device(self)
        g = torch.Generator(device="cpu").manual_seed(seed)
        x = randn_on_cpu((1,) + tuple(self.img_shape), g, dtype=dtype, device=device, draw_dtype=torch.float64)
        x = x / x.norm()
        lam = 0.0
        normal = self.AtPA if preconditioned else self.AtA
        for _ in range(n_iter):
            z = normal(x)
            lam = float(z.norm())
            if lam == 0.0:
                return 0.0
            x = z / lam
        return math.sqrt(lam)

    @torch.no_grad()
    def mean_eigenvalue(self, n_probes: int = 8, seed: int = 0, preconditioned: bool = False) -> float:
        r"""Hutchinson estimate of ``trace(AᵀA) / n`` (n = number of image pixels × channels);
        with ``preconditioned``, of ``trace(AᵀPA) / n``.

        This is the natural scale of the data term ``‖A x − y‖²`` relative to an
        image-domain term such as the EI loss ``‖x₃ − x₂‖²``.
        """
        device = _module_device(self)
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = randn_on_cpu((n_probes,) + tuple(self.img_shape), g, device=device, draw_dtype=torch.float64)
        n = z[0].numel()
        r = self.A(z)
        weighted = self.precondition(r) if preconditioned else r
        return float((r * weighted).sum() / (n_probes * n))

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | float,
                  n_iter: int = 20, tol: float = 1e-6) -> torch.Tensor:
        r"""``argmin_x ½‖A x − y‖² + 1/(2γ)‖x − z‖²`` by conjugate gradients on
        ``(AᵀA + I/γ) x = Aᵀy + z/γ``. Subclasses with a closed form override this.
        ``gamma`` is a scalar or a tensor broadcastable to ``z``.
        """
        rhs = self.A_adjoint(y) + z / gamma
        return conjugate_gradient(lambda v: self.AtA(v) + v / gamma, rhs, x0=z, n_iter=n_iter, tol=tol)


#: Choices of a preconditioner setting (``map.preconditioner``, ``loss.terms.mc.preconditioner``,
#: ``loss.terms.sure.preconditioner``).
PRECONDITIONERS = ("auto", "none", "ramp")


def check_preconditioner(choice: str, owner: str = "") -> None:
    """Raises ``ValueError`` (prefixed by ``owner``) unless ``choice`` is one of :data:`PRECONDITIONERS`."""
    if choice not in PRECONDITIONERS:
        raise ValueError(f"{owner}unknown preconditioner {choice!r}; valid: {', '.join(PRECONDITIONERS)}")


def resolve_preconditioner(choice: str, physics_type: type, owner: str = "", key: str = "") -> str:
    """What a preconditioner setting means for an operator of class ``physics_type``: ``"ramp"``
    for ``ramp``, and for ``auto`` where the class has a measurement weight
    (``has_preconditioner``, i.e. CT), else ``"none"``.

    Raises:
        ValueError: (prefixed by ``owner``, naming the config ``key``) an unknown ``choice``, or
            ``ramp`` for a class without a measurement weight.
    """
    check_preconditioner(choice, owner)
    weighted = bool(getattr(physics_type, "has_preconditioner", False))
    if choice == "ramp" and not weighted:
        raise ValueError(f"{owner}preconditioner='ramp' needs a physics with a measurement weight (CT's ramp "
                         f"filter); {physics_type.__name__} has none: use preconditioner=none or auto ({key})")
    return "ramp" if choice == "ramp" or (choice == "auto" and weighted) else "none"


def _module_device(module: nn.Module) -> torch.device:
    for t in list(module.buffers()) + list(module.parameters()):
        return t.device
    return torch.device("cpu")
