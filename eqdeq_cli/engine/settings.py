"""Typed settings of the training loop and of evaluation (``cfg.trainer``, ``cfg.evaluation``).

Built from the config with explicit keyword arguments, so a key added by mistake
(``+trainer.max_step=5``) fails loudly instead of being ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..utils.checks import check_real
from .optim_config import check_optimizer_and_scheduler

#: ``trainer.forward_tol_start=auto`` starts the training solve at this multiple of the solver's
#: tolerance (1e-3 for the shipped 1e-4: measured in docs/experiments.md, section 6).
AUTO_TOL_FACTOR = 10.0


@dataclass
class EvalSettings:
    """How a split is evaluated.

    Args:
        batch_size: samples per DEQ call during evaluation.
        n_images: how many samples (the first ones of the split) are saved as PNG / HDF5.
        data_range: ``R`` of PSNR / SSIM; reconstructions are clamped to ``[0, R]``.
    """

    batch_size: int = 16
    n_images: int = 8
    data_range: float = 1.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"evaluation.batch_size must be >= 1, got {self.batch_size}")
        if self.n_images < 0:
            raise ValueError(f"evaluation.n_images must be >= 0, got {self.n_images}")
        if not self.data_range > 0:
            raise ValueError(f"evaluation.data_range must be > 0, got {self.data_range}")


@dataclass
class TrainerSettings:
    """The training loop.

    Args:
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
        bf16: bfloat16 autocast for the forward pass (CUDA only; ignored on CPU).
        compile: compile the denoiser with ``torch.compile`` (in place; state dicts unchanged);
            refused where its backward would be replayed (:func:`eqdeq_cli.runs.train.check_compile`).
        channels_last: keep the denoiser's 4-D weights, and so its activations, in the
            ``torch.channels_last`` memory layout (same values, same state dict keys; results
            equal up to float32 rounding). On CPU this makes the convolutions and their
            vector–Jacobian products markedly cheaper (``scripts/bench_compile.py``).
        max_steps: optimizer steps in total (a resumed run continues up to it).
        max_minutes: optional wall-clock cap on training, in minutes (accumulated over resumes).
        batch_size: measurements per step.
        optimizer: a ``_partial_`` node of a ``torch.optim`` class, called with the parameters.
        scheduler: a ``_partial_`` node of a schedule in :mod:`eqdeq_cli.engine.schedules`.
        grad_clip: clip the global gradient norm to this value (0 disables).
        log_every: steps between TensorBoard scalars.
        eval_every: steps between validation evaluations (0: only at the end).
        checkpoint_every: steps between writes of ``checkpoints/last.pt`` (0: only at evaluations and the end).
        max_bad_steps: stop after this many consecutive steps with a non-finite loss or gradient.
        monitor: validation metric that selects ``best.pt`` (``psnr``, ``ssim``, ``meas_error``, ...).
        monitor_mode: ``max`` or ``min``.
        progress: show a tqdm progress bar.
        tensorboard: write TensorBoard events to ``tb/``.
        contraction_every: steps between estimates of ``‖∂T/∂z‖₂`` at the fixed point of the
            step's batch (0: never); logged as ``lipschitz``, with a warning when ≥ 1.
        contraction_iters: power iterations of that estimate (each one JVP and one VJP).
        forward_tol_start: the training forward solve's tolerance at step 0 (relative residual;
            ``None``: the solver's own ``tol`` throughout). It falls geometrically to the
            solver's ``tol`` over the first ``forward_tol_ramp`` of ``max_steps``
            (:func:`~eqdeq_cli.engine.schedules.tolerance_at`); logged as ``forward_tol``.
            At or above that ``tol``, and for a gradient mode that solves (implicit, jfb): the
            trainer refuses others with a ``ValueError``. ``"auto"``: :data:`AUTO_TOL_FACTOR`
            times the solver's ``tol`` where the gradient mode solves and the solver has a
            positive ``tol``; otherwise ``None``.
        forward_tol_ramp: the share of ``max_steps``, in (0, 1], over which it falls.
    """

    device: str = "auto"
    bf16: bool = False
    compile: bool = False
    channels_last: bool = True
    max_steps: int = 100
    max_minutes: float | None = None
    batch_size: int = 4
    optimizer: Any = None
    scheduler: Any = None
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    max_bad_steps: int = 5
    monitor: str = "psnr"
    monitor_mode: str = "max"
    progress: bool = True
    tensorboard: bool = True
    contraction_every: int = 50
    contraction_iters: int = 10
    forward_tol_start: float | str | None = None
    forward_tol_ramp: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.contraction_iters < 1:
            raise ValueError(f"trainer.contraction_iters must be >= 1, got {self.contraction_iters}")
        for name in ("log_every", "eval_every", "checkpoint_every", "grad_clip", "contraction_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.forward_tol_start, str):
            if self.forward_tol_start != "auto":
                raise ValueError(f"trainer.forward_tol_start must be a tolerance, auto or null, "
                                 f"got {self.forward_tol_start!r}")
        elif self.forward_tol_start is not None:
            check_real("trainer.forward_tol_start", self.forward_tol_start, low=0.0)
        check_real("trainer.forward_tol_ramp", self.forward_tol_ramp, low=0.0, high=1.0)
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"trainer.max_minutes must be > 0 or null, got {self.max_minutes}")
        from .evaluate import MONITOR_METRICS  # here: evaluate imports this module

        if self.monitor not in MONITOR_METRICS:
            raise ValueError(f"trainer.monitor={self.monitor!r} is not an evaluation metric; valid: "
                             f"{', '.join(MONITOR_METRICS)}")
        if self.monitor_mode not in ("max", "min"):
            raise ValueError(f"trainer.monitor_mode must be 'max' or 'min', got {self.monitor_mode!r}")
        if self.optimizer is None or self.scheduler is None:
            raise ValueError("trainer.optimizer and trainer.scheduler must be set (see configs/trainer/)")
        check_optimizer_and_scheduler(self.optimizer, self.scheduler, max_steps=self.max_steps)
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; other names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"trainer.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device is {name!r} but CUDA is not available; use device=auto or cpu")
    return device


def _from_node(cls: type, node: DictConfig | dict, where: str, keep_nodes: tuple[str, ...] = ()) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key in node:
        if key not in names:
            raise KeyError(f"unknown key {where}.{key}; valid keys: {', '.join(sorted(names))}")
        value = node[key]
        if key not in keep_nodes and isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        kwargs[key] = value
    return cls(**kwargs)


def trainer_settings(node: DictConfig) -> TrainerSettings:
    """:class:`TrainerSettings` from ``cfg.trainer`` (optimizer / scheduler kept as config nodes)."""
    return _from_node(TrainerSettings, node, "trainer", keep_nodes=("optimizer", "scheduler"))


def eval_settings(node: DictConfig) -> EvalSettings:
    """:class:`EvalSettings` from ``cfg.evaluation``."""
    return _from_node(EvalSettings, node, "evaluation")
