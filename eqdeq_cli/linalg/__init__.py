"""Generic linear algebra on batches of images: solvers that physics and maps call."""
from .cg import conjugate_gradient

__all__ = ["conjugate_gradient"]
