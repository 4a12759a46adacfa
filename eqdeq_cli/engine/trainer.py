"""The training loop: fixed measurements, deterministic data order, checkpoints, evaluation.

One step: take the next ``batch_size`` measurements in the order of
:func:`~eqdeq_cli.engine.state.data_order`, compute ``loss(f, y, physics, group,
x=x if loss.needs_ground_truth else None, generator=loss_generator)``, backpropagate,
clip, step the optimizer and the schedule. Everything that decides what happens next
(weights, optimizer, schedule, step, RNG states, best metric) is in the checkpoint, so a
resumed run continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from hydra.utils import instantiate

from ..data import TensorDictDataset
from ..deq import DEQ
from ..errors import TrainingDivergedError
from ..physics.base import LinearPhysics
from .checkpoint import save_checkpoint
from .evaluate import EvalResult, evaluate, save_samples
from .logs import MetricsCSV, TensorBoard
from .metrics import psnr
from .settings import EvalSettings, TrainerSettings
from .state import capture_rng_state, data_order, restore_rng_state

log = logging.getLogger(__name__)


class StepCallback(Protocol):
    def __call__(self, trainer: "Trainer") -> None: ...


def model_state(deq: DEQ) -> dict[str, torch.Tensor]:
    """``deq.state_dict()`` without the physics' buffers (rebuilt from the config, never learned)."""
    prefixes = tuple(f"{name}." for name, m in deq.named_modules() if isinstance(m, LinearPhysics) and name)
    return {k: v for k, v in deq.state_dict().items() if not k.startswith(prefixes)}


def load_model_state(deq: DEQ, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`model_state` dict; every learned tensor must be present and match."""
    missing, unexpected = deq.load_state_dict(state, strict=False)
    learned = set(model_state(deq))
    missing = [k for k in missing if k in learned]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model built from the config: missing {missing[:5]}, "
                         f"unexpected {list(unexpected)[:5]} (was it trained with another model / map?)")


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
        train_data, val_data: datasets of ``{"y"}`` or ``{"x", "y"}`` tensors (see
            :func:`~eqdeq_cli.engine.measurements.simulate_measurements`).
        settings, eval_settings: see :mod:`eqdeq_cli.engine.settings`.
        run_dir: the Hydra run directory.
        seed: seeds the data order and the loss generator.
        config: the resolved run config as plain data (stored in checkpoints).
        callbacks: called after every step with the trainer (e.g. to request a stop).

    ``stop_event``: set it (from a signal handler, another thread or a callback) to make
    the loop stop at the next step boundary after writing ``checkpoints/last.pt``.
    """

    def __init__(self, *, deq: DEQ, physics: LinearPhysics, group: Any, loss: Any,
                 train_data: TensorDictDataset, val_data: TensorDictDataset | None,
                 settings: TrainerSettings, eval_settings: EvalSettings, run_dir: Path, seed: int,
                 config: dict[str, Any], device: torch.device,
                 callbacks: tuple[StepCallback, ...] = ()) -> None:
        self.deq, self.physics, self.group, self.loss = deq, physics, group, loss
        self.train_data, self.val_data = train_data, val_data
        self.settings, self.eval_settings = settings, eval_settings
        self.run_dir, self.seed, self.config, self.device = Path(run_dir), int(seed), config, device
        self.callbacks = tuple(callbacks)
        self.stop_event = threading.Event()
        self.uses_ground_truth = bool(getattr(loss, "needs_ground_truth", False))
        if self.uses_ground_truth and "x" not in train_data.tensors:
            raise ValueError("the loss needs ground truth (supervised) but the training data has no images; "
                             "use an unsupervised loss (loss=ei, rei or mc)")
        n = len(train_data)
        if n < settings.batch_size:
            raise ValueError(f"trainer.batch_size={settings.batch_size} exceeds the {n} training samples")
        self.steps_per_epoch = n // settings.batch_size
        self.params = [p for p in deq.parameters() if p.requires_grad]
        self.optimizer = instantiate(settings.optimizer)(self.params)
        self.scheduler = instantiate(settings.scheduler)(self.optimizer, max_steps=settings.max_steps)
        self.loss_generator = torch.Generator(device="cpu").manual_seed(self.seed + 7919)
        self.step = 0
        self.bad_steps = 0
        self.train_time_s = 0.0
        self.best: dict[str, float | int | None] = {"value": None, "step": None}
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
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        load_model_state(self.deq, payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step = int(payload["step"])
        restore_rng_state(payload["rng"], {"loss": self.loss_generator})
        self.best = dict(payload.get("best", self.best))
        self.bad_steps = int(payload.get("bad_steps", 0))
        self.train_time_s = float(payload.get("train_time_s", 0.0))

    def save(self, name: str) -> Path:
        return save_checkpoint(self.ckpt_dir / name, self.state_dict())

    # -- one step ----------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        """Indices of the samples used at ``step`` (a pure function of seed and step)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = data_order(len(self.train_data), self.seed, epoch)
        bs = self.settings.batch_size
        return order[i * bs:(i + 1) * bs]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.settings.bf16 and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        """One optimizer step (or a skipped one); returns the numbers to log."""
        idx = self.batch_indices(self.step)
        y = self.train_data.tensors["y"][idx].to(self.device)
        x = self.train_data.tensors["x"][idx].to(self.device) if "x" in self.train_data.tensors else None
        f = _RecordFirstOutput(self.deq)
        self.deq.pop_stats()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            total, terms = self.loss(f, y, self.physics, self.group,
                                     x=x if self.uses_ground_truth else None, generator=self.loss_generator)
        out: dict[str, float] = {"loss": float(total.detach())}
        out.update({f"loss_{k}": float(v) for k, v in terms.items()})
        finite = math.isfinite(out["loss"])
        if finite:
            total.backward()
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
        if x is not None and f.first is not None:
            out["psnr"] = float(psnr(f.first.float().clamp(0, self.eval_settings.data_range), x,
                                     self.eval_settings.data_range).mean())
        out["lr"] = float(self.optimizer.param_groups[0]["lr"])
        step_size = getattr(self.deq.fmap, "step", None)
        if isinstance(step_size, torch.Tensor):
            out["gamma"] = float(step_size.detach())
        self.scheduler.step()
        self.step += 1
        return out

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
        return out

    # -- evaluation ----------------------------------------------------------------------
    def validate(self) -> EvalResult | None:
        """Evaluate on the validation split: CSV row, TensorBoard, samples, ``best.pt``."""
        if self.val_data is None or len(self.val_data) == 0:
            return None
        es = self.eval_settings
        result = evaluate(self.deq, self.val_data, batch_size=es.batch_size, data_range=es.data_range,
                          device=self.device, n_images=es.n_images)
        m = result.metrics
        self.csv.append(self.step, "val", self.train_time_s, m)
        if self.tb is not None:
            self.tb.scalars("val", m, self.step)
            if "x_hat" in result.samples:
                self.tb.images("val/reconstruction", result.samples["x_hat"], self.step, es.data_range)
        stem = f"val_step{self.step:06d}"
        save_samples(result, png_path=self.run_dir / "images" / f"{stem}.png",
                     h5_path=self.run_dir / "reconstructions" / f"{stem}.h5", data_range=es.data_range)
        log.info("step %d val: %s", self.step, format_metrics(m))
        monitor, mode = self._monitor(m)
        value = m[monitor]
        best = self.best["value"]
        if math.isfinite(value) and (best is None or (value > best if mode == "max" else value < best)):
            self.best = {"value": value, "step": self.step, "metric": monitor}
            self.save("best.pt")
        return result

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

        Returns ``"completed"`` or ``"stopped"`` (stop request; ``last.pt`` written).
        Raises :class:`~eqdeq_cli.errors.TrainingDivergedError` after ``max_bad_steps``
        consecutive non-finite steps, leaving the last good checkpoint in place.
        """
        s = self.settings
        self.tb = TensorBoard(self.run_dir / "tb", enabled=s.tensorboard)
        self.deq.train()
        bar = _progress(total=s.max_steps, initial=self.step, enabled=s.progress)
        status = "completed"
        last_eval = -1
        first_step = self.step
        try:
            start = time.perf_counter() - self.train_time_s
            while self.step < s.max_steps:
                if self.stop_event.is_set():
                    status = "stopped"
                    break
                if s.max_minutes is not None and self.train_time_s >= 60.0 * s.max_minutes:
                    log.info("trainer.max_minutes=%s reached at step %d", s.max_minutes, self.step)
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

    def _log_step(self, numbers: dict[str, float], bar: Any) -> None:
        if self.tb is not None and (self.step % max(1, self.settings.log_every) == 0 or self.step == 1):
            self.tb.scalars("train", numbers, self.step)
        postfix = {"loss": f"{numbers['loss']:.3g}"}
        if "psnr" in numbers:
            postfix["psnr"] = f"{numbers['psnr']:.2f}"
        if "iters" in numbers:
            postfix["it"] = f"{numbers['iters']:.0f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                desc="train", unit="step", leave=False)


def format_metrics(metrics: dict[str, float]) -> str:
    """``psnr=28.31 ssim=0.812 ...`` for a log line."""
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "n")
