"""Linear measurement operators ``A``, their exact adjoints and approximate inverses."""
from .base import LinearPhysics, NoiseModel, NoNoise, conjugate_gradient
from .dense import DenseMatrixPhysics

__all__ = ["LinearPhysics", "NoiseModel", "NoNoise", "conjugate_gradient", "DenseMatrixPhysics"]
