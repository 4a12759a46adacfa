"""Joining the other processes of a launch (``torchrun``, ``srun``) at the start of a job."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..engine.distributed import Distributed, detect_launch, init_distributed
from ..engine.settings import resolve_device

log = logging.getLogger(__name__)


def start_processes(cfg: DictConfig, run_dir: Path) -> tuple[Distributed, Path]:
    """Join the process group when launched by torchrun / srun; agree on rank 0's run directory.

    Ranks other than 0 stop logging to the run's log file (rank 0 owns it) and show only
    warnings on the console. Alone, returns ``(Distributed(), run_dir)``.
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
