"""Fixed-point maps, fixed-point solvers and the DEQ layer with its gradient modes."""
from .build import GradientSettings, build_reconstructor, check_solver
from .layer import DEQ, GRAD_MODES, DEQStats
from .maps import HQSMap, MapContext, ProxGradMap
from .solvers import SolverStats, anderson_solve, fixed_point_solve

__all__ = [
    "DEQ", "DEQStats", "GRAD_MODES", "GradientSettings", "HQSMap", "MapContext", "ProxGradMap",
    "SolverStats", "anderson_solve", "build_reconstructor", "check_solver", "fixed_point_solve",
]
