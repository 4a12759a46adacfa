"""``eqdeq analyze ckpt=PATH [overrides]``: analyse a trained DEQ (a Hydra app on ``configs/analyze.yaml``).

The model is rebuilt as ``eqdeq eval`` does: the config saved in the checkpoint, with the
command line's overrides applied on top (:func:`eqdeq_cli.run.merge_saved_config`). On the
first ``analysis.n_images`` samples of ``split`` it computes what
:func:`eqdeq_cli.analysis.report.analyze_deq` describes and writes

* ``analysis.json`` — every number; ``"summary"`` holds the scalars that
  ``eqdeq collect`` adds to its table as ``an_<name>`` columns,
* ``analysis.png`` — equivariance error per group element and the solver's residual history,
* ``analyze.log``,

into the checkpoint's run directory (or ``analysis.out``). ``sweep=DIR`` analyses every
job of a sweep directory that holds ``checkpoints/last.pt``, each into its own directory;
a job that fails is reported and the others go on (exit status 1 if any failed).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .analysis.report import AnalysisSettings, analyze_deq, plot_analysis
from .engine.checkpoint import resolve_checkpoint_path
from .engine.settings import resolve_device
from .utils.files import write_json
from .errors import UserError, user_error_message
from .sweep_jobs import find_job_dirs

log = logging.getLogger(__name__)

#: Keys of ``analyze.yaml`` that belong to the analysis, not to the trained run.
ANALYZE_KEYS = ("task", "ckpt", "sweep", "split", "resume", "analysis")
CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
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


def _run_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that change the trained run's config (not the analysis keys)."""
    keep = []
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key.split(".", 1)[0] not in ANALYZE_KEYS and not key.startswith("hydra"):
            keep.append(ov)
    return keep


def analyze_checkpoint(cfg: DictConfig, ckpt: str | Path, *, out_dir: str | Path,
                       overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Analyse checkpoint ``ckpt`` with the run's saved config plus ``overrides``.

    Writes ``analysis.json`` and ``analysis.png`` into ``out_dir`` and returns the report
    (plus ``checkpoint``, ``step`` and ``split``).
    """
    from .run import measurement_sets, restore_run

    options = OmegaConf.to_container(cfg.analysis, resolve=True) if "analysis" in cfg else {}
    options.pop("out", None)
    try:
        settings = AnalysisSettings(**options)
    except TypeError as exc:
        raise KeyError(f"unknown analysis option: {exc}; valid: {', '.join(AnalysisSettings.__dataclass_fields__)}, out") from None
    split = str(cfg.split)
    run_cfg, comps, payload = restore_run(ckpt, cfg, _run_overrides(overrides), split)
    device = resolve_device(str(run_cfg.trainer.device))
    data = measurement_sets(run_cfg, comps, (split,))[split]
    n = min(settings.n_images, len(data))
    y = data.tensors["y"][:n].to(device)
    x = data.tensors["x"][:n].to(device) if "x" in data.tensors else None
    comps.deq.to(device)
    report = analyze_deq(comps.deq, comps.group, y, x, settings=settings)
    report = {"checkpoint": str(resolve_checkpoint_path(ckpt).resolve()), "step": int(payload["step"]),
              "split": split, **report}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "analysis.json", report)
    plot_analysis(report, out / "analysis.png")
    s = report["summary"]
    log.info("%s: equivariance error denoiser %.3g, reconstructor %.3g | Jacobian asymmetry %.3g (learned part "
             "%.3g), eigenvalues [%.3g, %.3g] | ‖∂T/∂z‖ %.3g, solver rate %.3g -> %s", ckpt, s["equiv_denoiser"],
             s["equiv_reconstructor"], s["jac_asym_denoiser"], s["jac_asym_learned"], s["eig_min"], s["eig_max"],
             s["lipschitz_max"], s["conv_rate"], out / "analysis.json")
    return report


def analyze_sweep(cfg: DictConfig, sweep_dir: str | Path, *, overrides: Sequence[str] = ()) -> dict[str, str]:
    """Analyse every job of ``sweep_dir`` that has ``checkpoints/last.pt``.

    Returns ``{job path: "ok" | error message}``; raises ``FileNotFoundError`` when the
    directory is missing or holds no checkpoint.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {root}")
    jobs = [d for d in find_job_dirs(root) if (d / "checkpoints" / "last.pt").is_file()]
    if not jobs:
        raise FileNotFoundError(f"no job under {root} holds checkpoints/last.pt (is it the hydra.sweep.dir of "
                                "an `eqdeq train -m ...` run?)")
    out = cfg.analysis.get("out") if "analysis" in cfg else None
    results: dict[str, str] = {}
    for job in jobs:
        rel = job.relative_to(root).as_posix() if job != root else "."
        target = Path(out) / rel if out else job
        try:
            analyze_checkpoint(cfg, job, out_dir=target, overrides=overrides)
            results[rel] = "ok"
        except Exception as exc:  # one broken job must not stop the others
            message = user_error_message(exc) or f"{type(exc).__name__}: {exc}"
            log.error("job %s: analysis failed: %s", rel, message, exc_info=True)
            results[rel] = message
    failed = {k: v for k, v in results.items() if v != "ok"}
    log.info("analysed %d of %d jobs under %s", len(results) - len(failed), len(results), root)
    return results


def task(cfg: DictConfig) -> None:
    """The Hydra task of ``eqdeq analyze``: one checkpoint or a sweep; user errors exit 1 without a traceback."""
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    try:
        if cfg.sweep not in (None, ""):
            if cfg.ckpt not in (None, ""):
                raise UserError("give either ckpt=PATH or sweep=DIR, not both")
            failed = {k: v for k, v in analyze_sweep(cfg, cfg.sweep, overrides=overrides).items() if v != "ok"}
            if failed:
                raise UserError(f"analysis failed for {len(failed)} job(s): "
                                + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        elif cfg.ckpt in (None, ""):
            raise UserError("eqdeq analyze needs a checkpoint: eqdeq analyze ckpt=PATH (a .pt file or a run "
                            "directory), or sweep=DIR")
        else:
            analyze_checkpoint(cfg, cfg.ckpt, out_dir=hc.runtime.output_dir, overrides=overrides)
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise
        log.error("%s", message, exc_info=True, extra={"file_only": True})
        log.error("%s", message, extra={"console_only": True})
        raise SystemExit(1) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``eqdeq analyze``: Hydra's command line in ``argv``; returns the exit status."""
    OmegaConf.register_new_resolver(RESOLVER, output_dir, replace=True)
    app = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="analyze")(task)
    saved = sys.argv
    sys.argv = ["eqdeq analyze", *(sys.argv[1:] if argv is None else argv)]
    try:
        app()
    except SystemExit as exc:
        code = exc.code
        return 0 if code is None else code if isinstance(code, int) else 1
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
