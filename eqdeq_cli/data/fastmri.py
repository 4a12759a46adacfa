r"""fastMRI single-coil knee volumes, slice-indexed across a directory.

Each official single-coil ``.h5`` volume holds

* ``kspace``: ``(slices, H, W)`` complex64 (typically ``640 × 368``), centred k-space;
* ``reconstruction_esc``: ``(slices, 320, 320)`` float32, the magnitude target
  (absent from the test set);
* attributes such as ``max``, ``norm``, ``acquisition``.

Images are taken either from ``reconstruction_esc`` or computed from ``kspace`` by the
centred orthonormal inverse FFT,

.. math::

    x = \operatorname{fftshift}\big(\mathcal F^{-1}_{\text{ortho}}
        (\operatorname{ifftshift}(k))\big),

then (magnitude, or real and imaginary parts as 2 channels) centre-cropped to
``crop_size`` and, when ``img_size < crop_size``, downsampled to ``img_size`` by area
averaging. Each volume is normalised on its own (``"max"``: divided by the largest
magnitude of its selected, processed slices).

Volumes that are already undersampled (the official test and challenge sets: a ``mask``
dataset, ``acceleration`` / ``num_low_frequency`` attributes, or zero k-space columns
inside the sampled band) are refused: their images are aliased, and taking them as ground
truth inflates every metric.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from .base import DataSource, TensorDictDataset, check_split_name
from ..utils.checks import check_real
from ..utils.files import open_hdf5
from .preprocess import area_resize, center_crop, check_finite, check_value_range, complex_to_channels

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = ("reconstruction_esc", "kspace")
VOLUME_NORMALIZE: tuple[str, ...] = ("none", "max")
#: Attributes that the fastMRI challenge and test volumes carry and fully sampled ones do not.
UNDERSAMPLING_ATTRS: tuple[str, ...] = ("acceleration", "num_low_frequency")
#: Zero k-space columns inside the sampled band, as a fraction of it, above which a volume
#: is taken as undersampled (fully sampled volumes have none; zero padding lies at the edges).
MAX_ZERO_COLUMN_FRACTION = 0.05


def undersampling_evidence(f: h5py.File, kspace: torch.Tensor | None = None) -> str | None:
    """Why volume ``f`` looks already undersampled, or ``None``.

    Evidence: a ``mask`` dataset, an :data:`UNDERSAMPLING_ATTRS` attribute (as the official
    test and challenge volumes carry), or, given its k-space ``(slices, H, W)``, more than
    :data:`MAX_ZERO_COLUMN_FRACTION` of the columns between the first and last non-zero one
    all zero in every slice (zero padding at the edges is not counted).
    """
    if "mask" in f:
        return "it holds a 'mask' dataset"
    found = [f"{a}={f.attrs[a]}" for a in UNDERSAMPLING_ATTRS if a in f.attrs]
    if found:
        return f"it has the attribute {', '.join(found)}"
    if kspace is not None and kspace.shape[-1] > 0:
        nonzero = (kspace != 0).reshape(-1, kspace.shape[-1]).any(dim=0)
        idx = nonzero.nonzero().flatten()
        if idx.numel() == 0:
            return "its k-space is all zero"
        band = nonzero[int(idx[0]):int(idx[-1]) + 1]
        n_zero = int((~band).sum())
        if n_zero > MAX_ZERO_COLUMN_FRACTION * band.numel():
            return f"{n_zero} of the {band.numel()} k-space columns of its sampled band are all zero"
    return None


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT over the last two dimensions."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(kspace, dim=dims), norm="ortho"), dim=dims)


class FastMRIData(DataSource):
    """Slices of fastMRI single-coil volumes as ``{"x": (C, img_size, img_size)}`` items.

    Parameters
    ----------
    root:
        Folder that relative split paths are resolved against.
    train_path, val_path, test_path:
        Per split, a folder of ``.h5`` volumes (read in sorted name order) or one ``.h5``
        file; relative to ``root`` unless absolute; ``None`` disables the split.
    target:
        ``"reconstruction_esc"`` or ``"kspace"`` (images computed by inverse FFT).
    img_size:
        Side of the returned images.
    crop_size:
        Side of the centre crop (default ``img_size``); a crop larger than ``img_size``
        is area-downsampled to ``img_size``.
    channels:
        1: magnitude images; 2: real and imaginary parts (``target="kspace"`` only).
    normalize:
        ``"max"`` (per volume) or ``"none"``.
    center_slices:
        Keep only the central ``center_slices`` slices of each volume (edge slices of
        knee volumes are mostly noise); ``None`` keeps all.
    max_slices:
        At most this many slices per split (volumes in sorted order); ``None``: no limit.
    data_range:
        The images' range ``[0, data_range]`` that metrics and noise levels assume (the
        config sets it to ``evaluation.data_range``); a volume on another scale (e.g. raw
        values ~1e-4 with ``normalize: none``) is refused, naming the file.

    A split is read when first requested and then kept in memory.
    """

    has_images = True
    has_measurements = False

    def __init__(self, *, root: str | os.PathLike | None = None, train_path: str | os.PathLike | None = "train",
                 val_path: str | os.PathLike | None = "val", test_path: str | os.PathLike | None = "test",
                 target: str = "reconstruction_esc", img_size: int = 320, crop_size: int | None = None,
                 channels: int = 1, normalize: str = "max", center_slices: int | None = None,
                 max_slices: int | None = None, data_range: float = 1.0) -> None:
        if target not in TARGETS:
            raise ValueError(f"unknown target={target!r}; valid values are {', '.join(map(repr, TARGETS))}")
        if normalize not in VOLUME_NORMALIZE:
            raise ValueError(f"unknown normalize={normalize!r}; valid values are "
                             f"{', '.join(map(repr, VOLUME_NORMALIZE))}")
        if channels not in (1, 2) or (channels == 2 and target != "kspace"):
            raise ValueError(f"channels={channels!r} is not available for target={target!r}; use channels: 1 "
                             "(magnitude), or channels: 2 (real, imaginary) with target: kspace")
        self.data_range = check_real("data_range", data_range, low=0.0)
        self.img_size = int(img_size)
        self.crop_size = self.img_size if crop_size is None else int(crop_size)
        if self.img_size < 1 or self.crop_size < self.img_size:
            raise ValueError(f"crop_size={crop_size} must be at least img_size={img_size} (the crop is resized "
                             "down to img_size), and img_size must be positive")
        for name, value in (("center_slices", center_slices), ("max_slices", max_slices)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be a positive integer or null, got {value!r}")
        self.root = None if root is None else Path(root).expanduser()
        self.target, self.channels, self.normalize = target, int(channels), normalize
        self.center_slices = None if center_slices is None else int(center_slices)
        self.max_slices = None if max_slices is None else int(max_slices)
        self._paths = {"train": train_path, "val": val_path, "test": test_path}
        self._loaded: dict[str, torch.Tensor] = {}

    # -- files -------------------------------------------------------------------
    def split_files(self, name: str) -> list[Path]:
        """The ``.h5`` volumes of split ``name``, sorted by name."""
        check_split_name(name)
        p = self._paths[name]
        if p is None:
            raise ValueError(f"split {name!r} is disabled ({name}_path is null); set {name}_path")
        p = Path(p).expanduser()
        if not p.is_absolute():
            if self.root is None:
                raise ValueError(f"{name}_path={str(p)!r} is relative but root is not set; set root or give "
                                 "an absolute path")
            p = self.root / p
        if p.is_file():
            return [p]
        if not p.is_dir():
            raise FileNotFoundError(f"fastMRI {name} data {str(p)!r} does not exist (expected a folder of .h5 "
                                    "volumes or one .h5 file)")
        files = sorted(p.glob("*.h5"))
        if not files:
            raise ValueError(f"fastMRI {name} folder {str(p)!r} holds no .h5 volumes; the split would be empty")
        return files

    def _read_volume(self, path: Path, budget: int | None) -> torch.Tensor:
        with open_hdf5(path, "fastMRI volume") as f:
            if self.target not in f:
                raise KeyError(f"fastMRI volume {str(path)!r} has no dataset {self.target!r}; datasets present: "
                               f"{sorted(f.keys())} (valid targets: {', '.join(TARGETS)})")
            ds = f[self.target]
            if ds.ndim != 3:
                raise ValueError(f"dataset {self.target!r} in {str(path)!r} has shape {ds.shape}; expected "
                                 "(slices, H, W)")
            if (self.target == "kspace") != np.issubdtype(ds.dtype, np.complexfloating):
                kind = "complex" if self.target == "kspace" else "real"
                raise ValueError(f"dataset {self.target!r} in {str(path)!r} has dtype {ds.dtype}; expected {kind}")
            n = ds.shape[0]
            start, stop = 0, n
            if self.center_slices is not None and self.center_slices < n:
                start = (n - self.center_slices) // 2
                stop = start + self.center_slices
            if budget is not None:
                stop = min(stop, start + budget)
            raw = torch.from_numpy(np.asarray(ds[start:stop]))
            evidence = undersampling_evidence(f, raw if self.target == "kspace" else None)
        if evidence is not None:
            raise ValueError(f"fastMRI volume {str(path)!r} is already undersampled ({evidence}): its images are "
                             "aliased, not ground truth; use fully sampled volumes (singlecoil_train / "
                             "singlecoil_val) and let physics=mri undersample them")
        if self.target == "kspace":
            img = ifft2c(raw.to(torch.complex64))
            img = img.abs()[:, None] if self.channels == 1 else complex_to_channels(img)
        else:
            img = raw.to(torch.float32)[:, None]
        check_finite(img, f"dataset {self.target!r} in {str(path)!r}")
        img = area_resize(center_crop(img, self.crop_size), self.img_size)
        if self.normalize == "max":
            mag = img.pow(2).sum(dim=1).sqrt() if self.channels == 2 else img.abs()
            img = img / mag.max().clamp_min(torch.finfo(img.dtype).tiny)
        if img.shape[0]:
            check_value_range(img, self.data_range, f"fastMRI volume {str(path)!r}", signed=self.channels == 2)
        return img.contiguous()

    def _load(self, name: str) -> torch.Tensor:
        volumes, total = [], 0
        for path in self.split_files(name):
            budget = None if self.max_slices is None else self.max_slices - total
            if budget == 0:
                break
            vol = self._read_volume(path, budget)
            volumes.append(vol)
            total += vol.shape[0]
        if total == 0:
            raise ValueError(f"fastMRI {name} split has no slices; check {name}_path and center_slices")
        log.info("fastMRI %s: %d slices from %d volumes (%s, %dx%d)", name, total, len(volumes), self.target,
                 self.img_size, self.img_size)
        return torch.cat(volumes)

    # -- interface -----------------------------------------------------------------
    def split(self, name: str) -> TensorDictDataset:
        """All selected slices of split ``name`` as ``{"x": (C, img_size, img_size)}`` items."""
        check_split_name(name)
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return TensorDictDataset({"x": self._loaded[name]})
