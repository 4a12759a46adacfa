"""Linear measurement operators ``A``, their exact adjoints and approximate inverses."""
from ..linalg import conjugate_gradient  # re-exported: physics calls it, linalg defines it
from .base import LinearPhysics, NoiseModel, NoNoise
from .ct import CTRadon
from .dense import DenseMatrixPhysics
from .inpainting import Inpainting
from .mri import MRICartesian
from .noise import GaussianNoise, PoissonGaussianNoise, PoissonNoise

__all__ = [
    "LinearPhysics", "NoiseModel", "NoNoise", "conjugate_gradient", "DenseMatrixPhysics",
    "CTRadon", "MRICartesian", "Inpainting", "GaussianNoise", "PoissonNoise", "PoissonGaussianNoise",
]
