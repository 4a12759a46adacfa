"""Train as the config says, writing the run output contract into the run directory.

Several processes (``torchrun``, ``srun``): see :mod:`eqdeq_cli.engine.distributed`.
Every rank calls :func:`train` with rank 0's run directory; rank 0 alone writes files.
"""
from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ..analysis import check_group
from ..components import build_components
from ..engine.distributed import Distributed
from ..engine.evaluate import evaluate_and_record
from ..engine.logs import format_metrics
from ..engine.rng import seed_everything
from ..engine.settings import eval_settings, resolve_device, trainer_settings
from ..engine.trainer import StepCallback, Trainer
from ..errors import CheckpointError
from ..trust import TrustedTargets, check_saved_config, resolved_saved_config
from ..utils.files import write_json
from .restore import measurement_sets
from .resume import check_resume_value, check_run_length, check_same_experiment, resume_checkpoint

log = logging.getLogger(__name__)


def _read_resume_checkpoint(cfg: DictConfig, run_dir: Path, config: dict[str, Any],
                            device: Any, warn: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from (:mod:`eqdeq_cli.runs.resume`), or ``None`` for a new run.

    Its saved config is not built (``cfg`` is), but it is held to the same trust as in ``eqdeq
    eval`` before anything is built (a checkpoint naming foreign code is refused whatever it is
    used for), it must be the same experiment as ``config``, and it must not have trained more
    steps than ``trainer.max_steps``. Without a checkpoint of its own, ``run_dir`` holding a
    finished run's results is trained again only for the same experiment
    (:func:`~eqdeq_cli.runs.resume.check_rerun_without_checkpoint`).
    """
    found = resume_checkpoint(str(cfg.resume), run_dir, device, config=config, warn=warn)
    if found is None:
        return None
    source, checkpoint = found
    saved = resolved_saved_config(checkpoint["config"], str(source))
    check_saved_config(saved, TrustedTargets.for_command(cfg), str(source))
    check_same_experiment(saved, config, source, str(cfg.resume))
    check_run_length(int(checkpoint["step"]), int(cfg.trainer.max_steps), source, str(cfg.resume))
    return found


def check_compile(grad: str, contraction_every: int, regularizer: Any) -> None:
    """Refuse ``trainer.compile=true`` where the compiled denoiser's backward would be replayed:
    the implicit backward solve (one VJP per iteration through the kept graph), the contraction
    estimate and the regularisers (double backward). torch.compile frees a compiled backward's
    buffers after one use, so these fail, and with that freeing turned off its replays of the
    default DnCNN differ from the first pass (docs/experiments.md, section 7).

    Raises:
        ValueError: one of those is configured."""
    uses = [name for name, on in (("grad=implicit", grad == "implicit"),
                                  (f"trainer.contraction_every={contraction_every}", contraction_every > 0),
                                  ("a regularizer", regularizer is not None)) if on]
    if uses:
        raise ValueError(f"trainer.compile=true cannot be used with {', '.join(uses)}: each differentiates the "
                         "compiled denoiser more than once, which torch.compile does not support (it fails, or "
                         "gives wrong gradients); compile only with grad=jfb or grad=unrolled, "
                         "trainer.contraction_every=0 and no regularizer (docs/experiments.md, section 7)")


def train(cfg: DictConfig, *, run_dir: str | Path, callbacks: Sequence[StepCallback] = (),
          stop_event: threading.Event | None = None, dist: Distributed | None = None,
          on_accepted: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says, writing the output contract into ``run_dir``.

    Returns the final test metrics (also written to ``metrics.json``), or
    ``{"status": "stopped", "step": n}`` when a stop was requested (``stop_event`` set,
    or a callback called ``trainer.request_stop()``). ``dist``: this process's place
    among several training processes (all ranks call ``train`` with the same
    ``run_dir``; rank 0 writes the files). ``on_accepted``: called once the run directory is
    known to be this run's (a new run, or the same experiment resumed), before anything is
    written there; a refused directory (:class:`~eqdeq_cli.runs.resume.ResumeRefused`, an
    unreadable checkpoint) is left as it was.

    A run stopped by the time cap (``trainer.max_minutes``) is evaluated and completed as
    usual; ``metrics.json`` and the summary then hold ``time_cap`` (see :func:`time_cap_record`).
    """
    dist = dist or Distributed()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resume_value(str(cfg.resume))
    settings = trainer_settings(cfg.trainer)
    es = eval_settings(cfg.evaluation)
    device = dist.place(resolve_device(settings.device))
    config = OmegaConf.to_container(cfg, resolve=True)
    log.info("run directory: %s", run_dir)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True), extra={"file_only": True})
    found = _read_resume_checkpoint(cfg, run_dir, config, device, warn=dist.is_main)
    if on_accepted is not None:
        on_accepted()

    seed_everything(int(cfg.seed))
    comps = build_components(cfg)
    if settings.compile:  # a config error: refused before any data is simulated
        check_compile(comps.deq.grad, settings.contraction_every, comps.regularizer)
    if dist.is_main and (warning := check_group(comps.physics, comps.group, comps.loss)):
        log.warning("%s", warning)
    sets = measurement_sets(cfg, comps, ("train", "val", "test"))
    comps.deq.to(device)
    comps.loss.to(device) if hasattr(comps.loss, "to") else None
    if settings.channels_last:
        comps.denoiser.to(memory_format=torch.channels_last)
    if settings.compile:
        comps.denoiser.compile()
    trainer = Trainer(deq=comps.deq, physics=comps.physics, group=comps.group, loss=comps.loss,
                      train_data=sets["train"], val_data=sets["val"], settings=settings, eval_settings=es,
                      run_dir=run_dir, seed=int(cfg.seed), config=config, device=device, callbacks=tuple(callbacks),
                      dist=dist, stop_event=stop_event, regularizer=comps.regularizer)
    if found is not None:
        source, checkpoint = found
        try:
            trainer.load_state_dict(checkpoint)
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from exc
        log.info("resumed from %s at step %d", source, trainer.step)
    try:
        status = trainer.fit()
        if status == "stopped":
            return {"status": "stopped", "step": trainer.step}
        result = evaluate_and_record(comps.deq, sets["test"], es, device=device, run_dir=run_dir, split="test",
                                     step=trainer.step, time_s=trainer.train_time_s, tb=trainer.tb, dist=dist,
                                     progress=settings.progress, extra=trainer.contraction_metrics(),
                                     stop_event=stop_event)
        summary = {**result.metrics, "split": "test", "step": trainer.step, "steps": trainer.step,
                   "train_time_s": round(trainer.train_time_s, 3), "best_val": trainer.best, "status": status,
                   "checkpoint": "checkpoints/last.pt"}
        if trainer.time_capped:
            summary["time_cap"] = time_cap_record(trainer.step, settings.max_steps, settings.max_minutes)
        if dist.is_main:
            write_json(run_dir / "metrics.json", summary)
        if trainer.tb is not None:
            trainer.tb.hparams(_hparams(cfg), {k: result.metrics[k] for k in ("psnr", "ssim", "meas_error")
                                               if k in result.metrics})
        log.info("test: %s (trained %d steps in %.1f s)", format_metrics(result.metrics), trainer.step,
                 trainer.train_time_s)
        if trainer.time_capped:
            log.warning("%s: these metrics are of step %d; to train on, raise trainer.max_minutes (or set it to "
                        "null) and run the same command again", summary["time_cap"], trainer.step)
        return summary
    finally:
        trainer.close()


def time_cap_record(step: int, max_steps: int, max_minutes: float | None) -> str:
    """``"stopped at the time cap (trainer.max_minutes=8) at step 78 of 400"``: the ``time_cap``
    field of ``metrics.json`` and ``status.json`` of a run the cap ended early."""
    return f"stopped at the time cap (trainer.max_minutes={max_minutes:g}) at step {step} of {max_steps}"


def monitored_value(cfg: DictConfig, summary: dict[str, Any]) -> float | None:
    """The validation metric a sweeper optimises (best value), or the test value as fallback."""
    best = summary.get("best_val") or {}
    if isinstance(best, dict) and best.get("value") is not None:
        return float(best["value"])
    value = summary.get(str(OmegaConf.select(cfg, "trainer.monitor", default="psnr")))
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _hparams(cfg: DictConfig) -> dict[str, Any]:
    """The choices that define a run, for TensorBoard's hparams view."""
    out: dict[str, Any] = {}
    for key in ("physics", "group", "model", "map", "solver.forward", "loss", "data"):
        target = OmegaConf.select(cfg, f"{key}._target_", default=None)
        if target is not None:
            out[key] = str(target).rsplit(".", 1)[-1]
    out["grad"] = OmegaConf.select(cfg, "grad.mode", default="")
    for key in ("trainer.optimizer.lr", "trainer.batch_size", "trainer.max_steps", "seed"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            out[key] = value
    return out
