"""Fixed-point maps, fixed-point solvers and the DEQ layer with its gradient modes."""
from .build import GradientSettings, build_reconstructor, check_solver
from .gradients import (GRAD_MODES, DEQStats, GradientMode, ImplicitGradient, JacobianFreeGradient,
                        UnrolledGradient, gradient_mode)
from .layer import DEQ
from .maps import HQSMap, MapContext, ProxGradMap
from .regularizers import JacobianPenalty, SpectralPenalty
from .solvers import SolverStats, anderson_solve, fixed_point_solve

__all__ = [
    "DEQ", "DEQStats", "GRAD_MODES", "GradientMode", "ImplicitGradient", "JacobianFreeGradient",
    "UnrolledGradient", "gradient_mode", "GradientSettings", "HQSMap", "JacobianPenalty", "MapContext", "ProxGradMap",
    "SolverStats", "SpectralPenalty", "anderson_solve", "build_reconstructor", "check_solver", "fixed_point_solve",
]
