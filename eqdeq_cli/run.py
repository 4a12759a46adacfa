"""The Hydra entry point of eqdeq: build everything from the config, then train or evaluate.

``eqdeq train ...`` composes ``configs/train.yaml`` and ``eqdeq eval ckpt=PATH ...``
composes ``configs/eval.yaml``; both land in :func:`task`, which dispatches on
``cfg.task`` and applies the error policy:

* a user error (bad value, missing file, size mismatch, missing checkpoint) is logged as
  one line on stderr, its traceback goes to the run's log file only, exit code 1;
* in a multirun, any failure of a job is logged with its traceback, recorded in the
  job's ``status.json``, and the sweep goes on (failures are reported at its end).

Preemption: while training, SIGUSR1 / SIGUSR2 / SIGTERM stop the run at the next step
boundary (:mod:`eqdeq_cli.engine.signals`): ``checkpoints/last.pt`` is written,
``status.json`` says ``"stopped"``, no ``metrics.json`` is written, the handler installed
before (submitit's requeue) is called, and the process exits with
:data:`~eqdeq_cli.engine.signals.STOP_EXIT_CODE` (75), also in a multirun, whose later
jobs then do not start. Running the same command again resumes (``resume=auto``).

Several processes (``torchrun``, ``srun``): see :mod:`eqdeq_cli.engine.distributed`.
Every rank uses rank 0's run directory; rank 0 alone writes files and logs to the file.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
import threading
from typing import Any, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .analysis import check_group
from .build import build_components
from .engine.checkpoint import load_checkpoint, resolve_checkpoint_path
from .engine.distributed import Distributed, detect_launch, init_distributed, shutdown_distributed
from .engine.evaluate import EvalResult, evaluate, save_samples
from .engine.logs import MetricsCSV, TensorBoard
from .engine.measurements import simulate_measurements
from .engine.settings import eval_settings, resolve_device, trainer_settings
from .engine.signals import STOP_EXIT_CODE, StopOnSignals
from .engine.state import seed_everything
from .engine.status import write_status
from .utils.files import write_json
from .engine.trainer import StepCallback, Trainer, format_metrics, load_model_state
from .errors import CheckpointError, UserError, user_error_message

log = logging.getLogger(__name__)

#: Keys of ``eval.yaml`` that belong to the evaluation itself, not to the trained run.
EVAL_KEYS = ("task", "ckpt", "split", "resume")
RESUME_CHOICES = ("auto", "never")
_ABSENT = object()


# -- training ------------------------------------------------------------------------------
def _resume_source(resume: str, run_dir: Path) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    return resolve_checkpoint_path(resume)


def measurement_sets(cfg: DictConfig, components: Any, splits: Sequence[str]) -> dict[str, Any]:
    """The run's fixed measurement sets ``{split: dataset of {"y"} or {"x", "y"}}``, simulated
    from the split's images with the seeds of ``cfg.measurement_seeds``."""
    seeds = cfg.measurement_seeds
    return {split: simulate_measurements(components.data.split(split), components.physics,
                                         seed=int(seeds[split]), split=split) for split in splits}


def train(cfg: DictConfig, *, run_dir: str | Path, callbacks: Sequence[StepCallback] = (),
          stop_event: threading.Event | None = None, dist: Distributed | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says, writing the output contract into ``run_dir``.

    Returns the final test metrics (also written to ``metrics.json``), or
    ``{"status": "stopped", "step": n}`` when a stop was requested (``stop_event`` set,
    or a callback called ``trainer.request_stop()``). ``dist``: this process's place
    among several training processes (all ranks call ``train`` with the same
    ``run_dir``; rank 0 writes the files).
    """
    dist = dist or Distributed()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if str(cfg.resume) not in RESUME_CHOICES and not Path(str(cfg.resume)).expanduser().exists():
        raise ValueError(f"resume={cfg.resume!r}: use auto, never, or the path of a checkpoint or run directory")
    settings = trainer_settings(cfg.trainer)
    es = eval_settings(cfg.evaluation)
    device = dist.place(resolve_device(settings.device))
    config = OmegaConf.to_container(cfg, resolve=True)
    log.info("run directory: %s", run_dir)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True), extra={"file_only": True})

    seed_everything(int(cfg.seed))
    comps = build_components(cfg)
    if dist.is_main and (warning := check_group(comps.physics, comps.group, comps.loss)):
        log.warning("%s", warning)
    sets = measurement_sets(cfg, comps, ("train", "val", "test"))
    comps.deq.to(device)
    comps.loss.to(device) if hasattr(comps.loss, "to") else None
    if settings.compile:
        comps.denoiser.compile()
    trainer = Trainer(deq=comps.deq, physics=comps.physics, group=comps.group, loss=comps.loss,
                      train_data=sets["train"], val_data=sets["val"], settings=settings, eval_settings=es,
                      run_dir=run_dir, seed=int(cfg.seed), config=config, device=device, callbacks=tuple(callbacks),
                      dist=dist, stop_event=stop_event)
    source = _resume_source(str(cfg.resume), run_dir)
    if source is not None:
        trainer.load_state_dict(load_checkpoint(source, map_location=device))
        log.info("resumed from %s at step %d", source, trainer.step)
    try:
        status = trainer.fit()
        if status == "stopped":
            return {"status": "stopped", "step": trainer.step}
        result = _evaluate_split(comps.deq, sets["test"], es, device, run_dir, "test", trainer.step,
                                 time_s=trainer.train_time_s, tb=trainer.tb, dist=dist)
        summary = {**result.metrics, "split": "test", "step": trainer.step, "steps": trainer.step,
                   "train_time_s": round(trainer.train_time_s, 3), "best_val": trainer.best, "status": status}
        if dist.is_main:
            write_json(run_dir / "metrics.json", summary)
        if trainer.tb is not None:
            trainer.tb.hparams(_hparams(cfg), {k: result.metrics[k] for k in ("psnr", "ssim", "meas_error")
                                               if k in result.metrics})
        log.info("test: %s (trained %d steps in %.1f s)", format_metrics(result.metrics), trainer.step,
                 trainer.train_time_s)
        return summary
    finally:
        trainer.close()


def _evaluate_split(deq: Any, data: Any, es: Any, device: Any, run_dir: Path, split: str, step: int,
                    time_s: float = 0.0, tb: TensorBoard | None = None,
                    dist: Distributed | None = None) -> EvalResult:
    dist = dist or Distributed()
    result = evaluate(deq, data, batch_size=es.batch_size, data_range=es.data_range, device=device,
                      n_images=es.n_images, dist=dist)
    if not dist.is_main:
        return result
    MetricsCSV(run_dir / "metrics.csv").append(step, split, time_s, result.metrics)
    save_samples(result, png_path=run_dir / "images" / f"{split}.png",
                 h5_path=run_dir / "reconstructions" / f"{split}.h5", data_range=es.data_range)
    if tb is not None:
        tb.scalars(split, result.metrics, step)
        if "x_hat" in result.samples:
            tb.images(f"{split}/reconstruction", result.samples["x_hat"], step, es.data_range)
    return result


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


# -- evaluation of a checkpoint -------------------------------------------------------------
def merge_saved_config(saved: dict[str, Any], cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The checkpoint's config, with the command line's ``overrides`` applied on top.

    For each override ``key=value`` (or group choice ``physics=mri``) the value is taken
    from the freshly composed ``cfg``, so group options and interpolations behave as in
    training. Hydra's own keys and the evaluation keys (``ckpt``, ``split``) are skipped.
    """
    run_cfg = OmegaConf.create(saved)
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key = ov.key_or_group
        if key.startswith("hydra") or key in EVAL_KEYS or ov.is_delete():
            continue
        path = key.replace("/", ".")
        node = OmegaConf.select(cfg, path, default=_ABSENT, throw_on_missing=False)
        if node is _ABSENT:
            log.warning("override %s has no counterpart in the run's config; ignored", ov.input_line)
            continue
        value = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
        OmegaConf.update(run_cfg, path, value, merge=False, force_add=True)
    return run_cfg


def restore_run(ckpt: str | Path, cfg: DictConfig, overrides: Sequence[str],
                split: str) -> tuple[DictConfig, Any, dict[str, Any]]:
    """Rebuild a trained run from its checkpoint, for evaluation or analysis of ``split``.

    Returns ``(run_cfg, components, payload)``: the config saved in the checkpoint with
    ``overrides`` applied from ``cfg``, the components built from it (seeded as the run
    was) with the checkpoint's weights loaded, and the checkpoint itself.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r} is not a split; valid: train, val, test")
    payload = load_checkpoint(ckpt)
    run_cfg = merge_saved_config(payload["config"], cfg, overrides)
    OmegaConf.set_struct(run_cfg, True)
    seed_everything(int(run_cfg.seed))
    comps = build_components(run_cfg)
    try:
        load_model_state(comps.deq, payload["model"])
    except ValueError as exc:
        raise CheckpointError(f"{ckpt}: {exc}") from exc
    return run_cfg, comps, payload


def evaluate_checkpoint(cfg: DictConfig, *, run_dir: str | Path, overrides: Sequence[str] = (),
                        dist: Distributed | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` on ``cfg.split`` with the run's saved config (plus ``overrides``).

    Writes ``metrics.json``, ``metrics.csv``, the PNG grid and HDF5 reconstructions
    into ``run_dir`` and returns the metrics. With several processes (``dist``) the split
    is sharded over ranks and rank 0 writes the files.
    """
    dist = dist or Distributed()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt in (None, ""):
        raise UserError("eqdeq eval needs a checkpoint: eqdeq eval ckpt=PATH (a .pt file or a run directory)")
    split = str(cfg.split)
    run_cfg, comps, payload = restore_run(cfg.ckpt, cfg, overrides, split)
    es = eval_settings(run_cfg.evaluation)
    device = dist.place(resolve_device(str(run_cfg.trainer.device)))
    data = measurement_sets(run_cfg, comps, (split,))[split]
    comps.deq.to(device)
    step = int(payload["step"])
    result = _evaluate_split(comps.deq, data, es, device, run_dir, split, step, dist=dist)
    summary = {**result.metrics, "split": split, "step": step,
               "checkpoint": str(resolve_checkpoint_path(cfg.ckpt).resolve())}
    if dist.is_main:
        write_json(run_dir / "metrics.json", summary)
    log.info("%s (checkpoint step %d): %s", split, step, format_metrics(result.metrics))
    return summary


# -- the Hydra task --------------------------------------------------------------------------
def _monitored_value(cfg: DictConfig, summary: dict[str, Any]) -> float | None:
    """The validation metric a sweeper optimises (best value), or the test value as fallback."""
    best = summary.get("best_val") or {}
    if isinstance(best, dict) and best.get("value") is not None:
        return float(best["value"])
    value = summary.get(str(OmegaConf.select(cfg, "trainer.monitor", default="psnr")))
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _start_processes(cfg: DictConfig, run_dir: Path) -> tuple[Distributed, Path]:
    """Join the process group when launched by torchrun / srun; agree on rank 0's run directory.

    Ranks other than 0 stop logging to the run's log file (rank 0 owns it) and show only
    warnings on the console.
    """
    launch = detect_launch()
    if launch is None:
        return Distributed(), run_dir
    if launch.rank != 0:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler):
                root.removeHandler(handler)
                handler.close()
            else:
                handler.setLevel(max(handler.level, logging.WARNING))
    device = resolve_device(str(OmegaConf.select(cfg, "trainer.device", default="auto")))
    dist = init_distributed(device, launch)
    shared = Path(dist.broadcast_object(str(run_dir)))
    if shared != run_dir:
        log.warning("rank %d: using rank 0's run directory %s instead of %s; set hydra.run.dir when launching "
                    "several processes", dist.rank, shared, run_dir)
    return dist, shared


def task(cfg: DictConfig) -> float | None:
    """Run ``cfg.task`` (``train`` or ``eval``) in the Hydra run directory."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    started = time.time()
    dist, run_dir = _start_processes(cfg, Path(hc.runtime.output_dir))
    stop = StopOnSignals()

    def record(status: str, **fields: Any) -> None:
        if dist.is_main:
            write_status(run_dir, status, task=str(cfg.task), overrides=overrides, **fields)

    clean = False
    try:
        record("running")
        if cfg.task == "train":
            with stop:  # handlers restored when training has ended and its status is recorded
                summary = train(cfg, run_dir=run_dir, stop_event=stop.event, dist=dist)
                status = str(summary.get("status", "completed"))
                record(status, elapsed_s=round(time.time() - started, 3),
                       **({"signal": stop.signal_name} if status == "stopped" else {}))
        elif cfg.task == "eval":
            summary = evaluate_checkpoint(cfg, run_dir=run_dir, overrides=overrides, dist=dist)
            status = "completed"
            record(status, elapsed_s=round(time.time() - started, 3))
        else:
            raise ValueError(f"task={cfg.task!r}: valid tasks are train and eval")
        clean = True
    except Exception as exc:
        message = user_error_message(exc)
        record("failed", error=message or f"{type(exc).__name__}: {exc}", elapsed_s=round(time.time() - started, 3))
        if multirun:
            log.error("job %s failed: %s", run_dir, message or repr(exc), exc_info=True)
            return None
        if message is not None:
            log.error("%s", message, exc_info=True, extra={"file_only": True})
            log.error("%s", message, extra={"console_only": True})
            raise SystemExit(1) from None
        raise
    finally:
        shutdown_distributed(dist, wait=clean)
    if status == "stopped":
        log.info("stopped at step %s (%s): run the same command again to resume; exit code %d",
                 summary.get("step"), stop.signal_name or "stop requested", STOP_EXIT_CODE)
        stop.chain()  # e.g. submitit's handler: requeue now that the checkpoint is on disk (it may exit)
        raise SystemExit(STOP_EXIT_CODE)
    return _monitored_value(cfg, summary) if cfg.task == "train" else summary.get("psnr")


#: The config tree shipped inside the package (a link to the top-level configs/ in a checkout).
CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")

train_app = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(task)
eval_app = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")(task)

if __name__ == "__main__":
    train_app()
