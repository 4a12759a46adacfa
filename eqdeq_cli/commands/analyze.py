"""``eqdeq analyze ckpt=PATH | sweep=DIR [overrides]``: analyse a trained DEQ (a Hydra app on
``configs/analyze.yaml``); see :mod:`eqdeq_cli.runs.analyze` for what is written where.

The outputs go into the analysed run's directory, which belongs to that run: the command
writes no ``status.json`` there. A sweep whose jobs partly fail exits with status 1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from .hydra_app import Job, hydra_task, run_app

RESOLVER = "eqdeq_analysis_dir"


def checkpoint_run_dir(ckpt: str | Path) -> Path:
    """The run directory of a checkpoint: ``<run>/checkpoints/x.pt`` → ``<run>``; a directory → itself."""
    p = Path(ckpt).expanduser()
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def output_dir(ckpt: Any, sweep: Any, out: Any) -> str:
    """Where ``eqdeq analyze`` writes (the resolver of ``hydra.run.dir`` in ``analyze.yaml``)."""
    if out not in (None, ""):
        return str(out)
    if sweep not in (None, ""):
        return str(sweep)
    if ckpt not in (None, ""):
        return str(checkpoint_run_dir(str(ckpt)))
    return "outputs/analyze"


@hydra_task(record_status=False, join_processes=False)
def analyze_job(cfg: DictConfig, job: Job) -> None:
    """Analyse one checkpoint or every job of a sweep."""
    if cfg.sweep not in (None, ""):
        if cfg.ckpt not in (None, ""):
            raise UserError("give either ckpt=PATH or sweep=DIR, not both")
        from ..runs.analyze import analyze_sweep

        failed = {k: v for k, v in analyze_sweep(cfg, cfg.sweep, overrides=job.overrides).items() if v != "ok"}
        if failed:
            raise UserError(f"analysis failed for {len(failed)} job(s): "
                            + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    elif cfg.ckpt in (None, ""):
        raise UserError("eqdeq analyze needs a checkpoint: eqdeq analyze ckpt=PATH (a .pt file or a run "
                        "directory), or sweep=DIR")
    else:
        from ..runs.analyze import analyze_checkpoint

        analyze_checkpoint(cfg, cfg.ckpt, out_dir=job.run_dir, overrides=job.overrides)


def main(argv: Sequence[str], prog: str = "eqdeq analyze") -> int:
    """``eqdeq analyze``: Hydra's command line in ``argv``; returns the exit status."""
    OmegaConf.register_new_resolver(RESOLVER, output_dir, replace=True)
    return run_app("analyze", analyze_job, argv, prog)
