"""A Hydra callback that reports failed jobs at the end of a multirun and exits non-zero.

Jobs of a sweep never stop it: the task function catches a job's exception, logs it to
the job's log file and writes ``status.json`` with ``"status": "failed"``. This callback
(enabled in ``configs/hydra/default.yaml``) reads those files after the sweep.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..runs.status import STATUS_FILE, read_status

log = logging.getLogger(__name__)


def failed_jobs(sweep_dir: str | Path) -> list[tuple[Path, str]]:
    """``(job directory, error)`` of every job under ``sweep_dir`` whose status is ``failed``."""
    out = []
    for path in sorted(Path(sweep_dir).rglob(STATUS_FILE)):
        status = read_status(path.parent)
        if status is not None and status.get("status") == "failed":
            out.append((path.parent, str(status.get("error", "unknown error"))))
    return out


class SweepFailureReport(Callback):
    """On ``on_multirun_end``: list failed jobs and raise ``SystemExit(1)`` if there are any."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failures = failed_jobs(config.hydra.sweep.dir)
        if not failures:
            return
        log.error("%d job(s) of the sweep failed:", len(failures))
        for job_dir, error in failures:
            log.error("  %s: %s", job_dir, error)
        raise SystemExit(1)
