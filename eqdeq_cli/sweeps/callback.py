"""A Hydra callback that reports failed jobs at the end of a multirun and exits non-zero.

Jobs of a sweep never stop it: the task function catches a job's exception, logs it to
the job's log file, writes ``status.json`` with ``"status": "failed"`` and records the
failure with :func:`record_failure`. This callback (enabled in
``configs/hydra/default.yaml``) reports both after the sweep: the failures recorded in
this process (a job refused before it claimed its directory, e.g. one that holds another
sweep's job, writes no ``status.json``), and the ``status.json`` files (jobs that a
launcher ran in other processes).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..runs.status import STATUS_FILE, read_status

log = logging.getLogger(__name__)

#: ``(job directory, error)`` of the jobs of the current multirun that failed in this process.
_FAILURES: list[tuple[Path, str]] = []


def record_failure(job_dir: str | Path, error: str) -> None:
    """Note that the job in ``job_dir`` failed with ``error``, for the report at the sweep's end."""
    _FAILURES.append((Path(job_dir), error))


def failed_jobs(sweep_dir: str | Path) -> list[tuple[Path, str]]:
    """``(job directory, error)`` of every job under ``sweep_dir`` whose status is ``failed``."""
    out = []
    for path in sorted(Path(sweep_dir).rglob(STATUS_FILE)):
        status = read_status(path.parent)
        if status is not None and status.get("status") == "failed":
            out.append((path.parent, str(status.get("error", "unknown error"))))
    return out


class SweepFailureReport(Callback):
    """On ``on_multirun_end``: list failed jobs (recorded by :func:`record_failure`, or with a
    ``failed`` status file under the sweep directory) and raise ``SystemExit(1)`` if there are any."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _FAILURES.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        found = {job_dir.resolve(): (job_dir, error) for job_dir, error in failed_jobs(config.hydra.sweep.dir)}
        found.update({job_dir.resolve(): (job_dir, error) for job_dir, error in _FAILURES})
        _FAILURES.clear()
        failures = sorted(found.values(), key=lambda item: str(item[0]))
        if not failures:
            return
        log.error("%d job(s) of the sweep failed:", len(failures))
        for job_dir, error in failures:
            log.error("  %s: %s", job_dir, error)
        raise SystemExit(1)
