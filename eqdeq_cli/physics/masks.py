r"""Cartesian k-space sampling masks for :class:`~eqdeq_cli.physics.mri.MRICartesian`.

Line masks select phase-encoding columns of a centred k-space (DC at column ``W // 2``)
with fastMRI semantics: ``round(W · center_fraction)`` columns in the centre are always
sampled (the block starting at ``(W − n_centre + 1) // 2``), and about ``W / acceleration``
columns in total.

* ``random``: the remaining ``round(W / acceleration) − n_centre`` columns drawn uniformly
  without replacement (an exact count, so the acceleration is met exactly).
* ``gaussian``: as ``random``, with probabilities proportional to a Gaussian density
  centred on DC with standard deviation ``W / 6``.
* ``equispaced``: fastMRI's ``EquispacedMaskFunc``: every ``a``-th column from a random
  offset, with ``a = acceleration·(n_centre − W) / (n_centre·acceleration − W)`` so that the
  total including the centre is ≈ ``W / acceleration``.

All are deterministic functions of ``seed`` (``numpy.random.default_rng``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MASK_TYPES = ("random", "equispaced", "gaussian")
MASK_FILE_SUFFIXES = (".npy", ".pt", ".pth", ".h5", ".hdf5")


def line_mask(kind: str, width: int, acceleration: float, center_fraction: float, seed: int) -> np.ndarray:
    """Boolean column mask of length ``width`` (see the module docstring for the kinds)."""
    if kind not in MASK_TYPES:
        raise ValueError(f"unknown mask {kind!r}; valid: {', '.join(MASK_TYPES)} or a path to a "
                         f"{'/'.join(MASK_FILE_SUFFIXES)} file")
    if not acceleration >= 1:
        raise ValueError(f"acceleration must be ≥ 1, got {acceleration!r}")
    if not 0 <= center_fraction <= 1:
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction!r}")
    rng = np.random.default_rng(seed)
    n_centre = int(round(width * center_fraction))
    n_total = max(int(round(width / acceleration)), n_centre)
    mask = np.zeros(width, dtype=bool)
    start = (width - n_centre + 1) // 2
    mask[start:start + n_centre] = True
    outside = np.flatnonzero(~mask)
    n_extra = n_total - n_centre
    if kind == "equispaced":
        denominator = n_centre * acceleration - width
        spacing = acceleration * (n_centre - width) / denominator if denominator != 0 else 0.0
        if n_extra > 0 and spacing > 0:
            offset = int(rng.integers(0, max(int(round(spacing)), 1)))
            picks = np.around(np.arange(offset, width - 1, spacing)).astype(np.int64)
            mask[picks[picks < width]] = True
        return mask
    if n_extra <= 0:
        return mask
    if kind == "random":
        prob = None
    else:
        density = np.exp(-0.5 * ((outside - width // 2) / (width / 6.0)) ** 2)
        prob = density / density.sum()
    mask[rng.choice(outside, size=n_extra, replace=False, p=prob)] = True
    return mask


def load_mask(path: str | Path, height: int, width: int) -> np.ndarray:
    """Read a mask of shape ``(H, W)`` or ``(W,)`` (columns, broadcast over rows) from a file.

    ``.npy`` (NumPy array), ``.pt``/``.pth`` (a tensor saved by ``torch.save``) or
    ``.h5``/``.hdf5`` (dataset ``mask``, or the file's only dataset). Values must be 0/1
    (or boolean). Returns a float64 ``(H, W)`` array.
    """
    path = Path(path)
    if path.suffix.lower() not in MASK_FILE_SUFFIXES:
        raise ValueError(f"mask {str(path)!r} is neither a mask type ({', '.join(MASK_TYPES)}) "
                         f"nor a file ending in {', '.join(MASK_FILE_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix in (".pt", ".pth"):
        import torch

        array = torch.load(path, map_location="cpu", weights_only=True)
        array = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    else:
        import h5py

        from ..utils.files import open_hdf5

        with open_hdf5(path, "mask file") as f:
            keys = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
            if "mask" in f:
                key = "mask"
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise KeyError(f"mask file {str(path)!r} has no dataset 'mask' (datasets: {keys})")
            array = f[key][()]
    array = np.asarray(array)
    if array.shape == (width,):
        array = np.broadcast_to(array[None, :], (height, width))
    if array.shape != (height, width):
        raise ValueError(f"mask in {str(path)!r} has shape {array.shape}; expected ({height}, {width}) "
                         f"or ({width},) for a {height}x{width} image")
    array = array.astype(np.float64)
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"mask in {str(path)!r} must hold only 0 and 1 (or booleans)")
    return array
