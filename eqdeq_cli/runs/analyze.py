"""Analyse a trained DEQ from its checkpoint, or every job of a sweep (``eqdeq analyze``).

The model is rebuilt as ``eqdeq eval`` does (:func:`~eqdeq_cli.runs.restore.restore_run`).
On the first ``analysis.n_images`` samples of ``split`` it computes what
:func:`eqdeq_cli.analysis.report.analyze_deq` describes and writes

* ``analysis.json`` — every number; ``"summary"`` holds the scalars that
  ``eqdeq collect`` adds to its table as ``an_<name>`` columns,
* ``analysis.png`` — equivariance error per group element and the solver's residual history,

into the checkpoint's run directory (or ``analysis.out``). :func:`analyze_sweep` analyses
every job of a sweep directory that holds ``checkpoints/last.pt``, each into its own
directory; a job that fails is reported and the others go on.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from ..analysis.report import AnalysisSettings, analysis_stages, analyze_deq, plot_analysis
from ..engine.checkpoint import resolve_checkpoint_path
from ..engine.logs import progress_bar
from ..engine.settings import resolve_device
from ..errors import user_error_message
from ..sweeps.jobs import find_job_dirs
from ..utils.files import write_json
from .operator_record import model_change_warning, operator_record
from .restore import measurement_sets, restore_run

log = logging.getLogger(__name__)


def analyze_checkpoint(cfg: DictConfig, ckpt: str | Path, *, out_dir: str | Path,
                       overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Analyse checkpoint ``ckpt`` with the run's saved config plus ``overrides``.

    Writes ``analysis.json`` and ``analysis.png`` into ``out_dir`` and returns the report
    (plus ``checkpoint``, ``step``, ``split`` and the operator used, as ``eqdeq eval``
    records it: :func:`~eqdeq_cli.runs.operator_record.operator_record`). A progress bar
    over the analysis stages follows the run's ``trainer.progress`` setting.
    """
    options = OmegaConf.to_container(cfg.analysis, resolve=True) if "analysis" in cfg else {}
    options.pop("out", None)
    try:
        settings = AnalysisSettings(**options)
    except TypeError as exc:
        raise KeyError(f"unknown analysis option: {exc}; valid: {', '.join(AnalysisSettings.__dataclass_fields__)}, out") from None
    split = str(cfg.split)
    run_cfg, comps, payload = restore_run(ckpt, cfg, overrides, split)
    operator, warning = operator_record(payload["config"], run_cfg, record="analysis.json")
    for message in (warning, model_change_warning(payload["config"], run_cfg)):
        if message:
            log.warning("%s", message)
    device = resolve_device(str(run_cfg.trainer.device))
    data = measurement_sets(run_cfg, comps, (split,))[split]
    n = min(settings.n_images, len(data))
    y = data.tensors["y"][:n].to(device)
    x = data.tensors["x"][:n].to(device) if "x" in data.tensors else None
    comps.deq.to(device)
    progress = bool(OmegaConf.select(run_cfg, "trainer.progress", default=True))
    bar = progress_bar(total=len(analysis_stages(settings)), desc="analyze", unit="stage", enabled=progress)

    def stage_done(name: str) -> None:
        bar.set_postfix_str(name, refresh=False)
        bar.update()

    try:
        report = analyze_deq(comps.deq, comps.group, y, x, settings=settings, on_stage=stage_done)
    finally:
        bar.close()
    report = {"checkpoint": str(resolve_checkpoint_path(ckpt).resolve()), "step": int(payload["step"]),
              "split": split, **report, **operator}  # the operator's description replaces its class name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "analysis.json", report)
    plot_analysis(report, out / "analysis.png")
    s = report["summary"]
    log.info("%s: equivariance error denoiser %.3g, reconstructor %.3g | Jacobian asymmetry %.3g (learned part "
             "%.3g), eigenvalues [%.3g, %.3g] | ‖∂T/∂z‖ %.3g, solver rate %.3g -> %s", ckpt, s["equiv_denoiser"],
             s["equiv_reconstructor"], s["jac_asym_denoiser"], s["jac_asym_learned"], s["eig_min"], s["eig_max"],
             s["lipschitz_max"], s["conv_rate"], out / "analysis.json")
    if report.get("error_split") is not None:
        log.info("error relative to ‖x‖: range of Aᵀ %.3g, nullspace of A %.3g (A†y: %.3g, %.3g)", s["err_range"],
                 s["err_nullspace"], s["err_range_init"], s["err_nullspace_init"])
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
            message = user_error_message(exc)
            if message is None:  # a bug: its traceback on the console too
                message = f"{type(exc).__name__}: {exc}"
                log.error("job %s: analysis failed: %s", rel, message, exc_info=True)
            else:  # the user's to fix: one line on the console, the traceback in the log file
                log.error("job %s: analysis failed: %s", rel, message, exc_info=True, extra={"file_only": True})
                log.error("job %s: analysis failed: %s", rel, message, extra={"console_only": True})
            results[rel] = message
    failed = {k: v for k, v in results.items() if v != "ok"}
    log.info("analysed %d of %d jobs under %s", len(results) - len(failed), len(results), root)
    return results
