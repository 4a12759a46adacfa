"""Where numbers go: ``metrics.csv``, TensorBoard (``tb/``), progress bars and log lines.

The console and log-file handlers of the commands are :mod:`eqdeq_cli.commands.console`'s."""
from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from ..utils.files import atomic_write

#: Leading columns of ``metrics.csv``; metric columns follow in sorted order.
CSV_LEAD = ("step", "split", "time_s")


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``psnr=28.31 ssim=0.812 ...`` for a log line (the sample count ``n`` left out)."""
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "n")


def progress_bar(*, total: int, desc: str, unit: str, enabled: bool, initial: int = 0) -> Any:
    """A tqdm bar on stderr (a no-op when ``enabled`` is false), cleared when closed."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                desc=desc, unit=unit, leave=False)


class MetricsCSV:
    """Appends one row per evaluation to ``metrics.csv``.

    Columns: :data:`CSV_LEAD`, then the metric names in sorted order. A row that brings a
    metric the header lacks (``lipschitz`` first estimated after the first validation, a
    file started by a version with fewer metrics) widens the header: the file is
    rewritten atomically (:func:`~eqdeq_cli.utils.files.atomic_write`) with the new
    column, empty in the earlier rows. A metric missing from a row is an empty cell. A row
    for a ``(step, split)`` already in the file replaces it (a finished run evaluated again),
    and :meth:`purge` drops the rows a run will write again.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fields: list[str] | None = None
        # (step, split) of the rows in the file, read once: an append that neither replaces a
        # row nor widens the header does not read the file again.
        self._keys: set[tuple[str, str]] = set()
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self._keys = {(r.get("step"), r.get("split")) for r in reader}
                self._fields = reader.fieldnames

    def append(self, step: int, split: str, time_s: float, metrics: Mapping[str, float]) -> None:
        row: dict[str, Any] = {"step": step, "split": split, "time_s": round(time_s, 3), **metrics}
        key = (str(step), split)
        if self._fields is None:
            self._fields = _csv_columns(row)
            self._rewrite([row])
        elif key in self._keys or not set(row) <= set(self._fields):
            kept = [r for r in self._rows() if (r.get("step"), r.get("split")) != key]
            self._fields = _csv_columns({**dict.fromkeys(self._fields), **row})
            self._rewrite([*kept, row])
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._fields).writerow(row)
        self._keys.add(key)

    def purge(self, step: int) -> None:
        """Drop the rows of steps ``>= step``: those a resumed run (from step ``step - 1``) or a
        run trained again from the start (``step`` 1) writes again, so none is in the file twice."""
        if self._fields is None:
            return
        rows = self._rows()
        kept = [r for r in rows if not (r.get("step", "").isdigit() and int(r["step"]) >= step)]
        if len(kept) < len(rows):
            self._rewrite(kept)
        self._keys = {(r.get("step"), r.get("split")) for r in kept}

    def _rows(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[Mapping[str, Any]]) -> None:
        with atomic_write(self.path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._fields, restval="")
            writer.writeheader()
            writer.writerows(rows)


def _csv_columns(keys: Mapping[str, Any]) -> list[str]:
    """:data:`CSV_LEAD`, then every other key of ``keys`` in sorted order."""
    return list(CSV_LEAD) + sorted(k for k in keys if k not in CSV_LEAD)


class TensorBoard:
    """A thin wrapper over ``SummaryWriter`` that tolerates being disabled (``enabled=False``).

    ``purge_step``: the first step a resumed run logs again; events a killed process logged
    at or after it (between its last checkpoint and the kill) are hidden by TensorBoard, so
    resumed curves do not run twice over those steps. ``None`` for a new run."""

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True, purge_step: int | None = None) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None and math.isfinite(float(v)):
                self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    def images(self, tag: str, images: torch.Tensor, step: int, data_range: float) -> None:
        """Log ``(B, C, H, W)`` images; two channels are shown as their magnitude."""
        if self.writer is None or images.ndim != 4:
            return
        if images.shape[1] == 2:
            images = images.pow(2).sum(dim=1, keepdim=True).sqrt()
        if images.shape[1] not in (1, 3):
            return
        self.writer.add_images(tag, (images.float() / data_range).clamp(0, 1), step)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        finite = {f"hparam/{k}": float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        self.writer.add_hparams(clean, finite, run_name=".")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
