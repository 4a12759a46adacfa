"""Sparse-matrix products with a precomputed transpose, differentiable by autograd.

``torch.sparse`` CSR tensors hold the matrices; ``scipy.sparse`` builds them. The
product ``M @ X`` (``X`` dense ``(n, k)``) has the backward ``Mᵀ @ G``, taken from a
stored transpose instead of transposing the CSR structure on every call.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def csr_to_torch(matrix: sp.csr_matrix, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A ``scipy.sparse`` CSR matrix as a ``torch`` sparse CSR tensor (int64 indices)."""
    matrix = matrix.tocsr()
    return _csr(torch.from_numpy(matrix.indptr.astype(np.int64)),
                torch.from_numpy(matrix.indices.astype(np.int64)),
                torch.from_numpy(matrix.data).to(dtype), tuple(matrix.shape))


def csr_like(matrix: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``matrix`` with values of ``dtype`` on ``device`` (index arrays shared when already there)."""
    if matrix.dtype == dtype and matrix.device == device:
        return matrix
    matrix = matrix.to(device)
    return _csr(matrix.crow_indices(), matrix.col_indices(), matrix.values().to(dtype), tuple(matrix.shape))


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class _SparseMatmul(torch.autograd.Function):
    """``M @ X`` with backward ``Mᵀ @ G`` (itself differentiable, so double backward works)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, matrix: torch.Tensor, matrix_t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.matrices = (matrix, matrix_t)
        return matrix @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        matrix, matrix_t = ctx.matrices
        return _SparseMatmul.apply(grad.contiguous(), matrix_t, matrix), None, None


def sparse_matmul(matrix: torch.Tensor, matrix_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix @ x`` for a sparse CSR ``(m, n)`` matrix and dense ``x`` of shape ``(n, k)``.

    ``matrix_t`` must be the transpose of ``matrix``; it gives the gradient.
    """
    return _SparseMatmul.apply(x, matrix, matrix_t)
