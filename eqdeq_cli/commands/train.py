"""``eqdeq train [overrides]``: train a DEQ reconstructor (a Hydra app on ``configs/train.yaml``).

Preemption and Ctrl-C: while training, SIGINT / SIGUSR1 / SIGUSR2 / SIGTERM stop the run at the next step
boundary (:mod:`eqdeq_cli.engine.signals`): ``checkpoints/last.pt`` is written,
``status.json`` says ``"stopped"``, no ``metrics.json`` is written, the handler installed
before (submitit's requeue) is called, and the process exits with
:data:`~eqdeq_cli.engine.signals.STOP_EXIT_CODE` (75), also in a multirun, whose later
jobs then do not start. Running the same command again resumes (``resume=auto``).
"""
from __future__ import annotations

import logging
from typing import Sequence

from omegaconf import DictConfig

from .hydra_app import Job, hydra_task, run_app

log = logging.getLogger(__name__)


@hydra_task(claim_in_body=True)
def train_job(cfg: DictConfig, job: Job) -> float | None:
    """Train in the job's run directory; returns the monitored validation value (for sweepers)."""
    from ..engine.signals import STOP_EXIT_CODE, StopOnSignals
    from ..runs.train import monitored_value, train

    stop = StopOnSignals()
    with stop:  # handlers restored when training has ended and its status is recorded
        summary = train(cfg, run_dir=job.run_dir, stop_event=stop.event, dist=job.dist, on_accepted=job.claim)
        status = str(summary.get("status", "completed"))
        extra = {"signal": stop.signal_name} if status == "stopped" else {}
        if "time_cap" in summary:
            extra["time_cap"] = summary["time_cap"]
        job.record(status, elapsed_s=job.elapsed(), **extra)
    if status == "stopped":
        def finish() -> None:
            log.info("stopped at step %s (%s): run the same command again to resume; exit code %d",
                     summary.get("step"), stop.signal_name or "stop requested", STOP_EXIT_CODE)
            stop.chain()  # e.g. submitit's handler: requeue now that the checkpoint is on disk (it may exit)
            raise SystemExit(STOP_EXIT_CODE)

        job.finish = finish
        return None
    if job.multirun and stop.event.is_set():  # asked to stop during the final evaluation: the sweep ends here
        def end_sweep() -> None:
            log.info("stop requested (%s) while %s finished: the sweep ends after this job; run the same command "
                     "again to continue with the next ones; exit code %d", stop.signal_name or "signal", job.run_dir,
                     STOP_EXIT_CODE)
            stop.chain()
            raise SystemExit(STOP_EXIT_CODE)

        job.finish = end_sweep
    return monitored_value(cfg, summary)


def main(argv: Sequence[str], prog: str = "eqdeq train") -> int:
    """``eqdeq train``: Hydra's command line in ``argv``; returns the exit status."""
    return run_app("train", train_job, argv, prog)
