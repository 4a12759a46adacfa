"""Image outputs of a run: a PNG grid of reconstructions and an HDF5 file of arrays.

Both writers are headless (matplotlib's Agg backend, used through an explicit
``Figure`` so the global pyplot state is never touched) and write atomically: the
file appears complete under its final name or not at all.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.files import atomic_path, atomic_write

log = logging.getLogger(__name__)

__all__ = ["to_display", "save_image_grid", "save_reconstructions_h5"]

#: Side of one image cell, in inches, and the height of the title strip.
_CELL_INCHES = 1.6
_TITLE_INCHES = 0.3


def to_display(x: torch.Tensor) -> np.ndarray:
    """Images ``(B, C, H, W)`` → displayable array.

    ``C = 1``: grey values ``(B, H, W)``; ``C = 2`` (real and imaginary parts of a
    complex image, as for MRI): the magnitude ``sqrt(re² + im²)``, ``(B, H, W)``;
    ``C = 3``: RGB ``(B, H, W, 3)``. Other channel counts raise ``ValueError``.
    """
    if x.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    c = x.shape[1]
    if c == 1:
        return x[:, 0].numpy()
    if c == 2:
        return x.pow(2).sum(dim=1).sqrt().numpy()
    if c == 3:
        return x.permute(0, 2, 3, 1).numpy()
    raise ValueError(f"cannot display images with {c} channels; supported: 1 (grey), 2 (complex: magnitude), 3 (RGB)")


def save_image_grid(path: str | os.PathLike, columns: Mapping[str, torch.Tensor], data_range: float = 1.0,
                    error_scale: float | None = None, error_columns: Iterable[str] | None = None,
                    dpi: int = 100) -> Path:
    """Write a PNG with one row per sample and one titled column per entry of ``columns``.

    ``columns`` maps a title to a batch ``(B, C, H, W)`` (all with the same ``B``,
    ``H``, ``W``), e.g. ``{"ground truth": x, "A†y": x0, "reconstruction": x_hat,
    "|error|": (x_hat - x).abs()}``; columns keep the mapping's order.

    Image columns are drawn in grey on the fixed range ``[0, data_range]`` (values
    outside are saturated, so columns stay comparable). *Error* columns — those named
    in ``error_columns``, by default every title containing ``"error"`` — are drawn
    with the ``magma`` colour map on ``[0, error_scale]``; when ``error_scale`` is
    None it is the largest value over all error columns. The range is written in the
    column title. Two-channel (complex) images show their magnitude.

    The figure is ``n_columns × 1.6`` inches wide and ``n_rows × 1.6 + 0.3`` inches
    high at ``dpi``. Returns the path written.
    """
    path = Path(path)
    if not columns:
        raise ValueError("save_image_grid needs at least one column")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    arrays = {name: to_display(t) for name, t in columns.items()}
    shapes = {name: a.shape[:3] for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"all columns must hold the same number of images of the same size, got {shapes}")
    err_names = set(error_columns) if error_columns is not None else {n for n in arrays if "error" in n.lower()}
    unknown = err_names - set(arrays)
    if unknown:
        raise ValueError(f"error_columns {sorted(unknown)} are not columns; columns are {list(arrays)}")
    if error_scale is None:
        peaks = [float(np.nanmax(np.abs(arrays[n]))) for n in err_names]
        error_scale = max(peaks, default=0.0) or 1.0
    if error_scale <= 0:
        raise ValueError(f"error_scale must be > 0, got {error_scale}")

    n_rows, n_cols = next(iter(shapes.values()))[0], len(arrays)
    fig = Figure(figsize=(n_cols * _CELL_INCHES, n_rows * _CELL_INCHES + _TITLE_INCHES), dpi=dpi)
    FigureCanvasAgg(fig)
    top = 1.0 - _TITLE_INCHES / (n_rows * _CELL_INCHES + _TITLE_INCHES)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.04, hspace=0.04)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for j, (name, imgs) in enumerate(arrays.items()):
        is_err = name in err_names
        vmax = error_scale if is_err else data_range
        for i in range(n_rows):
            ax = axes[i, j]
            img = imgs[i]
            if img.ndim == 3:  # RGB: imshow ignores vmin/vmax, so scale by hand
                ax.imshow(np.clip(img / vmax, 0.0, 1.0), interpolation="nearest")
            else:
                ax.imshow(img, cmap="magma" if is_err else "gray", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(f"{name} [0, {vmax:.3g}]" if is_err else name, fontsize=9)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    log.debug("wrote image grid %s (%d rows × %d columns)", path, n_rows, n_cols)
    return path


def save_reconstructions_h5(path: str | os.PathLike, **arrays: torch.Tensor | np.ndarray) -> Path:
    """Write each keyword argument as a gzip-compressed float32 dataset of that name.

    Tensors are detached and moved to the CPU; complex arrays are stored as float32 with
    a trailing axis of size 2 (real, imaginary) and the attribute ``complex = True``.
    Example: ``save_reconstructions_h5(run_dir / "recon.h5", x=x, x_init=x0, x_hat=x_hat)``;
    read back with ``h5py.File(path)["x_hat"][()]``. Returns the path written.
    """
    path = Path(path)
    if not arrays:
        raise ValueError("save_reconstructions_h5 needs at least one array, e.g. x_hat=...")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in arrays.items():
            a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            is_complex = np.iscomplexobj(a)
            if is_complex:
                a = np.stack([a.real, a.imag], axis=-1)
            ds = f.create_dataset(name, data=a.astype(np.float32), compression="gzip",
                                  chunks=True if a.ndim > 0 and a.size > 0 else None)
            ds.attrs["complex"] = is_complex
    return path
