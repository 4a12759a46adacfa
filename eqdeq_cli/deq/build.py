"""Build the DEQ reconstructor from the composed config.

Config nodes used (see ``configs/{map,solver,grad}/``):

* ``cfg.map``: a ``_partial_: true`` node of a map class; called with
  ``denoiser=..., physics=...``.
* ``cfg.solver.forward`` / ``.backward`` / ``.eval``: ``_partial_: true`` nodes of a
  solve function (``fixed_point_solve``, ``anderson_solve``).
* ``cfg.grad``: a :class:`GradientSettings` node (``mode``, ``unroll_steps``, ``warm_start``).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from eqdeq_cli.physics.base import LinearPhysics

from .gradients import check_gradient_mode
from .layer import DEQ


@dataclass(frozen=True)
class GradientSettings:
    """How training differentiates the DEQ.

    Args:
        mode: ``implicit``, ``jfb`` or ``unrolled``.
        unroll_steps: tracked iterations of the unrolled mode.
        warm_start: reuse the previous solution as the starting point (see :class:`DEQ`).
        backward_accept: implicit mode: the largest relative residual of the backward solve
            whose solution is used; samples above it (or non-finite) take the Jacobian-free
            gradient and are counted (see :class:`~eqdeq_cli.deq.gradients.ImplicitGradient`).
            ``null`` keeps every finite solution.
        closed_form_vjp: implicit mode: the backward solve applies the transpose of the map's
            data step ``I − γAᵀA`` in closed form instead of through autograd (same gradient).
        sample_cache: training solves start each sample from its previous fixed point, kept
            for up to this many samples (0: off); see :class:`~eqdeq_cli.deq.layer.FixedPointCache`.
    """

    mode: str = "implicit"
    unroll_steps: int = 10
    warm_start: bool = False
    backward_accept: float | None = None
    closed_form_vjp: bool = True
    sample_cache: int = 0

    def __post_init__(self) -> None:
        try:
            check_gradient_mode(self.mode)
        except ValueError as err:
            raise ValueError(f"grad.mode: {err}") from None


def check_solver(solver: Callable[..., Any], name: str) -> None:
    """Fail early, with the config key in the message, on a mistyped or invalid solver option.

    Binds the partial's options to the function's signature (unknown key → ``TypeError``)
    and runs the solver once on a tiny contraction (invalid value → ``ValueError``).
    """
    if isinstance(solver, functools.partial):
        try:
            inspect.signature(solver.func).bind_partial(*solver.args, **solver.keywords)
        except TypeError as err:
            raise TypeError(f"solver.{name}: {err}") from None
    try:
        solver(lambda z: 0.5 * z + 1.0, torch.zeros(1, 2))
    except (TypeError, ValueError) as err:
        raise type(err)(f"solver.{name}: {err}") from None


def build_reconstructor(cfg: DictConfig, physics: LinearPhysics, denoiser: nn.Module) -> DEQ:
    """``DEQ`` from ``cfg.map``, ``cfg.solver.{forward,backward,eval}`` and ``cfg.grad``."""
    for key in ("map", "solver", "grad"):
        if key not in cfg:
            raise KeyError(f"config has no '{key}' node; expected map, solver and grad")
    missing = [k for k in ("forward", "backward", "eval") if k not in cfg.solver]
    if missing:
        raise KeyError(f"solver config lacks {', '.join(missing)}; it needs forward, backward and eval")
    extra = sorted(set(cfg.solver.keys()) - {"forward", "backward", "eval"})
    if extra:
        raise KeyError(f"unknown solver config keys {extra}; valid: forward, backward, eval")

    make_map = instantiate(cfg.map)
    try:
        fmap = make_map(denoiser=denoiser, physics=physics)
    except ValueError as exc:
        raise ValueError(f"map: {exc}") from None
    except TypeError as exc:  # an option the map's class does not take (map=hqs +map.preconditioner=ramp)
        func = getattr(make_map, "func", None)
        if func is None or "unexpected keyword argument" not in str(exc):
            raise
        valid = [n for n in inspect.signature(func).parameters if n not in ("self", "denoiser", "physics")]
        bad = str(exc).split("unexpected keyword argument ")[-1]
        raise ValueError(f"map: {func.__name__} has no option {bad}; its options: {', '.join(valid)}") from None
    solvers = {}
    for name in ("forward", "backward", "eval"):
        solvers[name] = instantiate(cfg.solver[name])
        check_solver(solvers[name], name)

    grad_cfg = cfg.grad
    if "_target_" in grad_cfg:
        grad = instantiate(grad_cfg)
    else:
        grad = GradientSettings(**OmegaConf.to_container(grad_cfg, resolve=True))  # type: ignore[arg-type]
    if not isinstance(grad, GradientSettings):
        raise TypeError(f"cfg.grad must build a GradientSettings, got {type(grad).__name__}")

    return DEQ(fmap, grad=grad.mode, forward_solver=solvers["forward"],
               backward_solver=solvers["backward"], eval_solver=solvers["eval"],
               unroll_steps=grad.unroll_steps, warm_start=grad.warm_start,
               backward_accept=float("inf") if grad.backward_accept is None else grad.backward_accept,
               closed_form_vjp=grad.closed_form_vjp, sample_cache=grad.sample_cache)
