"""Analysis of trained reconstructors: equivariance, prox-likeness, contraction, identifiability,
and where the reconstruction error lies (range or nullspace of ``A``).

Library functions that take modules or callables and return plain dicts/floats
(JSON-ready); they need no runner or checkpoint.
"""
from .contraction import convergence_rate, lipschitz_estimate, spectral_norm_per_sample
from .error_split import error_split
from .equivariance import disc_mask, equivariance_error, measure_then_reconstruct
from .identifiability import identifiability, identifiability_warning, nullspace_component
from .jacobian import jacobian_asymmetry, jacobian_spectrum
from .preflight import check_group

__all__ = [
    "equivariance_error", "measure_then_reconstruct", "disc_mask",
    "jacobian_asymmetry", "jacobian_spectrum",
    "lipschitz_estimate", "spectral_norm_per_sample", "convergence_rate",
    "identifiability", "identifiability_warning", "nullspace_component", "error_split", "check_group",
]
