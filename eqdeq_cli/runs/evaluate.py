"""Evaluate a checkpoint on a split with the run's saved config (``eqdeq eval``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from ..engine.checkpoint import resolve_checkpoint_path
from ..engine.distributed import Distributed
from ..engine.evaluate import evaluate_and_record
from ..engine.logs import format_metrics
from ..engine.settings import eval_settings, resolve_device
from ..errors import UserError
from ..utils.files import write_json
from .operator_record import model_change_warning, operator_record
from .restore import COMMAND_KEYS, measurement_sets, restore_run

log = logging.getLogger(__name__)


def evaluated_config(cfg: DictConfig, run_cfg: DictConfig) -> DictConfig:
    """The config an evaluation ran: the run's (``run_cfg``, from the checkpoint with the
    overrides applied), with the command's own keys (``task: eval``, ``ckpt``, ``split``, ...:
    :data:`~eqdeq_cli.runs.restore.COMMAND_KEYS`) taken from ``cfg``."""
    out = OmegaConf.create(OmegaConf.to_container(run_cfg, resolve=False))
    for key in COMMAND_KEYS:
        if key in cfg:
            node = cfg[key]
            out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return out


def evaluate_checkpoint(cfg: DictConfig, *, run_dir: str | Path, overrides: Sequence[str] = (),
                        dist: Distributed | None = None,
                        on_config: Callable[[DictConfig], None] | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` on ``cfg.split`` with the run's saved config (plus ``overrides``).

    Writes ``metrics.json``, ``metrics.csv``, the PNG grid and HDF5 reconstructions
    into ``run_dir`` and returns the metrics. ``metrics.json`` also records the operator
    used (``physics``, ``physics_as_trained``: see
    :func:`~eqdeq_cli.runs.operator_record.operator_record`); an operator other than the
    one trained with is allowed, with a warning. With several processes (``dist``) the
    split is sharded over ranks and rank 0 writes the files. A progress bar follows the
    run's ``trainer.progress`` setting. ``on_config`` is called with the config evaluated
    (:func:`evaluated_config`) once the checkpoint is restored, before the evaluation.
    """
    dist = dist or Distributed()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt in (None, ""):
        raise UserError("eqdeq eval needs a checkpoint: eqdeq eval ckpt=PATH (a .pt file or a run directory)")
    split = str(cfg.split)
    run_cfg, comps, payload = restore_run(cfg.ckpt, cfg, overrides, split)
    if on_config is not None:
        on_config(evaluated_config(cfg, run_cfg))
    operator, warning = operator_record(payload["config"], run_cfg)
    for message in (warning, model_change_warning(payload["config"], run_cfg)):
        if message and dist.is_main:
            log.warning("%s", message)
    es = eval_settings(run_cfg.evaluation)
    device = dist.place(resolve_device(str(run_cfg.trainer.device)))
    data = measurement_sets(run_cfg, comps, (split,))[split]
    comps.deq.to(device)
    step = int(payload["step"])
    progress = bool(OmegaConf.select(run_cfg, "trainer.progress", default=True))
    result = evaluate_and_record(comps.deq, data, es, device=device, run_dir=run_dir, split=split, step=step,
                                 dist=dist, progress=progress)
    summary = {**result.metrics, "split": split, "step": step,
               "checkpoint": str(resolve_checkpoint_path(cfg.ckpt).resolve()), **operator}
    if dist.is_main:
        write_json(run_dir / "metrics.json", summary)
    log.info("%s (checkpoint step %d): %s", split, step, format_metrics(result.metrics))
    return summary
