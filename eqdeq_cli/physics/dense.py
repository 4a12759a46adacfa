"""A dense-matrix operator: small problems and tests."""
from __future__ import annotations

import torch

from .base import LinearPhysics, NoiseModel


class DenseMatrixPhysics(LinearPhysics):
    """``A x = M vec(x)`` for an explicit matrix ``M`` of shape ``(m, C·H·W)``.

    Measurements have shape ``(B, m)``. Meant for tests and tiny problems.

    Example:
        >>> M = torch.randn(10, 16)
        >>> p = DenseMatrixPhysics(M, img_shape=(1, 4, 4))
        >>> p.A(torch.ones(2, 1, 4, 4)).shape
        torch.Size([2, 10])
    """

    def __init__(self, matrix: torch.Tensor, img_shape: tuple[int, int, int],
                 noise: NoiseModel | None = None) -> None:
        super().__init__(noise)
        n = img_shape[0] * img_shape[1] * img_shape[2]
        if matrix.ndim != 2 or matrix.shape[1] != n:
            raise ValueError(f"matrix must have shape (m, {n}) for img_shape {img_shape}, got {tuple(matrix.shape)}")
        self.img_shape = tuple(img_shape)
        self.meas_shape = (matrix.shape[0],)
        self.register_buffer("matrix", matrix.clone())

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        return x.reshape(x.shape[0], -1) @ self.matrix.to(x.dtype).T

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_measurement(y)
        return (y @ self.matrix.to(y.dtype)).reshape((y.shape[0],) + self.img_shape)

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        self.check_measurement(y)
        pinv = torch.linalg.pinv(self.matrix.to(torch.float64)).to(y.dtype)
        return (y @ pinv.T).reshape((y.shape[0],) + self.img_shape)
