"""Generic HDF5 datasets of images and/or measurements.

Two layouts are read:

* **one file** (``path``) that either holds groups ``train``, ``val``, ``test`` — each
  with the image and/or measurement datasets — or holds the datasets at its root, in
  which case the samples are split in file order: the first ones train, then
  ``val_fraction`` of them validation, and the last ``test_fraction`` test (contiguous,
  so slices of one patient stay together when the file is ordered by patient);
* **one file per split** (``train_path``, ``val_path``, ``test_path``), datasets at the root.

Images are ``(N, H, W)`` or ``(N, C, H, W)`` with ``H == W`` (complex ``(N, H, W)`` images
become 2 channels, real and imaginary). Measurements are ``(N, …)`` in the operator's
measurement shape (complex ones gain a channel dimension of size 2 after ``N``). A file
may hold measurements only: EI training needs nothing else.

Example file::

    with h5py.File("data.h5", "w") as f:
        for split, n in [("train", 100), ("val", 10), ("test", 10)]:
            f.create_dataset(f"{split}/x", data=np.random.rand(n, 64, 64).astype("float32"))
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ..utils.checks import check_real
from ..utils.files import open_hdf5
from .base import SPLITS, DataSource, TensorDictDataset, check_split_name
from .preprocess import check_finite, check_normalize, check_value_range, complex_to_channels
from .preprocess import normalize as normalize_images

log = logging.getLogger(__name__)


def _dataset_names(group: h5py.Group) -> list[str]:
    return sorted(k for k, v in group.items() if isinstance(v, h5py.Dataset))


def _contiguous_split(n: int, val_fraction: float, test_fraction: float, where: str) -> dict[str, slice]:
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{where}: {n} samples leave no training data with val_fraction={val_fraction} "
                         f"and test_fraction={test_fraction}; lower the fractions")
    return {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val), "test": slice(n_train + n_val, n)}


class HDF5Data(DataSource):
    """Images and/or measurements from HDF5 files (see the module docstring for the layouts).

    Parameters
    ----------
    path:
        One file holding all splits (as groups, or at the root to be split by fractions).
    train_path, val_path, test_path:
        One file per split instead of ``path``; a split without a file cannot be requested.
    image_key, measurement_key:
        Dataset names of images ``x`` and measurements ``y``; ``None`` skips one. At least
        one must exist; a missing image dataset makes the data measurement-only.
    img_size:
        Expected image side ``H = W`` (checked); required for measurement-only data.
    channels:
        Expected number of image channels ``C`` (``(N, H, W)`` images have one).
    normalize:
        ``"none"``, ``"minmax"`` (each image to [0, 1]) or ``"max"`` (each image divided
        by its largest magnitude). Only for files without measurements: rescaling ``x``
        alone would break ``y = A x``.
    val_fraction, test_fraction:
        For a single file without split groups only (default 0.1 each).
    data_range:
        The images' range ``[0, data_range]`` that metrics and noise levels assume (the
        config sets it to ``evaluation.data_range``). Images, after ``normalize``, on
        another scale are refused (:func:`~eqdeq_cli.data.preprocess.check_value_range`).

    Everything is read and checked at construction, then held in memory.
    """

    def __init__(self, *, path: str | os.PathLike | None = None, train_path: str | os.PathLike | None = None,
                 val_path: str | os.PathLike | None = None, test_path: str | os.PathLike | None = None,
                 image_key: str | None = "x", measurement_key: str | None = "y", img_size: int | None = None,
                 channels: int = 1, normalize: str = "none", val_fraction: float | None = None,
                 test_fraction: float | None = None, data_range: float = 1.0) -> None:
        self.normalize = check_normalize(normalize)
        self.data_range = check_real("data_range", data_range, low=0.0)
        if image_key is None and measurement_key is None:
            raise ValueError("image_key and measurement_key are both None; name at least one dataset to read")
        if int(channels) < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        self.image_key, self.measurement_key = image_key, measurement_key
        self.channels = int(channels)
        self._expected_size = None if img_size is None else int(img_size)
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if frac is not None and not 0.0 <= float(frac) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {frac!r}")

        split_paths = {"train": train_path, "val": val_path, "test": test_path}
        if path is not None and any(p is not None for p in split_paths.values()):
            raise ValueError("give either path (one file for all splits) or train_path/val_path/test_path, not both")
        if path is None and all(p is None for p in split_paths.values()):
            raise ValueError("no data file given: set path, or at least one of train_path/val_path/test_path")

        self._data: dict[str, dict[str, torch.Tensor]] = {}
        self._origin: dict[str, str] = {}
        self._missing: dict[str, str] = {}
        if path is not None:
            self._load_single_file(Path(path).expanduser(), val_fraction, test_fraction)
        else:
            if val_fraction is not None or test_fraction is not None:
                raise ValueError("val_fraction/test_fraction apply only to a single file without split groups; "
                                 "with one file per split, remove them")
            for split, p in split_paths.items():
                if p is None:
                    self._missing[split] = f"no file given for split {split!r}; set {split}_path"
                    continue
                p = Path(p).expanduser()
                with open_hdf5(p, "HDF5 data file") as f:
                    self._data[split] = self._read(f, f"{p}")
                self._origin[split] = str(p)
        self._finish()

    # -- reading ---------------------------------------------------------------
    def _load_single_file(self, p: Path, val_fraction: float | None, test_fraction: float | None) -> None:
        with open_hdf5(p, "HDF5 data file") as f:
            groups = [s for s in SPLITS if isinstance(f.get(s), h5py.Group)]
            if groups:
                if val_fraction is not None or test_fraction is not None:
                    raise ValueError(f"{p} already holds split groups {groups}; remove val_fraction/test_fraction")
                for split in SPLITS:
                    if split in groups:
                        self._data[split] = self._read(f[split], f"{p}:/{split}")
                        self._origin[split] = f"{p}:/{split}"
                    else:
                        self._missing[split] = f"{p} has no group {split!r} (groups present: {groups})"
                return
            tensors = self._read(f, str(p))
        vf = 0.1 if val_fraction is None else float(val_fraction)
        tf = 0.1 if test_fraction is None else float(test_fraction)
        n = next(iter(tensors.values())).shape[0]
        for split, sl in _contiguous_split(n, vf, tf, str(p)).items():
            self._data[split] = {k: v[sl] for k, v in tensors.items()}
            self._origin[split] = f"{p} ({split} samples)"
            if sl.stop == sl.start:
                self._missing[split] = (f"split {split!r} of {p} is empty ({n} samples, "
                                        f"{split}_fraction={vf if split == 'val' else tf}); raise the fraction")

    def _read(self, group: h5py.Group, where: str) -> dict[str, torch.Tensor]:
        present = {role: key for role, key in (("x", self.image_key), ("y", self.measurement_key))
                   if key is not None and key in group and isinstance(group[key], h5py.Dataset)}
        if not present:
            wanted = " or ".join(repr(k) for k in (self.image_key, self.measurement_key) if k is not None)
            raise KeyError(f"{where} has no dataset {wanted}; datasets present: {_dataset_names(group)} "
                           f"(set image_key / measurement_key)")
        out: dict[str, torch.Tensor] = {}
        for role, key in present.items():
            label = f"dataset {key!r} in {where}"
            arr = np.asarray(group[key][...])
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise ValueError(f"{label} has dtype {arr.dtype}; expected a numeric array")
            t = torch.from_numpy(arr)
            if arr.ndim > 0 and arr.shape[0] == 0:
                raise ValueError(f"{label} is empty (shape {arr.shape}); every split needs at least one sample")
            out[role] = self._check_images(t, label) if role == "x" else self._check_measurements(t, label)
        if len(out) == 2 and out["x"].shape[0] != out["y"].shape[0]:
            raise ValueError(f"{where}: {out['x'].shape[0]} images but {out['y'].shape[0]} measurements; "
                             "they must pair one to one")
        return out

    def _check_images(self, t: torch.Tensor, label: str) -> torch.Tensor:
        if t.is_complex():
            if t.ndim != 3:
                raise ValueError(f"{label} is complex with shape {tuple(t.shape)}; expected (N, H, W)")
            t = complex_to_channels(t)
        if t.ndim == 3:
            t = t[:, None]
        if t.ndim != 4:
            raise ValueError(f"{label} has shape {tuple(t.shape)} (rank {t.ndim}); images must be "
                             "(N, H, W) or (N, C, H, W)")
        _, c, h, w = t.shape
        if c == h != w:
            raise ValueError(f"{label} has shape {tuple(t.shape)}, which looks channels-last (N, H, W, C) with "
                             f"{h}x{h} images of {w} channel(s); images must be channels-first (N, C, H, W): "
                             "write np.moveaxis(x, -1, 1) to the file")
        if h != w:
            raise ValueError(f"{label} holds {h}x{w} images; only square images (H == W) are supported")
        if self._expected_size is not None and h != self._expected_size:
            raise ValueError(f"{label} holds {h}x{w} images but img_size={self._expected_size}; "
                             f"set img_size: {h} (and the physics to match) or resize the data")
        if c != self.channels:
            raise ValueError(f"{label} holds images with {c} channel(s) but channels={self.channels}; "
                             f"set channels: {c}")
        t = t.to(torch.float32)
        check_finite(t, label)
        return t

    def _check_measurements(self, t: torch.Tensor, label: str) -> torch.Tensor:
        if t.is_complex():
            t = complex_to_channels(t)
        if t.ndim < 2:
            raise ValueError(f"{label} has shape {tuple(t.shape)}; measurements must be (N, ...) with at least "
                             "one dimension after the sample axis")
        t = t.to(torch.float32)
        check_finite(t, label)
        return t

    def _finish(self) -> None:
        roles = {split: frozenset(d) for split, d in self._data.items()}
        if len(set(roles.values())) > 1:
            raise ValueError(f"splits hold different datasets: "
                             f"{ {s: sorted(r) for s, r in roles.items()} }; every split needs the same keys")
        keys = next(iter(roles.values()))
        self.has_images = "x" in keys
        self.has_measurements = "y" in keys
        if self.has_images:
            self.img_size = next(iter(self._data.values()))["x"].shape[-1]
            log.info("HDF5 data: images %s", {s: tuple(d["x"].shape) for s, d in self._data.items()})
        elif self._expected_size is None:
            raise ValueError("img_size must be given for measurement-only data (the image size the operator "
                             "reconstructs); the file holds no images to infer it from")
        else:
            self.img_size = self._expected_size
            log.info("HDF5 data: measurements only %s", {s: tuple(d["y"].shape) for s, d in self._data.items()})
        if self.normalize != "none":
            if self.has_measurements:
                raise ValueError(f"normalize={self.normalize!r} with stored measurements would rescale x but not y, "
                                 "breaking y = A x; use normalize: none, or normalise when creating the file")
            for d in self._data.values():
                d["x"] = normalize_images(d["x"], self.normalize)
        if self.has_images:
            fix = "" if self.has_measurements else "data.normalize: max (or minmax)"
            for split, d in self._data.items():
                if d["x"].shape[0]:
                    check_value_range(d["x"], self.data_range, f"dataset {self.image_key!r} in {self._origin[split]}",
                                      signed=self.channels == 2, fix=fix)

    # -- interface ------------------------------------------------------------------
    def split(self, name: str) -> TensorDictDataset:
        """The samples of split ``name``: items ``{"x": (C, H, W)}`` and/or ``{"y": (...)}``."""
        check_split_name(name)
        if name in self._missing:
            raise ValueError(self._missing[name])
        return TensorDictDataset(self._data[name])
