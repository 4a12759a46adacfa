"""The training loop: fixed measurements, deterministic data order, checkpoints, evaluation.

One step: take the next ``batch_size`` measurements in the order of
:func:`~eqdeq_cli.engine.rng.data_order`, compute ``loss(f, y, physics, group,
x=x if loss.needs_ground_truth else None, generator=loss_generator)``, backpropagate,
clip, step the optimizer and the schedule. Everything that decides what happens next
(weights, optimizer, schedule, step, RNG states, best metric) is in the checkpoint, so a
resumed run continues exactly as an uninterrupted one would.

On several processes (:mod:`eqdeq_cli.engine.distributed`) each rank takes its slice of
the same global batch, draws the loss's randomness for the global batch and keeps its
slice, and gradients are averaged over ranks before clipping; every decision (skip a
non-finite step, stop on a signal or on the time cap) is taken jointly, so the ranks
never disagree on the step. Rank 0 alone writes checkpoints, ``metrics.csv``,
TensorBoard and images; evaluation is sharded and reduced over ranks.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from ..data import TensorDictDataset
from ..deq import DEQ
from ..errors import TrainingDivergedError
from ..physics.base import LinearPhysics
from .checkpoint import load_model_state, model_state, save_checkpoint
from .distributed import Distributed, GlobalBatchDraws, rank_slice
from .evaluate import EvalResult, evaluate_and_record
from .logs import MetricsCSV, TensorBoard, format_metrics, progress_bar
from ..analysis.contraction import spectral_norm_per_sample
from .metrics import PSNR_CAP_DB, compared_images, psnr
from .optim_config import build_optimizer, build_scheduler
from .rng import capture_rng_state, data_order, restore_rng_state
from .settings import AUTO_TOL_FACTOR, EvalSettings, TrainerSettings
from .schedules import follow_horizon, tolerance_at

log = logging.getLogger(__name__)

#: ``‖∂T/∂z‖₂`` at or above which a training run warns: power iteration approaches the norm
#: from below, so a map with norm exactly 1 (a nullspace left untouched) reads slightly under 1,
#: and a rate this close to 1 already needs hundreds of iterations per solve.
CONTRACTION_WARNING = 0.99


class StepCallback(Protocol):
    def __call__(self, trainer: "Trainer") -> None: ...


def solver_tolerance(solver: Callable[..., Any]) -> float:
    """The ``tol`` a solver runs with: its bound keyword, else its signature's default.

    Raises ``ValueError`` for a solver without a ``tol`` keyword (a tolerance schedule,
    ``trainer.forward_tol_start``, needs one)."""
    func, bound = solver, {}
    if isinstance(solver, functools.partial):
        func, bound = solver.func, solver.keywords
    if "tol" in bound:
        return float(bound["tol"])
    try:
        param = inspect.signature(func).parameters.get("tol")
    except (TypeError, ValueError):
        param = None
    if param is None or param.default is inspect.Parameter.empty:
        raise ValueError("trainer.forward_tol_start needs a forward solver with a tol option "
                         f"(solver.forward), got {getattr(func, '__name__', type(func).__name__)}")
    return float(param.default)


def auto_forward_tol_start(deq: Any) -> float | None:
    """``trainer.forward_tol_start=auto``: :data:`~eqdeq_cli.engine.settings.AUTO_TOL_FACTOR` times
    the training solver's ``tol`` when the gradient mode runs a training solve (implicit, jfb)
    and that solver has a positive ``tol``; ``None`` (no schedule) otherwise."""
    if not deq.gradient.has_fixed_point:
        return None
    try:
        tol = solver_tolerance(deq.forward_solver)
    except ValueError:
        return None
    return AUTO_TOL_FACTOR * tol if tol > 0 else None


class _RecordFirstOutput:
    """Calls the DEQ and keeps the first output of a step (for the displayed training PSNR)."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model = model
        self.first: torch.Tensor | None = None

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        out = self.model(y)
        if self.first is None:
            self.first = out.detach()
        return out


class Trainer:
    """Trains ``deq`` with ``loss`` on fixed measurements; writes into ``run_dir``.

    Args:
        deq, physics, group, loss: the built components (``physics`` is ``deq``'s).
        regularizer: a regulariser of the equilibrium (e.g.
            :class:`~eqdeq_cli.deq.regularizers.JacobianPenalty`) or ``None``: each step adds
            ``regularizer.weight ×`` its value at the step's fixed points to the loss, logged
            as ``loss_<regularizer.name>``.
        train_data, val_data: datasets of ``{"y"}`` or ``{"x", "y"}`` tensors (see
            :func:`~eqdeq_cli.engine.measurements.simulate_measurements`).
        settings, eval_settings: see :mod:`eqdeq_cli.engine.settings`.
        run_dir: the Hydra run directory.
        seed: seeds the data order and the loss generator.
        config: the resolved run config as plain data (stored in checkpoints).
        callbacks: called after every step with the trainer (e.g. to request a stop).
        dist: this process's place among the training processes (default: alone).
        stop_event: an event to watch (e.g. :class:`~eqdeq_cli.engine.signals.StopOnSignals`'s);
            a fresh one by default.

    ``stop_event``: set it (from a signal handler, another thread or a callback) to make
    the loop stop at the next step boundary after writing ``checkpoints/last.pt``. With
    several processes, a stop requested on any rank stops all of them at the same step.
    """

    def __init__(self, *, deq: DEQ, physics: LinearPhysics, group: Any, loss: Any,
                 train_data: TensorDictDataset, val_data: TensorDictDataset | None,
                 settings: TrainerSettings, eval_settings: EvalSettings, run_dir: Path, seed: int,
                 config: dict[str, Any], device: torch.device,
                 callbacks: tuple[StepCallback, ...] = (), dist: Distributed | None = None,
                 stop_event: threading.Event | None = None, regularizer: Any = None) -> None:
        self.deq, self.physics, self.group, self.loss = deq, physics, group, loss
        if hasattr(loss, "check"):
            loss.check(physics)  # a term that cannot work with this physics fails before training
        if regularizer is not None and not deq.gradient.has_fixed_point:
            raise ValueError(f"regularizer {type(regularizer).__name__} acts on the DEQ's fixed point, which "
                             f"grad={deq.grad} does not compute; use grad=implicit or grad=jfb")
        self.regularizer = regularizer
        deq.keep_equilibria = regularizer is not None
        self.train_data, self.val_data = train_data, val_data
        self.settings, self.eval_settings = settings, eval_settings
        self.run_dir, self.seed, self.config, self.device = Path(run_dir), int(seed), config, device
        self.callbacks = tuple(callbacks)
        self.dist = dist or Distributed()
        self.stop_event = stop_event or threading.Event()
        self.uses_ground_truth = bool(getattr(loss, "needs_ground_truth", False))
        if self.uses_ground_truth and "x" not in train_data.tensors:
            raise ValueError("the loss needs ground truth (supervised) but the training data has no images; "
                             "use an unsupervised loss (loss=ei, rei or mc)")
        n = len(train_data)
        if n < settings.batch_size:
            raise ValueError(f"trainer.batch_size={settings.batch_size} exceeds the {n} training samples")
        self.steps_per_epoch = n // settings.batch_size
        self.rank_rows = rank_slice(settings.batch_size, self.dist.rank, self.dist.world_size)
        self.dist.broadcast_parameters(deq.parameters())
        self.params = [p for p in deq.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(settings.optimizer, self.params)
        self.scheduler = build_scheduler(settings.scheduler, self.optimizer, settings.max_steps)
        self.loss_generator = torch.Generator(device="cpu").manual_seed(self.seed + 7919)
        self.step = 0
        self.bad_steps = 0
        self.train_time_s = 0.0
        self.time_capped = False  # fit() ended at trainer.max_minutes before max_steps
        self.forward_solver, self.forward_tol = deq.forward_solver, None
        self.forward_tol_start = settings.forward_tol_start
        if self.forward_tol_start == "auto":
            self.forward_tol_start = auto_forward_tol_start(deq)
        if self.forward_tol_start is not None:
            if not deq.gradient.has_fixed_point:
                raise ValueError(f"trainer.forward_tol_start sets the tolerance of the forward solve, which "
                                 f"grad={deq.grad} does not run; use grad=implicit or grad=jfb, or leave it at null")
            self.forward_tol = solver_tolerance(deq.forward_solver)
            if not self.forward_tol > 0:
                raise ValueError(f"trainer.forward_tol_start falls to solver.forward.tol, which must then be > 0, "
                                 f"got {self.forward_tol}")
            if self.forward_tol_start < self.forward_tol:
                raise ValueError(f"trainer.forward_tol_start={self.forward_tol_start:g} is below "
                                 f"solver.forward.tol={self.forward_tol:g}, the tolerance it falls to: give a "
                                 "start at or above it, or null")
            log.info("training solve tolerance: %g at step 0, falling to %g over the first %g of the run "
                     "(trainer.forward_tol_start=%s)", self.forward_tol_start, self.forward_tol,
                     settings.forward_tol_ramp, settings.forward_tol_start)
        self.best: dict[str, float | int | None] = {"value": None, "step": None}
        self.lipschitz: float | None = None  # the latest contraction estimate (measure_contraction)
        self.fallbacks_total = 0
        self._fallback_warned: int | None = None
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.csv = MetricsCSV(self.run_dir / "metrics.csv")
        self.tb: TensorBoard | None = None

    # -- state -----------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop at the next step boundary, after writing ``last.pt``."""
        self.stop_event.set()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": model_state(self.deq), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step,
            "rng": capture_rng_state({"loss": self.loss_generator}), "config": self.config,
            "best": dict(self.best), "bad_steps": self.bad_steps, "train_time_s": self.train_time_s,
            "contraction": {"lipschitz": self.lipschitz, "fallbacks_total": self.fallbacks_total},
            **({"sample_cache": self.deq.sample_cache.state_dict()}
               if getattr(self.deq, "sample_cache", None) is not None else {}),
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint's state (:meth:`state_dict`). The LR schedule then ends at this
        run's ``trainer.max_steps``, not the checkpoint's (:func:`~.schedules.follow_horizon`), with
        one log line when that horizon changed.

        Raises:
            ValueError: the model's parameter shapes differ from the checkpoint's."""
        load_model_state(self.deq, payload["model"])
        cache = getattr(self.deq, "sample_cache", None)
        if cache is not None and "sample_cache" in payload:  # checkpoints of older versions start it empty
            cache.load_state_dict(payload["sample_cache"], device=self.device)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step = int(payload["step"])
        changed = follow_horizon(self.scheduler, self.settings.max_steps)
        if changed is not None:
            old, before, after = changed
            log.info("LR schedule horizon %d -> %d steps: trainer.max_steps changed since the checkpoint, so the "
                     "schedule follows the new horizon from step %d on (LR %.4g, was %.4g)",
                     old, self.settings.max_steps, self.step, after, before)
        restore_rng_state(payload["rng"], {"loss": self.loss_generator})
        self.best = dict(payload.get("best", self.best))
        self.bad_steps = int(payload.get("bad_steps", 0))
        contraction = payload.get("contraction") or {}
        self.lipschitz = contraction.get("lipschitz")
        self.fallbacks_total = int(contraction.get("fallbacks_total", 0))
        self.train_time_s = float(payload.get("train_time_s", 0.0))

    def save(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` (rank 0 only; the state is the same on every rank)."""
        path = self.ckpt_dir / name
        if self.dist.is_main:
            save_checkpoint(path, self.state_dict())
        return path

    # -- one step ----------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        """Indices of the global batch of ``step`` (a pure function of seed and step)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = data_order(len(self.train_data), self.seed, epoch)
        bs = self.settings.batch_size
        return order[i * bs:(i + 1) * bs]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.settings.bf16 and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _draws(self, generator: torch.Generator | None = None) -> contextlib.AbstractContextManager:
        """Global-batch random draws from ``generator`` (default: the loss's) on several processes
        (see :class:`GlobalBatchDraws`)."""
        if not self.dist.enabled:
            return contextlib.nullcontext()
        rows = self.rank_rows
        return GlobalBatchDraws(generator=generator or self.loss_generator, local_batch=rows.stop - rows.start,
                                global_batch=self.settings.batch_size, offset=rows.start,
                                gather=self.dist.all_gather_batch)

    def train_step(self) -> dict[str, float]:
        """One optimizer step (or a skipped one); returns the numbers to log.

        The loss values are means over the global batch; solver numbers and the training
        PSNR are this rank's.
        """
        idx = self.batch_indices(self.step)[self.rank_rows]
        y = self.train_data.tensors["y"][idx].to(self.device)
        x = self.train_data.tensors["x"][idx].to(self.device) if "x" in self.train_data.tensors else None
        f = _RecordFirstOutput(self.deq)
        tol = self._set_forward_tolerance()
        self.deq.pop_stats()
        self.deq.pop_equilibria()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast(), self._draws():
            total, terms = self.loss(f, y, self.physics, self.group,
                                     x=x if self.uses_ground_truth else None, generator=self.loss_generator)
        if self.regularizer is not None:
            total, terms = self._regularize(total, terms)
        values = torch.tensor([float(total.detach()), *(float(v) for v in terms.values())], dtype=torch.float64)
        values = self.dist.all_reduce_sum(values) / self.dist.world_size
        out: dict[str, float] = {"loss": float(values[0])}
        out.update({f"loss_{k}": float(v) for k, v in zip(terms, values[1:])})
        finite = math.isfinite(out["loss"])  # a non-finite loss on any rank makes the mean non-finite
        if finite:
            total.backward()
            self.dist.average_gradients(self.params)
            if self.settings.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
            else:
                norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
            out["grad_norm"] = float(norm)
            finite = math.isfinite(out["grad_norm"])
        if finite:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            log.warning("step %d: non-finite loss or gradient (loss=%s); step skipped (%d in a row, limit %d)",
                        self.step + 1, out["loss"], self.bad_steps, self.settings.max_bad_steps)
        out["skipped"] = float(not finite)
        out.update(self._solver_numbers())
        every = self.settings.contraction_every
        if every and (self.step + 1) % every == 0 and math.isfinite(out["loss"]):
            lip = self.measure_contraction(y)
            if lip is not None:
                out["lipschitz"] = lip
        if x is not None and f.first is not None:
            r = self.eval_settings.data_range
            a, b = compared_images(f.first.float(), x, r, complex_images=self.physics.complex_images)
            out["psnr"] = float(psnr(a, b, r, max_db=PSNR_CAP_DB).mean())
        out["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if tol is not None:
            out["forward_tol"] = tol
        step_size = getattr(self.deq.fmap, "step", None)
        if isinstance(step_size, torch.Tensor):
            out["gamma"] = float(step_size.detach())
        self.scheduler.step()
        self.step += 1
        return out

    def _set_forward_tolerance(self) -> float | None:
        """Give the DEQ's training solve this step's tolerance (``trainer.forward_tol_start``);
        returns it, or ``None`` when the solver's own tolerance holds throughout."""
        s = self.settings
        if self.forward_tol_start is None:
            return None
        tol = tolerance_at(self.step, max_steps=s.max_steps, start=self.forward_tol_start, end=self.forward_tol,
                           ramp=s.forward_tol_ramp)
        self.deq.forward_solver = functools.partial(self.forward_solver, tol=tol)
        return tol

    def _regularize(self, total: torch.Tensor, terms: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """``total + weight × R`` with ``R`` the regulariser at this step's fixed points; ``terms``
        gains ``R`` under the regulariser's name and the new total. The probes come from a
        generator seeded by the run's seed and the step (a resumed run draws the same ones), drawn
        for the global batch on several processes (each rank gets the rows one process would give
        its samples). Computed outside autocast: a hinge near its target needs float32."""
        reg = self.regularizer
        generator = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self.step + 500_009)
        with self._draws(generator):
            value = reg(self.deq.fmap, self.deq.pop_equilibria(), generator=generator)
        total = total + reg.weight * value
        terms = {k: v for k, v in terms.items() if k != "total"}
        terms[reg.name] = float(value.detach())
        terms["total"] = float(total.detach())
        return total, terms

    def _solver_numbers(self) -> dict[str, float]:
        calls = self.deq.pop_stats()
        if not calls:
            return {}
        fw = [c.forward for c in calls]
        bw = [b for c in calls for b in c.backward]
        out = {
            "iters": sum(s.iterations for s in fw) / len(fw),
            "residual": max(float(s.residual.max()) for s in fw),
            "nonconverged": float(sum(int((~s.converged).sum()) for s in fw)),
            "nonfinite": float(sum(int(s.nonfinite) for s in fw + bw)),
        }
        if bw:
            out["bwd_iters"] = sum(s.iterations for s in bw) / len(bw)
            out["bwd_residual"] = max(float(s.residual.max()) for s in bw)
            out["bwd_nonconverged"] = float(sum(int((~s.converged).sum()) for s in bw))
            fallbacks = sum(n for c in calls for n in c.fallbacks)
            out["bwd_fallback"] = float(fallbacks)
            if fallbacks:
                self.fallbacks_total += fallbacks
                self._warn_fallback(fallbacks, sum(s.residual.numel() for s in bw))
        return out

    def _warn_fallback(self, n: int, of: int) -> None:
        """A warning the first time, then one per validation period (the count is in TensorBoard)."""
        period = self.settings.eval_every or self.settings.max_steps
        if self._fallback_warned is not None and self.step // period == self._fallback_warned:
            return
        self._fallback_warned = self.step // period
        log.warning("step %d: the implicit backward solve failed for %d of %d samples (residual above "
                    "grad.backward_accept or non-finite); they used the Jacobian-free gradient. "
                    "The map is probably not contractive at its fixed point (see 'lipschitz'); "
                    "%d such samples so far", self.step + 1, n, of, self.fallbacks_total)

    # -- contraction ------------------------------------------------------------------------
    def measure_contraction(self, y: torch.Tensor) -> float | None:
        """``max_b ‖∂T/∂z‖₂`` at the fixed points of the measurements ``y`` (power iteration,
        ``trainer.contraction_iters`` steps from a draw seeded by the step), or ``None`` when the
        gradient mode has no fixed point (unrolled). Below 1: the map contracts there."""
        if not self.deq.gradient.has_fixed_point:
            return None
        deq = self.deq
        generator = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self.step)
        with torch.no_grad():
            ctx = deq.fmap.prepare(y)
            z_star, _ = deq.solve(y, ctx, record=False)
        lip = spectral_norm_per_sample(lambda z: deq.fmap(z, ctx), z_star, n_iter=self.settings.contraction_iters,
                                       generator=generator)
        value = float(lip.max())
        self.lipschitz = value
        if not value < CONTRACTION_WARNING:
            log.warning("step %d: the fixed-point map is not a contraction at its solution on this batch "
                        "(‖∂T/∂z‖₂ ≈ %.4f, at least %g): the forward solve may stall and implicit gradients fall "
                        "back to JFB. Anchoring the map (map.anchor=0.05, as the MRI and inpainting presets do), a penalty "
                        "on ‖∂T/∂z‖₂ (regularizer=spectral) or a contractive denoiser (model=dncnn_averaged) helps; "
                        "see docs/stability.md",
                        self.step + 1, value, CONTRACTION_WARNING)
        return value

    # -- evaluation ----------------------------------------------------------------------
    def validate(self) -> EvalResult | None:
        """Evaluate on the validation split: CSV row, TensorBoard, samples, ``best.pt``."""
        if self.val_data is None or len(self.val_data) == 0:
            return None
        result = evaluate_and_record(self.deq, self.val_data, self.eval_settings, device=self.device,
                                     run_dir=self.run_dir, split="val", step=self.step,
                                     stem=f"val_step{self.step:06d}", time_s=self.train_time_s, csv=self.csv,
                                     tb=self.tb, dist=self.dist, extra=self.contraction_metrics())
        m = result.metrics
        if self.dist.is_main:
            log.info("step %d val: %s", self.step, format_metrics(m))
        monitor, mode = self._monitor(m)
        value = m[monitor]
        best = self.best["value"]
        if math.isfinite(value) and (best is None or (value > best if mode == "max" else value < best)):
            self.best = {"value": value, "step": self.step, "metric": monitor}
            self.save("best.pt")
        return result

    def contraction_metrics(self) -> dict[str, float]:
        """The latest ``lipschitz`` estimate and the number of backward fallbacks so far, for the
        evaluation records (empty before the first estimate)."""
        out: dict[str, float] = {"bwd_fallback_total": float(self.fallbacks_total)}
        if self.lipschitz is not None:
            out["lipschitz"] = self.lipschitz
        return out

    def _monitor(self, metrics: dict[str, float]) -> tuple[str, str]:
        name, mode = self.settings.monitor, self.settings.monitor_mode
        if name in metrics:
            return name, mode
        if "meas_error" in metrics:  # measurement-only data: no image metric exists
            return "meas_error", "min"
        raise ValueError(f"trainer.monitor={name!r} is not an evaluation metric; valid: {', '.join(sorted(metrics))}")

    # -- the loop -----------------------------------------------------------------------
    def fit(self) -> str:
        """Train up to ``max_steps`` (or the time cap, or a stop request).

        Returns ``"completed"`` or ``"stopped"`` (stop request; ``last.pt`` written). A run ended
        by the time cap is ``"completed"`` with :attr:`time_capped` set.
        Raises :class:`~eqdeq_cli.errors.TrainingDivergedError` after ``max_bad_steps``
        consecutive non-finite steps, leaving the last good checkpoint in place.
        """
        s = self.settings
        # what a killed process, or an earlier run of this experiment, logged past this step is
        # written again: hidden in TensorBoard, dropped from metrics.csv
        self.tb = TensorBoard(self.run_dir / "tb", enabled=s.tensorboard and self.dist.is_main,
                              purge_step=self.step + 1)
        if self.dist.is_main:
            self.csv.purge(self.step + 1)
        self.deq.train()
        bar = progress_bar(total=s.max_steps, initial=self.step, desc="train", unit="step",
                           enabled=s.progress and self.dist.is_main)
        status = "completed"
        last_eval = -1
        first_step = self.step
        try:
            start = time.perf_counter() - self.train_time_s
            while self.step < s.max_steps:
                stop, out_of_time = self._stop_flags()
                if stop:
                    status = "stopped"
                    break
                if out_of_time:
                    log.info("trainer.max_minutes=%s reached at step %d", s.max_minutes, self.step)
                    self.time_capped = True
                    break
                numbers = self.train_step()
                self.train_time_s = time.perf_counter() - start
                if self.bad_steps >= s.max_bad_steps:
                    raise TrainingDivergedError(
                        f"training stopped: {self.bad_steps} consecutive steps had a non-finite loss or gradient "
                        f"(trainer.max_bad_steps={s.max_bad_steps}); the last good checkpoint is "
                        f"{self.ckpt_dir / 'last.pt'}. Lower trainer.optimizer.lr or raise trainer.grad_clip.")
                self._log_step(numbers, bar)
                good = self.bad_steps == 0  # never overwrite the last good checkpoint with a suspect state
                if good and s.eval_every and self.step % s.eval_every == 0 and self.step < s.max_steps:
                    self.validate()
                    last_eval = self.step
                    self.save("last.pt")
                elif good and s.checkpoint_every and self.step % s.checkpoint_every == 0:
                    self.save("last.pt")
                for callback in self.callbacks:
                    callback(self)
            if status == "completed" and last_eval != self.step and (self.step > first_step or self.step == 0):
                self.validate()
            if self.bad_steps == 0:
                self.save("last.pt")
        finally:
            bar.close()
            if status == "stopped":
                log.info("stop requested: wrote %s at step %d", self.ckpt_dir / "last.pt", self.step)
        return status

    def _stop_flags(self) -> tuple[bool, bool]:
        """(stop requested, time cap reached), on any rank: one small all-reduce per step."""
        cap = self.settings.max_minutes
        flags = torch.tensor([float(self.stop_event.is_set()),
                              float(cap is not None and self.train_time_s >= 60.0 * cap)], dtype=torch.float64)
        flags = self.dist.all_reduce_sum(flags)
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _log_step(self, numbers: dict[str, float], bar: Any) -> None:
        if self.tb is not None and (self.step % max(1, self.settings.log_every) == 0 or self.step == 1):
            self.tb.scalars("train", numbers, self.step)
        postfix = {"loss": f"{numbers['loss']:.3g}"}
        if "psnr" in numbers:
            postfix["psnr"] = f"{numbers['psnr']:.2f}"
        if "iters" in numbers:
            postfix["it"] = f"{numbers['iters']:.0f}"
        if self.lipschitz is not None:
            postfix["lip"] = f"{self.lipschitz:.3f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

