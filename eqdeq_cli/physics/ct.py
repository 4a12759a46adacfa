"""Parallel-beam CT: Radon transform as a precomputed sparse matrix, FBP as its approximate inverse."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import scipy.sparse.linalg as spla
import torch

from .base import LinearPhysics, NoiseModel
from .ct_geometry import FBP_FILTERS, joseph_matrix, view_weights
from .ct_geometry import fbp_filter as _fbp_filter
from .sparse import csr_like, csr_to_torch, sparse_matmul

log = logging.getLogger(__name__)


class CTRadon(LinearPhysics):
    r"""Sparse-view 2-D parallel-beam CT: :math:`y = A x`, ``A`` the discrete Radon transform.

    ``A`` is Joseph's ray-driven system matrix (see :mod:`~eqdeq_cli.physics.ct_geometry`),
    built once and stored as sparse CSR buffers for ``A`` and for its transpose, so
    :meth:`A_adjoint` is the exact adjoint (``Aᵀ``, not an interpolated back-projection).
    Each call is one sparse × dense product over the ``B·C`` images of a batch.

    With ``normalize=True`` the matrix is divided by its spectral norm (largest singular
    value, by Lanczos iteration at construction) so that ``‖A‖₂ = 1``; ``scale`` holds
    that factor (measurements are line integrals in pixel units divided by ``scale``).

    :meth:`A_dagger` is filtered back-projection: ramp-filter each view (zero-padded FFT),
    weigh it by the directions it stands for (``view_weights``: ``π / n_views`` over 180° or
    360°; on other arcs ``Δθ``, shared among views that measure the same direction mod
    180°), back-project with the system matrix's transpose and undo the normalisation, so
    that ``A_dagger(A x) ≈ x`` in intensity. The stored ``Aᵀ`` is reused rather than a
    separate interpolating back-projector: one matrix, and no loss of FBP quality
    (docs/experiments.md, "FBP back-projection").

    Shapes: images ``(B, C, N, N)``; measurements ``(B, C, n_views, n_detectors)``.
    Views at ``θ_v = v · angle_range / n_views`` degrees, ``v = 0 … n_views − 1``;
    detector spacing equals the pixel size; ``n_detectors`` defaults to
    ``ceil(√2 · N)`` (the image diagonal).

    Example:
        >>> ct = CTRadon(img_size=32, n_views=10)
        >>> ct.A(torch.ones(2, 1, 32, 32)).shape
        torch.Size([2, 1, 10, 46])
    """

    def __init__(self, *, img_size: int = 64, channels: int = 1, n_views: int = 50,
                 angle_range: float = 180.0, n_detectors: int | None = None, normalize: bool = True,
                 fbp_filter: str = "ram-lak", noise: NoiseModel | None = None) -> None:
        super().__init__(noise)
        if int(img_size) < 2:
            raise ValueError(f"img_size must be an integer ≥ 2, got {img_size!r}")
        if int(channels) < 1:
            raise ValueError(f"channels must be ≥ 1, got {channels!r}")
        if int(n_views) < 1:
            raise ValueError(f"n_views must be ≥ 1, got {n_views!r}")
        if not 0.0 < float(angle_range) <= 360.0:
            raise ValueError(f"angle_range must be in (0, 360] degrees, got {angle_range!r}")
        if fbp_filter not in FBP_FILTERS:
            raise ValueError(f"unknown fbp_filter {fbp_filter!r}; valid: {', '.join(FBP_FILTERS)}")
        n = int(img_size)
        if n_detectors is None:
            n_detectors = math.ceil(math.sqrt(2.0) * n)
        if int(n_detectors) < 1:
            raise ValueError(f"n_detectors must be ≥ 1 (or null for the image diagonal), got {n_detectors!r}")
        self.img_size, self.channels = n, int(channels)
        self.n_views, self.n_detectors = int(n_views), int(n_detectors)
        self.angle_range, self.fbp_filter = float(angle_range), fbp_filter
        self.img_shape = (self.channels, n, n)
        self.meas_shape = (self.channels, self.n_views, self.n_detectors)

        start = time.perf_counter()
        angles = np.deg2rad(np.arange(self.n_views) * self.angle_range / self.n_views)
        matrix = joseph_matrix(n, angles, self.n_detectors)
        self.scale = _spectral_norm(matrix) if normalize else 1.0
        matrix = matrix / self.scale
        self.register_buffer("angles", torch.from_numpy(angles), persistent=False)
        weights = view_weights(angles, math.radians(self.angle_range / self.n_views))
        self.register_buffer("_view_weights", torch.from_numpy(weights), persistent=False)
        self.register_buffer("_matrix", csr_to_torch(matrix), persistent=False)
        self.register_buffer("_matrix_t", csr_to_torch(matrix.T.tocsr()), persistent=False)
        response, self._n_pad = _fbp_filter(self.n_detectors, fbp_filter)
        self.register_buffer("_filter", torch.from_numpy(response), persistent=False)
        self.build_seconds = time.perf_counter() - start
        log.debug("CTRadon %dx%d, %d views: %d non-zeros, built in %.2f s",
                  n, n, self.n_views, matrix.nnz, self.build_seconds)

    # -- the operator -------------------------------------------------------
    def _matmul(self, matrix: torch.Tensor, matrix_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``matrix @ v`` for a batch ``v`` of shape ``(B·C, n)``, returning ``(B·C, m)``."""
        mat = csr_like(matrix, v.dtype, v.device)
        mat_t = csr_like(matrix_t, v.dtype, v.device)
        return sparse_matmul(mat, mat_t, v.T).T

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Sinograms ``(B, C, n_views, n_detectors)`` of images ``(B, C, N, N)``."""
        self.check_image(x)
        b = x.shape[0]
        y = self._matmul(self._matrix, self._matrix_t, x.reshape(b * self.channels, -1))
        return y.reshape((b,) + self.meas_shape)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint ``Aᵀ y``: images ``(B, C, N, N)`` from sinograms."""
        self.check_measurement(y)
        b = y.shape[0]
        x = self._matmul(self._matrix_t, self._matrix, y.reshape(b * self.channels, -1))
        return x.reshape((b,) + self.img_shape)

    def filter_sinogram(self, y: torch.Tensor) -> torch.Tensor:
        """Ramp-filter every view of ``y`` along the detector axis (zero-padded FFT)."""
        response = self._filter.to(device=y.device, dtype=y.dtype)
        spectrum = torch.fft.rfft(y, n=self._n_pad, dim=-1) * response
        return torch.fft.irfft(spectrum, n=self._n_pad, dim=-1)[..., : self.n_detectors]

    has_preconditioner = True

    def precondition(self, r: torch.Tensor) -> torch.Tensor:
        r"""FBP's weighting of sinograms ``r`` ``(B, C, n_views, n_detectors)``:
        :math:`P r = \mathrm{scale}^2\, w_\theta\,(h * r_\theta)`, the ramp filter ``h`` per view
        times the view weights ``w``, so that ``A_dagger = Aᵀ P``. ``P`` is symmetric positive
        semi-definite (a real, even, non-negative frequency response, cropped; positive
        weights), so ``z − γAᵀP(Az − y)`` is a gradient step on ``½‖Az − y‖²_P``: ramp-filter
        preconditioning (Clinthorne et al. 1993, IEEE TMI 12(1)), under which ``AᵀPA ≈ I`` on
        the directions the views measure."""
        self.check_measurement(r)
        weights = self._view_weights.to(device=r.device, dtype=r.dtype)[:, None]
        return self.filter_sinogram(r) * (weights * self.scale**2)

    def precondition_trace(self) -> float:
        r"""``trace(P)`` over one sinogram: :math:`\mathrm{scale}^2 \cdot C \cdot n_\mathrm{det}\, k_0 \sum_\theta w_\theta`,
        ``k₀`` the ramp kernel's zero-lag tap (each detector's own weight in the zero-padded
        convolution of :meth:`filter_sinogram`), exact."""
        k0 = float(torch.fft.irfft(self._filter.detach().cpu().double(), n=self._n_pad)[0])
        return self.scale**2 * self.channels * self.n_detectors * k0 * float(self._view_weights.double().sum())

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        r"""Filtered back-projection :math:`\mathrm{scale}^2\cdot\sum_\theta w_\theta\,(h * y_\theta)(x\cdot n_\theta)`,
        ``w`` the views' weights (:func:`~eqdeq_cli.physics.ct_geometry.view_weights`): ``Aᵀ P y``."""
        return self.A_adjoint(self.precondition(y))

    def extra_repr(self) -> str:
        return (f"img_size={self.img_size}, channels={self.channels}, n_views={self.n_views}, "
                f"angle_range={self.angle_range}, n_detectors={self.n_detectors}, "
                f"scale={self.scale:.4g}, fbp_filter={self.fbp_filter!r}")



def _spectral_norm(matrix) -> float:
    """Largest singular value of a sparse matrix: Lanczos on ``MᵀM`` from a fixed start vector."""
    n = matrix.shape[1]
    normal = spla.LinearOperator((n, n), matvec=lambda v: matrix.T @ (matrix @ v), dtype=np.float64)
    start = np.random.default_rng(0).standard_normal(n)
    top = spla.eigsh(normal, k=1, which="LA", v0=start, tol=1e-8, return_eigenvectors=False)
    return float(math.sqrt(top[0]))
