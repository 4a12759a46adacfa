"""The method comparison of a sweep: a compact table and a figure of reconstructions.

Used by ``eqdeq collect DIR --figure`` after a sweep over presets, e.g.
``eqdeq train -m experiment=ct_ei_implicit,ct_ei_jfb,ct_mc,ct_supervised seed=0,1``
(see ``docs/experiments.md``). Both read the :class:`~eqdeq_cli.sweeps.table.SweepTable` of
the sweep, whose rows are the methods (the swept keys other than the seed):

* :func:`comparison_markdown` — one row per method with PSNR / SSIM (mean ± std over
  seeds), training time and mean solver iterations, plus the ``eqdeq analyze`` columns
  when the jobs hold ``analysis.json``; the ``A†y`` baseline (``psnr_init``/``ssim_init``
  of the same test set) is its own first row when all methods share it, else two columns.
* :func:`comparison_figure` — a PNG grid: one row per test image, columns ground truth,
  ``A†y`` and each method's reconstruction, read from one job per method (the lowest
  seed) in ``<job>/reconstructions/test.h5`` (datasets ``x``, ``x_init``, ``x_hat``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import h5py
import numpy as np
import torch

from .jobs import JobResult, natural_key
from .table import GroupRow, Summary, SweepTable, format_summary

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "ANALYSIS_COLUMNS", "row_label", "comparison_markdown", "comparison_figure"]

#: (metric, header) of the comparison table, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("train_time_s", "training time (s)"),
    ("iters_mean", "solver iterations"),
)
#: Columns added when the jobs were analysed (``eqdeq analyze``).
ANALYSIS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("an_equiv_denoiser", "equiv. error D"), ("an_equiv_reconstructor", "equiv. error x↦f(Ax)"),
    ("an_jac_asym_learned", "Jacobian asym. (x − D(x))"), ("an_lipschitz_max", "‖∂T/∂z‖"),
    ("an_conv_rate", "solver rate"),
)
#: Reconstructions file of a run (written by the final test evaluation).
RECONSTRUCTIONS = Path("reconstructions") / "test.h5"


def row_label(table: SweepTable, row: GroupRow) -> str:
    """The method's name: the values of the swept keys (``ct_ei_implicit``; ``grad=jfb loss=mc``
    when several keys vary), or ``"run"`` for a sweep with no swept key."""
    if not table.group_keys:
        return "run"
    if len(table.group_keys) == 1:
        return row.values[0]
    return " ".join(f"{k}={v}" for k, v in zip(table.group_keys, row.values))


def _shared_baseline(table: SweepTable) -> dict[str, Summary] | None:
    """The A†y metrics if every row has the same ones (same test set and operator), else None."""
    out: dict[str, Summary] = {}
    for metric in ("psnr_init", "ssim_init"):
        means = [r.summaries[metric].mean for r in table.rows if metric in r.summaries]
        if not means:
            continue
        if max(means) - min(means) > 1e-6 * max(1.0, abs(means[0])):
            return None
        vals = [j.metrics[metric] for j in table.jobs if j.status == "ok" and metric in j.metrics]
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        out[metric] = Summary(mean=float(np.mean(vals)), std=std, n=len(vals))
    return out


def comparison_markdown(table: SweepTable) -> str:
    """The comparison table as Markdown (see the module notes)."""
    found = {m for r in table.rows for m in r.summaries}
    columns = [(m, h) for m, h in COLUMNS + ANALYSIS_COLUMNS if m in found]
    baseline = _shared_baseline(table)
    if baseline is None:
        columns += [(m, h) for m, h in (("psnr_init", "A†y PSNR"), ("ssim_init", "A†y SSIM")) if m in found]
    header = ["method", "n", *[h for _, h in columns]]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    if baseline:
        cells = ["A†y (baseline)", str(max(s.n for s in baseline.values()))]
        same = {"psnr": "psnr_init", "ssim": "ssim_init"}
        cells += [format_summary(baseline.get(same.get(m, ""))) for m, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    for row in table.rows:
        cells = [row_label(table, row), str(row.n) + (f" ({row.failures} failed)" if row.failures else "")]
        cells += [format_summary(row.summaries.get(m)) for m, _ in columns]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if table.fixed:
        lines += ["", "Common overrides: " + " ".join(f"`{k}={v}`" for k, v in table.fixed.items())]
    lines += table.notes()
    return "\n".join(lines) + "\n"


def _representative(table: SweepTable, row: GroupRow, seed_key: str = "seed") -> JobResult | None:
    """The completed job of ``row`` with the lowest seed that has saved reconstructions (its
    jobs as grouped by :func:`~eqdeq_cli.sweeps.table.collect`, whose keys may be config keys)."""
    members = [j for j in row.jobs if j.status == "ok" and (table.sweep_dir / j.path / RECONSTRUCTIONS).is_file()]
    members.sort(key=lambda j: natural_key(j.overrides.get(seed_key, "")))
    return members[0] if members else None


def _read(path: Path, key: str, n: int) -> torch.Tensor:
    with h5py.File(path, "r") as f:
        if key not in f:
            raise KeyError(f"{path} has no dataset {key!r}; found {sorted(f.keys())}")
        return torch.from_numpy(np.asarray(f[key][:n], dtype=np.float32))


def comparison_figure(table: SweepTable, path: str | Path, *, n_images: int = 4, seed_key: str = "seed") -> Path:
    """Write the reconstructions figure (see the module notes) to ``path``; returns it.

    Raises ``FileNotFoundError`` when no method has saved reconstructions (runs with
    ``evaluation.n_images=0``), and ``ValueError`` when the methods were evaluated on
    different ground-truth images (one figure per task: sweep each task separately).
    """
    from ..engine.images import save_image_grid

    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    picked = [(row_label(table, r), _representative(table, r, seed_key)) for r in table.rows]
    missing = [label for label, job in picked if job is None]
    picked = [(label, job) for label, job in picked if job is not None]
    if not picked:
        raise FileNotFoundError(f"no completed job under {table.sweep_dir} has {RECONSTRUCTIONS.as_posix()} "
                                "(runs with evaluation.n_images=0 save none)")
    if missing:
        log.warning("no reconstructions for %s: left out of the figure", ", ".join(missing))
    first = table.sweep_dir / picked[0][1].path / RECONSTRUCTIONS
    with h5py.File(first, "r") as f:
        has_x = "x" in f
    columns: dict[str, torch.Tensor] = {}
    if has_x:
        columns["ground truth"] = _read(first, "x", n_images)
    columns["A†y"] = _read(first, "x_init", n_images)
    n = columns["A†y"].shape[0]
    for label, job in picked:
        file = table.sweep_dir / job.path / RECONSTRUCTIONS
        if has_x and not torch.allclose(_read(file, "x", n_images)[:n], columns["ground truth"][:n], atol=1e-6):
            raise ValueError(f"{label} ({job.path}) was evaluated on other ground-truth images than "
                             f"{picked[0][0]}: make one sweep (and one figure) per task")
        if not torch.allclose(_read(file, "x_init", n_images)[:n], columns["A†y"][:n], atol=1e-5):
            log.warning("%s has another A†y than %s (another operator or noise draw); the A†y column is %s's",
                        label, picked[0][0], picked[0][0])
        columns[label] = _read(file, "x_hat", n_images)[:n]
    data_range = float(picked[0][1].config.get("evaluation", {}).get("data_range", 1.0) or 1.0)
    if not math.isfinite(data_range) or data_range <= 0:
        data_range = 1.0
    return save_image_grid(path, columns, data_range=data_range, error_columns=[])
