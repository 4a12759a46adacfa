r"""Evaluation of a reconstructor on a split: image metrics, solver statistics, samples.

With ground truth (items carry ``"x"``): PSNR and SSIM of the DEQ reconstruction
:math:`\hat x = f(y)` and of the baseline :math:`x_0 = A^\dagger y`, after clamping both
to :math:`[0, R]` (``R`` = ``data_range``); complex images (an operator with
``complex_images``) are compared as magnitudes, and a sample's PSNR is capped at
``PSNR_CAP_DB`` (see :func:`eqdeq_cli.engine.metrics.compared_images`).
Without ground truth, measurement-domain metrics only: the relative residual
:math:`\lVert A\hat x - y\rVert / \lVert y\rVert` and measurement PSNR (see :mod:`eqdeq_cli.engine.metrics`), for both.
Always: mean forward iterations, mean final residual, the fraction of samples whose
solve converged, and the number of non-finite solves.

On several processes (``dist``) each rank evaluates a contiguous shard of the split
(rank 0 the first items) and the per-sample sums and counts are added over ranks, so
every rank returns the metrics of the whole split. Samples come from rank 0's shard.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import TensorDictDataset
from ..deq import DEQ
from .distributed import Distributed, shard_range
from .logs import MetricsCSV, TensorBoard, progress_bar
from .metrics import PSNR_CAP_DB, compared_images, measurement_psnr, psnr, relative_error, ssim
from .settings import EvalSettings

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Scalar metrics (``metrics``) and the first ``n_images`` samples (``samples``)."""

    metrics: dict[str, float]
    samples: dict[str, torch.Tensor] = field(default_factory=dict)


def _ssim_window(img_size: int) -> int:
    """The standard 11-pixel window, shrunk (odd) for images smaller than that."""
    w = min(11, img_size)
    return w if w % 2 == 1 else w - 1


IMAGE_METRICS = ("psnr", "ssim", "psnr_init", "ssim_init")
MEASUREMENT_METRICS = ("meas_error", "meas_psnr", "meas_error_init", "meas_psnr_init")
#: What ``trainer.monitor`` may name: every metric :func:`evaluate` returns for some split.
MONITOR_METRICS = (*IMAGE_METRICS, *MEASUREMENT_METRICS, "iters_mean", "residual_mean", "converged_frac")


@torch.no_grad()
def evaluate(deq: DEQ, data: TensorDictDataset, *, batch_size: int, data_range: float,
             device: torch.device, n_images: int = 8, dist: Distributed | None = None,
             progress: bool = False, desc: str = "eval", stop_event: Any = None) -> EvalResult:
    """Evaluate ``deq`` (in eval mode, with its eval solver) on every item of ``data``.

    Returns means over the split of: ``psnr``, ``ssim``, ``psnr_init``, ``ssim_init``
    (with ground truth) or ``meas_error``, ``meas_psnr`` and their ``_init`` versions
    (without); ``iters_mean``, ``residual_mean``, ``converged_frac``, ``nonfinite``;
    and ``n`` (number of samples). ``samples`` holds ``x`` (if any), ``y``, ``x_init``,
    ``x_hat`` for the first ``n_images`` items (of rank 0's shard), on the CPU.
    ``progress``: show a progress bar over the samples (rank 0 only), titled ``desc``.
    ``stop_event``: a stop request (Ctrl-C, a preemption signal) set while the evaluation runs
    is said once in the log; the evaluation still finishes (a second Ctrl-C aborts it).
    """
    if data_range <= 0:
        raise ValueError(f"eval data_range must be > 0, got {data_range}")
    dist = dist or Distributed()
    was_training = deq.training
    deq.eval()
    physics = deq.fmap.physics
    tensors = data.tensors
    n = len(data)
    shard = shard_range(n, dist.rank, dist.world_size)
    names = IMAGE_METRICS if "x" in tensors else MEASUREMENT_METRICS
    sums = {k: 0.0 for k in names}
    iters = 0.0
    residuals: list[torch.Tensor] = []
    converged: list[torch.Tensor] = []
    nonfinite = 0
    kept: dict[str, list[torch.Tensor]] = {}
    bar = progress_bar(total=len(shard), desc=desc, unit="image", enabled=progress and dist.is_main)
    told = False
    try:
        for first in range(shard.start, shard.stop, batch_size):
            if stop_event is not None and not told and stop_event.is_set() and dist.is_main:
                told = True
                log.warning("stop requested during the %s evaluation: it finishes first (Ctrl-C again aborts it "
                            "now; the run's checkpoint is written)", desc)
            start, stop = first - shard.start, min(first + batch_size, shard.stop)  # start: index in the shard
            y = tensors["y"][first:stop].to(device)
            x_init = physics.A_dagger(y)
            x_hat = deq(y)
            stats = deq.last_stats.forward
            iters += float(stats.iterations) * y.shape[0]
            residuals.append(stats.residual.detach().double().cpu())
            converged.append(stats.converged.detach().cpu())
            nonfinite += int(stats.nonfinite)
            values: dict[str, torch.Tensor] = {}
            if "x" in tensors:
                x = tensors["x"][first:stop].to(device)
                window = _ssim_window(min(x.shape[-2:]))
                for suffix, estimate in (("", x_hat), ("_init", x_init)):
                    a, b = compared_images(estimate, x, data_range, complex_images=physics.complex_images)
                    values["psnr" + suffix] = psnr(a, b, data_range, max_db=PSNR_CAP_DB)
                    values["ssim" + suffix] = ssim(a, b, data_range, window_size=window)
            else:
                y_hat, y_init = physics.A(x_hat), physics.A(x_init)
                values["meas_error"] = relative_error(y_hat, y)
                values["meas_psnr"] = measurement_psnr(y_hat, y)
                values["meas_error_init"] = relative_error(y_init, y)
                values["meas_psnr_init"] = measurement_psnr(y_init, y)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.double().sum())
            if start < n_images:
                take = min(n_images - start, y.shape[0])
                batch = {"y": y, "x_init": x_init, "x_hat": x_hat}
                if "x" in tensors:
                    batch["x"] = tensors["x"][first:first + take]
                for k, v in batch.items():
                    kept.setdefault(k, []).append(v[:take].detach().float().cpu())
            bar.update(y.shape[0])
    finally:
        bar.close()
        deq.train(was_training)
    res = torch.cat(residuals) if residuals else torch.zeros(0, dtype=torch.float64)
    finite = torch.isfinite(res)
    n_converged = float(torch.cat(converged).sum()) if converged else 0.0
    local = torch.tensor([*(sums[k] for k in names), iters, float(res[finite].sum()), float(finite.sum()),
                          n_converged, float(nonfinite), float(len(shard))], dtype=torch.float64)
    total = dist.all_reduce_sum(local).tolist()
    *image_sums, iters_sum, res_sum, res_count, conv_count, nonfinite_sum, count = total
    if count != n:
        raise RuntimeError(f"evaluation covered {count:.0f} of {n} samples: the ranks' shards disagree")
    metrics = {k: v / n for k, v in zip(names, image_sums)}
    metrics.update(
        iters_mean=iters_sum / n,
        residual_mean=res_sum / res_count if res_count > 0 else float("nan"),
        converged_frac=conv_count / n,
        nonfinite=nonfinite_sum,
        n=float(n),
    )
    return EvalResult(metrics=metrics, samples={k: torch.cat(v) for k, v in kept.items()})


def save_samples(result: EvalResult, *, png_path: Path, h5_path: Path, data_range: float) -> None:
    """Write the kept samples as a PNG grid (ground truth, ``A†y``, reconstruction, error)
    and as HDF5 arrays (``x``, ``y``, ``x_init``, ``x_hat``)."""
    from .images import save_image_grid, save_reconstructions_h5

    s = result.samples
    if not s:
        return
    save_reconstructions_h5(h5_path, **s)
    columns: dict[str, torch.Tensor] = {}
    if "x" in s:
        columns["ground truth"] = s["x"]
    columns["A_dagger y"] = s["x_init"]
    columns["reconstruction"] = s["x_hat"]
    if "x" in s:
        columns["|error|"] = (s["x_hat"].clamp(0, data_range) - s["x"]).abs()
    try:
        save_image_grid(png_path, columns, data_range=data_range)
    except ValueError as exc:  # e.g. a channel count the grid cannot display
        log.warning("no PNG grid written for %s: %s", png_path.name, exc)


def evaluate_and_record(deq: DEQ, data: TensorDictDataset, settings: EvalSettings, *, device: torch.device,
                        run_dir: Path, split: str, step: int, stem: str | None = None, time_s: float = 0.0,
                        csv: MetricsCSV | None = None, tb: TensorBoard | None = None,
                        dist: Distributed | None = None, progress: bool = False,
                        extra: dict[str, float] | None = None, stop_event: Any = None) -> EvalResult:
    """:func:`evaluate` on ``split``, then (rank 0) the records every evaluation leaves:
    a ``metrics.csv`` row, TensorBoard scalars and reconstructions under ``split``, and
    ``images/<stem>.png`` with ``reconstructions/<stem>.h5`` (``stem`` defaults to ``split``).
    ``extra``: numbers measured elsewhere (e.g. the training's contraction estimate) added to
    the metrics and recorded with them. ``stop_event``: see :func:`evaluate`."""
    dist = dist or Distributed()
    result = evaluate(deq, data, batch_size=settings.batch_size, data_range=settings.data_range, device=device,
                      n_images=settings.n_images, dist=dist, progress=progress, desc=split, stop_event=stop_event)
    if extra:
        result.metrics.update(extra)
    if not dist.is_main:
        return result
    (csv or MetricsCSV(run_dir / "metrics.csv")).append(step, split, time_s, result.metrics)
    if tb is not None:
        tb.scalars(split, result.metrics, step)
        if "x_hat" in result.samples:
            tb.images(f"{split}/reconstruction", result.samples["x_hat"], step, settings.data_range)
    stem = stem or split
    save_samples(result, png_path=run_dir / "images" / f"{stem}.png",
                 h5_path=run_dir / "reconstructions" / f"{stem}.h5", data_range=settings.data_range)
    return result
