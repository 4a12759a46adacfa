"""``eqdeq eval ckpt=PATH [overrides]``: evaluate a checkpoint (a Hydra app on ``configs/eval.yaml``)."""
from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig

from .hydra_app import Job, hydra_task, run_app


@hydra_task(runs_saved_config=True)
def eval_job(cfg: DictConfig, job: Job) -> float | None:
    """Evaluate ``cfg.ckpt`` into the job's run directory; returns the PSNR (for sweepers).

    ``.hydra/config.yaml`` records the config evaluated (the checkpoint's, with the
    overrides), ``.hydra/command.yaml`` the command's composed one. A directory holding a
    run of another command (a training run) is refused, nothing written there."""
    from ..runs.evaluate import evaluate_checkpoint

    summary = evaluate_checkpoint(cfg, run_dir=job.run_dir, overrides=job.overrides, dist=job.dist,
                                  on_config=job.record_config)
    job.record("completed", elapsed_s=job.elapsed())
    return summary.get("psnr")


def main(argv: Sequence[str], prog: str = "eqdeq eval") -> int:
    """``eqdeq eval``: Hydra's command line in ``argv``; returns the exit status."""
    return run_app("eval", eval_job, argv, prog)
